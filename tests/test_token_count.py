"""`POST /v1/messages/count_tokens`'s estimate: text by characters, images and PDF pages at a flat price."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
import pytest
from maxproxy import errors
from maxproxy.wire import token_count

from tests.test_prompt import PNG


def count(**body: Any) -> int:
    return token_count.estimate(token_count.decode_request(msgspec.json.encode({"model": "opus", **body})))


def test_text_is_a_quarter_of_its_characters_plus_each_message() -> None:
    assert count(messages=[{"role": "user", "content": "x" * 400}]) == 100 + token_count.MESSAGE_TOKENS
    blocks = [{"type": "text", "text": "x" * 40, "cache_control": {"type": "ephemeral"}}]
    assert count(system=blocks, messages=[{"role": "user", "content": blocks}]) == 20 + token_count.MESSAGE_TOKENS


def test_tools_tool_calls_results_and_thinking_count() -> None:
    bare = count(messages=[{"role": "user", "content": "hi"}])
    tool = {"name": "get_weather", "description": "Weather in a city", "input_schema": {"type": "object"}}
    assert count(messages=[{"role": "user", "content": "hi"}], tools=[tool]) > bare
    history = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "t" * 400, "signature": "s"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "y" * 400}]},
    ]
    assert count(messages=history) >= bare + 200 + 2 * token_count.MESSAGE_TOKENS


def test_images_and_pdf_pages_count_whole() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    assert count(messages=[{"role": "user", "content": [image]}]) == token_count.IMAGE_TOKENS + 4
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Pages /Count 2 >>\n2 0 obj << /Type /Page >>\n3 0 obj << /Type/Page >>\n"
    document = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": base64.b64encode(pdf).decode()},
    }
    assert count(messages=[{"role": "user", "content": [document]}]) == 2 * token_count.PDF_PAGE_TOKENS + 4


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"model": "opus"}', b'{"model": "opus", "messages": "hi"}', b'{"model": 1, "messages": []}'],
)
def test_bad_input_is_a_400(body: bytes) -> None:
    with pytest.raises(errors.InvalidRequest):
        token_count.decode_request(body)
