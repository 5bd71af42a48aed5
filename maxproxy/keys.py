"""API keys: who may call maxproxy, and each caller's limits. Keys come from a TOML file (`keys_file`), one table per
client — `[keys.NAME]` with `key` (the bearer secret) or `key_sha256` (its SHA-256, so the file need not hold the
secret), optional `models`, `max_concurrent`, `rpm`, `daily_tokens`, `weekly_tokens` and `admin` — and from the plain
`api_keys` list (admin keys without limits). Only digests are kept in memory and nothing else is persisted; a bearer
is matched by comparing its digest with every key's in constant time. The file is read again on SIGHUP and when it
changes; a file that no longer parses keeps the keys in force and logs why.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import tomllib
from collections.abc import Container
from pathlib import Path
from typing import Annotated

import msgspec
import structlog
from msgspec import Meta

from maxproxy.settings import Settings, servable

log = structlog.get_logger("maxproxy.keys")

WATCH_EVERY = 2.0
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEX = re.compile(r"[0-9a-f]{64}")
Positive = Annotated[int, Meta(ge=1)]


class KeysError(Exception):
    """The keys file cannot be used (its one-line message says why)."""


class Key(msgspec.Struct, frozen=True):
    name: str
    digest: str  # SHA-256 of the bearer secret, hex
    models: frozenset[str] | None = None  # None: every model
    max_concurrent: int | None = None  # requests in flight (queued or running)
    rpm: int | None = None  # requests per minute
    daily_tokens: int | None = None  # per UTC day
    weekly_tokens: int | None = None  # over the last 7 UTC days
    admin: bool = False  # sees every key's usage


# The caller when no keys are configured (loopback only): no limits, sees everything.
LOCAL = Key(name="local", digest="", admin=True)


class _Entry(msgspec.Struct, forbid_unknown_fields=True):
    key: str | None = None
    key_sha256: str | None = None
    models: list[str] | None = None
    max_concurrent: Positive | None = None
    rpm: Positive | None = None
    daily_tokens: Positive | None = None
    weekly_tokens: Positive | None = None
    admin: bool = False


class _File(msgspec.Struct, forbid_unknown_fields=True):
    keys: dict[str, _Entry] = {}


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def read(path: Path, models: Container[str]) -> tuple[Key, ...]:
    """The keys of a keys file, checked."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise KeysError(f"cannot read keys file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise KeysError(f"keys file {path} is not valid TOML: {exc}") from None
    try:
        parsed = msgspec.convert(raw, _File)
    except msgspec.ValidationError as exc:
        raise KeysError(f"keys file {path}: {exc}") from None
    keys: list[Key] = []
    for name, entry in parsed.keys.items():
        where = f"keys file {path}: [keys.{name}]"
        if not _NAME.fullmatch(name):
            raise KeysError(f"{where}: a key name is 1-64 letters, digits, '.', '_' or '-'")
        if (entry.key is None) == (entry.key_sha256 is None):
            raise KeysError(f"{where}: give exactly one of `key` and `key_sha256`")
        if entry.key is not None and len(entry.key.strip()) < 8:
            raise KeysError(f"{where}: `key` is shorter than 8 characters")
        if entry.key_sha256 is not None and not _HEX.fullmatch(entry.key_sha256.lower()):
            raise KeysError(f"{where}: `key_sha256` is not 64 hex digits")
        unknown = sorted(m for m in entry.models or [] if not servable(m, models))
        if unknown:
            raise KeysError(f"{where}: unknown model {unknown[0]!r} in `models` (see GET /v1/models)")
        keys.append(
            Key(
                name=name,
                digest=entry.key_sha256.lower() if entry.key_sha256 else digest((entry.key or "").strip()),
                models=frozenset(entry.models) if entry.models is not None else None,
                max_concurrent=entry.max_concurrent,
                rpm=entry.rpm,
                daily_tokens=entry.daily_tokens,
                weekly_tokens=entry.weekly_tokens,
                admin=entry.admin,
            )
        )
    digests = [k.digest for k in keys]
    if len(set(digests)) != len(digests):
        raise KeysError(f"keys file {path}: two keys have the same secret")
    return tuple(keys)


def _merge(plain: tuple[Key, ...], listed: tuple[Key, ...], path: Path) -> tuple[Key, ...]:
    """The `api_keys` and the file's keys together: names and secrets must not collide (quotas and usage go by
    name; a secret in both would silently take the file key's limits)."""
    taken = {k.name for k in plain} | {LOCAL.name}
    for key in listed:
        if key.name in taken:
            raise KeysError(f"keys file {path}: [keys.{key.name}]: the name {key.name!r} is reserved")
    if {k.digest for k in plain} & {k.digest for k in listed}:
        raise KeysError(f"keys file {path}: a key has the same secret as one of `api_keys`")
    return plain + listed


class Keyring:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = settings.keys_path
        self._plain = tuple(
            Key(name=f"api_key_{i}", digest=digest(secret.strip()), admin=True)
            for i, secret in enumerate(settings.api_keys, 1)
        )
        self._stamp: tuple[int, int] | None = None
        self.keys: tuple[Key, ...] = self._plain
        if self.path is not None:
            self.keys = _merge(self._plain, read(self.path, settings.model_table), self.path)  # or no start
            self._stamp = self._stat()
        if not settings.loopback and not self.keys:
            raise KeysError(f"refusing to listen on {settings.host}: the keys file {self.path} has no keys")

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def authenticate(self, bearer: str) -> Key | None:
        supplied = digest(bearer).encode()
        found: Key | None = None
        # Every key is compared, always: which key matched (or whether one did) does not show in the timing.
        for key in self.keys:
            if hmac.compare_digest(supplied, key.digest.encode()):
                found = key
        return found

    def reload(self) -> bool:
        """Read the keys file again; False (and the old keys kept) if it cannot be used."""
        if self.path is None:
            return False
        self._stamp = self._stat()
        try:
            keys = _merge(self._plain, read(self.path, self.settings.model_table), self.path)
        except KeysError as exc:
            log.error("keys_reload_failed", error=str(exc))
            return False
        if not self.settings.loopback and not keys:
            log.error("keys_reload_failed", error="the keys file has no keys; keeping the keys in force")
            return False
        self.keys = keys
        log.info("keys_loaded", path=str(self.path), keys=len(keys) - len(self._plain))
        return True

    def _stat(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat() if self.path is not None else None
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size) if stat is not None else None

    async def watch(self) -> None:
        """Reload when the file changes (polled: works for editors that replace the file, and on every OS)."""
        while True:
            await asyncio.sleep(WATCH_EVERY)
            if self._stat() != self._stamp:
                self.reload()
