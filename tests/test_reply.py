"""CLI events → the OpenAI answer, fed with real CLI transcripts (tests/fixtures/cli, copied from the protocol
note's fixtures) and with hand-made event sequences for the cases a transcript does not show."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from maxproxy import errors, reply
from maxproxy.claude.events import Event, ProtocolError, Result, decode

FIXTURES = Path(__file__).parent / "fixtures" / "cli"


def events(name: str) -> list[Event]:
    out = []
    for raw in (FIXTURES / f"{name}.jsonl").read_bytes().splitlines():
        event = decode(raw)
        if event is not None:
            out.append(event)
    return out


def feed(evs: list[Event], *, streaming: bool = True) -> tuple[reply.Assembler, list[str]]:
    assembler = reply.Assembler(streaming=streaming)
    sent = [text for event in evs if (text := assembler.feed(event))]
    return assembler, sent


def test_every_fixture_line_decodes_or_is_skipped() -> None:
    for path in FIXTURES.glob("*.jsonl"):
        for raw in path.read_bytes().splitlines():
            decode(raw)  # raises on anything but a skip or a known event


def test_garbage_is_a_protocol_error_and_unknown_types_are_skipped() -> None:
    with pytest.raises(ProtocolError):
        decode(b"this is not json")
    with pytest.raises(ProtocolError):
        decode(b'{"type": "result", "is_error": "maybe"}')
    assert decode(b'{"type": "brand_new_event", "x": 1}') is None
    assert decode(b'{"type": "keep_alive"}') is None


def test_plain_answer_streams_the_deltas_and_keeps_the_usage() -> None:
    assembler, sent = feed(events("text_partial"))
    assert "".join(sent) == assembler.text
    assert len(sent) > 1
    assert assembler.failure() is None
    assert assembler.finish_reason == "stop"
    result = assembler.result
    assert result is not None
    assert result.usage is not None
    assert assembler.usage().completion_tokens == result.usage.output_tokens


def test_text_around_a_tool_run_is_one_answer_with_a_separator() -> None:
    assembler, sent = feed(events("tool_bash_partial"))
    assert assembler.text == "Running it." + reply.MESSAGE_SEPARATOR + 'Tool said: "hi"'
    assert "".join(sent) == assembler.text


def test_thinking_is_not_part_of_the_answer() -> None:
    assembler, sent = feed(events("thinking_partial"))
    assert assembler.text
    assert "".join(sent) == assembler.text
    assert assembler.failure() is None


def test_abandoned_partial_text_that_the_retry_does_not_repeat_fails_the_stream_but_not_the_completion() -> None:
    # Real transcript: "partial " was streamed, the connection dropped, the retry said "Hello from fake upstream!".
    assembler, sent = feed(events("err_drop_once_then_ok_partial"))
    assert sent == ["partial "]
    failure = assembler.failure()
    assert failure is not None
    assert failure.code == "upstream_stream_broken"
    completion, _ = feed(events("err_drop_once_then_ok_partial"), streaming=False)
    assert completion.failure() is None
    assert completion.text == "Hello from fake upstream!"  # the non-streaming answer is the clean retry


def stream_line(event: dict[str, Any], message: str = "msg_1", **extra: Any) -> Event:
    line = {"type": "stream_event", "event": event, "api_message_id": message, "parent_tool_use_id": None, **extra}
    decoded = decode(json.dumps(line).encode())
    assert decoded is not None
    return decoded


def text_delta(text: str, message: str, index: int = 0) -> Event:
    return stream_line(
        {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}, message
    )


def start(message: str) -> Event:
    return stream_line({"type": "message_start", "message": {"id": message, "usage": {"input_tokens": 3}}}, message)


def abandon(message: str) -> Event:
    return stream_line(
        {"type": "message_stop"}, message, abandoned_blocks={"api_message_id": message, "from_block_index": 0}
    )


def result(**fields: Any) -> Event:
    decoded = decode(json.dumps({"type": "result", "subtype": "success", "is_error": False, **fields}).encode())
    assert decoded is not None
    return decoded


def test_a_retry_that_repeats_the_sent_text_is_not_shown_twice() -> None:
    assembler, sent = feed(
        [
            start("m1"),
            text_delta("Hello ", "m1"),
            text_delta("wor", "m1"),
            abandon("m1"),
            start("m2"),
            text_delta("Hello ", "m2"),
            text_delta("world", "m2"),
            text_delta(", again", "m2"),
            result(usage={"input_tokens": 6, "output_tokens": 4}),
        ]
    )
    assert "".join(sent) == "Hello world, again"
    assert assembler.text == "Hello world, again"
    assert assembler.failure() is None


def test_output_limit_stops_at_the_first_max_tokens_and_reports_length() -> None:
    evs = [
        start("m1"),
        text_delta("cut here", "m1"),
        stream_line(
            {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 2}}, "m1"
        ),
        start("m2"),
        text_delta("auto-continued", "m2"),
        result(subtype="error_during_execution", is_error=True),
    ]
    assembler, sent = feed(evs)
    assert sent == ["cut here"]
    assert assembler.stop_requested
    assert assembler.finish_reason == "length"
    assert assembler.failure() is None
    usage = assembler.usage()
    # Both model calls were made (and billed) before the interrupt landed: usage counts both.
    assert (usage.prompt_tokens, usage.completion_tokens) == (6, 2)


def test_usage_counts_cache_reads_and_writes_as_prompt_tokens() -> None:
    assembler, _ = feed(
        [
            result(
                usage={
                    "input_tokens": 10,
                    "cache_read_input_tokens": 5,
                    "cache_creation_input_tokens": 3,
                    "output_tokens": 7,
                }
            )
        ]
    )
    usage = assembler.usage()
    assert (usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens) == (18, 5)
    assert (usage.completion_tokens, usage.total_tokens) == (7, 25)


def last_result(name: str) -> Result:
    found = [e for e in events(name) if isinstance(e, Result)]
    return found[-1]


@pytest.mark.parametrize(
    ("fixture", "status", "kind"),
    [
        ("err_429_retry_after_1", 429, errors.RateLimited),
        ("err_401", 502, errors.UpstreamAuthError),
        ("err_500", 502, errors.UpstreamError),
        ("err_529_overloaded", 503, errors.Overloaded),
        ("err_connection_refused", 502, errors.UpstreamError),
        ("err_400_prompt_too_long", 400, errors.ContextLengthExceeded),
        ("err_hang_headers_api_timeout15s", 504, errors.Timeout),
        ("result_error_max_turns", 502, errors.CLIFailed),
    ],
)
def test_error_results_map_to_statuses_sdks_understand(fixture: str, status: int, kind: type) -> None:
    assembler, sent = feed(events(fixture))
    failure = assembler.failure()
    assert failure is not None
    assert isinstance(failure, kind)
    assert failure.status == status
    error_text = last_result(fixture).result
    assert not error_text or error_text not in "".join(sent)  # the error text never goes out as content
    assert failure.message not in "".join(sent)
    if status == 429:
        assert failure.headers()["Retry-After"].isdigit()


def test_subscription_limit_uses_the_reset_time_for_retry_after() -> None:
    import time

    limit = decode(
        json.dumps(
            {
                "type": "rate_limit_event",
                "rate_limit_info": {"status": "rejected", "resetsAt": time.time() + 120, "rateLimitType": "five_hour"},
            }
        ).encode()
    )
    assert limit is not None
    assembler, _ = feed([limit, result(is_error=True, api_error_status=429, result="You've hit your 5-hour limit")])
    failure = assembler.failure()
    assert failure is not None
    assert 115 <= int(failure.headers()["Retry-After"]) <= 121


def test_extra_usage_refusal_is_not_retried_as_a_rate_limit() -> None:
    assembler, _ = feed(
        [
            result(
                is_error=True,
                api_error_status=400,
                result="Third-party apps now draw from your extra usage, not your plan limits.",
            )
        ]
    )
    failure = assembler.failure()
    assert failure is not None
    assert (failure.status, failure.code) == (403, "extra_usage_required")


def test_chunks_are_exact_and_share_id_created_and_model() -> None:
    chunks = reply.Chunks("chatcmpl-1", 1700000000, "claude-sonnet-4")
    role, content, finish = (
        json.loads(c) for c in (chunks.role(), chunks.content('a "quoted"\nline'), chunks.finish("stop"))
    )
    for chunk in (role, content, finish):
        assert (chunk["id"], chunk["created"], chunk["model"], chunk["object"]) == (
            "chatcmpl-1",
            1700000000,
            "claude-sonnet-4",
            "chat.completion.chunk",
        )
    assert role["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert content["choices"][0]["delta"] == {"content": 'a "quoted"\nline'}
    assert finish["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
