"""Hostile request bodies over raw HTTP: bytes that are not UTF-8, JSON nested past any sane depth (in the request's
free-form fields and inside a tool call's `arguments` string) and numbers outside what their field can mean are each
a 400 `invalid_request_error` in OpenAI's error shape, as JSON and before any stream opens, never a 500."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from maxproxy import errors, prompt
from maxproxy.bench.upstream import FakeUpstream
from maxproxy.wire.chat import decode, to_turn
from maxproxy.wire.decoding import MAX_DEPTH

from tests.conftest import Proxy, ProxyFactory, make_settings
from tests.e2e import CHAT

MODEL = "claude-sonnet-4"
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


def nested_object(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def nested_array(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def body_with(field: bytes, *, text: bytes = b"hi", stream: bool = False) -> bytes:
    """A valid request (raw bytes, so that invalid ones can be made) with `field` spliced in as extra members."""
    return (
        b'{"model": "' + MODEL.encode() + b'", "stream": ' + (b"true" if stream else b"false") + b", "
        b'"messages": [{"role": "user", "content": "' + text + b'"}]' + (b", " + field if field else b"") + b"}"
    )


def deep_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def tool_call_body(arguments: str, *, stream: bool = False, tools: bool = True) -> bytes:
    """A tool call's follow-up; without `tools` the call is replayed as text but still hashed into the history."""
    return msgspec.json.encode(
        {
            "model": MODEL,
            "stream": stream,
            **({"tools": [TOOL]} if tools else {}),
            "messages": [
                {"role": "user", "content": "look it up"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "call1", "type": "function", "function": {"name": "lookup", "arguments": arguments}}
                    ],
                },
                {"role": "tool", "tool_call_id": "call1", "content": "found"},
            ],
        }
    )


ARGUMENTS = "messages[1].tool_calls[0].function.arguments"

CASES: list[tuple[str, bytes, str | None]] = [
    # (case id, the members spliced into a valid request, the expected param: none where msgspec cannot say where)
    ("invalid-utf8-byte", b"", None),
    ("overlong-utf8", b"", None),
    ("surrogate-utf8", b"", None),
    ("utf8-in-metadata", b'"metadata": {"k": "\xc0\xaf"}', None),
    ("metadata-2000", b'"metadata": ' + nested_object(2000), None),
    ("tool_choice-2000", b'"tool_choice": ' + nested_object(2000), None),
    ("response_format-2000", b'"response_format": ' + nested_object(2000), None),
    ("unknown-key-2000", b'"x_vendor": ' + nested_array(2000), None),
    (
        "parameters-2000",
        b'"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "default": '
        + nested_array(2000)
        + b"}}}]",
        None,
    ),
    ("metadata-500", b'"metadata": ' + nested_object(500), "metadata"),
    ("response_format-300", b'"response_format": ' + nested_object(300), "response_format"),
    (
        "parameters-150-levels",  # deep enough to exhaust jsonschema's recursion, shallow enough for msgspec
        b'"tools": '
        + msgspec.json.encode([{"type": "function", "function": {"name": "f", "parameters": deep_schema(150)}}]),
        "tools[0]",
    ),
    ("max_tokens-1e30", b'"max_tokens": ' + str(10**30).encode(), "max_tokens"),
    ("max_tokens-over-model", b'"max_tokens": 64001', "max_tokens"),
    ("max_completion_tokens-over-model", b'"max_completion_tokens": 200000', "max_completion_tokens"),
    ("max_tokens-negative", b'"max_tokens": -5', "max_tokens"),
    ("temperature-1e308", b'"temperature": 1e308', "temperature"),
    ("top_p-2", b'"top_p": 2', "top_p"),
    ("n-1e30", b'"n": ' + str(10**30).encode(), "n"),
    ("seed-over-int64", b'"seed": ' + str(2**63).encode(), "seed"),
    ("top_logprobs-21", b'"top_logprobs": 21', "top_logprobs"),
    ("presence_penalty-3", b'"presence_penalty": -3', "presence_penalty"),
    ("frequency_penalty-1e308", b'"frequency_penalty": 1e308', "frequency_penalty"),
    ("logit_bias-101", b'"logit_bias": {"50256": 101}', "logit_bias"),
]
TEXTS = {"invalid-utf8-byte": b"a\xffb", "overlong-utf8": b"\xc0\xaf", "surrogate-utf8": b"\xed\xa0\x80"}


@pytest.fixture
async def bare(cli_env: Path, start_proxy: ProxyFactory) -> Proxy:
    """maxproxy without warm workers: every request here must be refused before a CLI is needed."""
    return await start_proxy(min_idle=0)


async def error_400(proxy: Proxy, case: str, body: bytes) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    async with proxy.http.post(proxy.url + CHAT, data=body, headers=headers) as response:
        text = await response.text(errors="replace")
        assert (case, response.status, response.content_type) == (case, 400, "application/json"), text
        error = msgspec.json.decode(text)
    assert set(error) == {"error"}, case
    assert set(error["error"]) == {"message", "type", "param", "code"}, case
    assert error["error"]["type"] == "invalid_request_error", case
    assert "Traceback" not in error["error"]["message"], case
    return error["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_bad_input_is_400(bare: Proxy, upstream: FakeUpstream, stream: bool) -> None:
    # One proxy for every case (each is refused before a CLI is involved); the case id is in every assertion.
    for case, raw, param in CASES:
        error = await error_400(bare, case, body_with(raw, text=TEXTS.get(case, b"hi"), stream=stream))
        assert (case, error["param"]) == (case, param), error
    for depth, tools in ((10_000, True), (200, True), (10_000, False)):
        arguments = "[" * depth + "]" * depth
        error = await error_400(bare, f"arguments-{depth}", tool_call_body(arguments, stream=stream, tools=tools))
        assert (depth, error["param"]) == (depth, ARGUMENTS), error
    assert upstream.requests == []
    async with bare.http.get(bare.url + "/v1/models") as response:
        assert response.status == 200  # and the app still answers


def test_the_edges_of_each_range_are_accepted(tmp_path: Path) -> None:
    """Pure: the largest values that mean something still decode and make a turn."""
    settings = make_settings(tmp_path)
    edges = {
        "max_tokens": 64_000,
        "max_completion_tokens": 64_000,
        "temperature": 2,
        "top_p": 0,
        "n": 1,
        "seed": -(2**63),
        "top_logprobs": 20,
        "presence_penalty": -2,
        "frequency_penalty": 2.0,
        "logit_bias": {"1": -100, "2": 100},
        "metadata": msgspec.json.decode(nested_object(MAX_DEPTH - 1)),
        "tools": [{"type": "function", "function": {"name": "f", "parameters": deep_schema(30)}}],  # 63 levels
    }
    chat = decode(msgspec.json.encode({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **edges}))
    assert prompt.build(to_turn(chat), settings, settings.model_table).options.max_output_tokens == 64_000
    assert decode(body_with(b'"seed": ' + str(2**63 - 1).encode())).seed == 2**63 - 1
    # A model with a lower output limit refuses what another accepts.
    with pytest.raises(errors.InvalidRequest) as caught:
        prompt.build(
            to_turn(msgspec.structs.replace(chat, model="claude-opus-4-1-20250805")), settings, settings.model_table
        )
    assert caught.value.param == "max_tokens"
