"""The status page for the person who runs maxproxy: `GET /` (HTML), `GET /status.js` and `GET /status.css`, three
static files shipped in `maxproxy/api/static/`. They hold no data (the script fetches `GET /v1/status` with the
admin key the user enters), so they are served without a key, under a strict Content-Security-Policy: only this
origin's own script, style and fetches, no framing, no inline code.
"""

from __future__ import annotations

import functools
from importlib import resources

from aiohttp import web

routes = web.RouteTableDef()

# The page has no inline script or style and fetches only from its own origin: anything injected stays inert.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # for browsers that predate frame-ancestors
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # a new maxproxy's page never runs an old script against a new /v1/status
}
PATHS = frozenset({"/", "/status.js", "/status.css", "/favicon.ico"})  # served without a key: they hold no data


@functools.cache
def _static(name: str) -> bytes:
    """A shipped file, read once (importlib.resources finds it wherever the package is installed)."""
    return resources.files("maxproxy.api").joinpath("static", name).read_bytes()


def _file(name: str, content_type: str) -> web.Response:
    return web.Response(body=_static(name), content_type=content_type, charset="utf-8", headers=HEADERS)


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    return _file("index.html", "text/html")


@routes.get("/status.js")
async def script(request: web.Request) -> web.Response:
    return _file("status.js", "text/javascript")


@routes.get("/status.css")
async def style(request: web.Request) -> web.Response:
    return _file("status.css", "text/css")


@routes.get("/favicon.ico")
async def favicon(request: web.Request) -> web.Response:
    """Nothing (the page declares its own icon), but not a 401 in a browser's console either."""
    return web.Response(status=204, headers={"Cache-Control": "max-age=86400"})
