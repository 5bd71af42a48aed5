"""CLI events → the OpenAI answer, fed with real CLI transcripts (tests/fixtures/cli, copied from the protocol
note's fixtures) and with hand-made event sequences for the cases a transcript does not show."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from maxproxy import errors, reply
from maxproxy.claude.events import Event, ProtocolError, Result, StreamEvent, System, decode
from maxproxy.wire import chat

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


# --- every fixture, decoded --------------------------------------------------------------------------------------
# What each transcript must decode to, read off the transcript itself (see each .meta.json in the protocol note's
# fixtures for the request that produced it): the kinds of its lines in order, and per turn the answer's text, the
# pieces a streaming client is sent, and the result's fields. No transcript has a line of an unknown type or a
# rate_limit_event (the CLI wrote none for these runs); lines of unknown types are mixed in below.

PRELUDE = ["system/ui_invalidate", "system/init", "system/status"]
RETRIES = ["system/api_retry"] * 10


def streamed(*deltas: str) -> list[str]:
    """The lines of a streamed text message with `deltas`, up to its `assistant` line."""
    return ["stream/message_start", "stream/content_block_start", *["stream/content_block_delta"] * len(deltas)]


STREAM_END = ["stream/content_block_stop", "stream/message_delta", "stream/message_stop"]
HELLO = "Hello from fake upstream!"
HELLO_PIECES = ["Hello ", "from ", "fake ", "upstream!"]
ONE_HELLO_TURN = ["system/init", "system/status", *streamed(*HELLO_PIECES), "assistant", *STREAM_END, "result/success"]


@dataclass(frozen=True)
class Turn:
    text: str  # the clean answer (`Assembler.text`)
    sent: list[str]  # what a streaming client is sent, piece by piece
    subtype: str
    is_error: bool
    api_error_status: int | None
    stop_reason: str | None
    terminal_reason: str


def ok(text: str, sent: list[str]) -> Turn:
    return Turn(text, sent, "success", False, None, "end_turn", "completed")


def api_error(status: int | None, terminal: str = "api_error") -> Turn:
    # The CLI's error answer is a `<synthetic>` assistant message: never part of the answer.
    return Turn("", [], "success", True, status, "stop_sequence", terminal)


EXPECTED: dict[str, tuple[list[str], list[Turn]]] = {
    "basic_text_stream_verbose": (["system/init", "assistant", "result/success"], [ok(HELLO, [HELLO])]),
    "err_400_prompt_too_long": ([*PRELUDE, "assistant", "result/success"], [api_error(400, "prompt_too_long")]),
    "err_401": ([*PRELUDE, *RETRIES, "assistant", "result/success"], [api_error(401)]),
    "err_429_retry_after_1": ([*PRELUDE, *RETRIES, "assistant", "result/success"], [api_error(429)]),
    "err_500": ([*PRELUDE, *RETRIES, "assistant", "result/success"], [api_error(500)]),
    "err_529_overloaded": ([*PRELUDE, *RETRIES, "assistant", "result/success"], [api_error(529)]),
    "err_connection_refused": ([*PRELUDE, *RETRIES, "assistant", "result/success"], [api_error(None)]),
    "err_hang_headers_api_timeout15s": (
        [*PRELUDE, "system/api_retry", "assistant", "result/success"],
        [api_error(None)],
    ),
    "err_drop_once_then_ok_partial": (
        [
            *PRELUDE,
            *streamed("partial "),
            "stream/content_block_stop",
            "stream/message_stop",  # with abandoned_blocks: the retry starts over
            "system/api_retry",
            *streamed(*HELLO_PIECES),
            "assistant",
            *STREAM_END,
            "result/success",
        ],
        # The retry does not repeat "partial ": the streaming answer fails after it (see the test further down).
        [ok(HELLO, ["partial "])],
    ),
    "result_error_max_turns": (
        ["system/init", "assistant", "assistant", "user", "result/error_max_turns"],
        [Turn("Running it.", ["Running it."], "error_max_turns", True, None, "tool_use", "max_turns")],
    ),
    "result_stop_max_tokens": (
        # Four model calls cut at the output limit (no stream lines: not run with partial messages), then the CLI's
        # own error, a `<synthetic>` message.
        ["system/ui_invalidate", "system/init", *["assistant", "user"] * 3, "assistant", "assistant", "result/success"],
        [
            Turn(
                reply.MESSAGE_SEPARATOR.join(["This is cut off"] * 4),
                ["This is cut off", *[reply.MESSAGE_SEPARATOR + "This is cut off"] * 3],
                "success",
                True,
                None,
                "stop_sequence",
                "api_error",
            )
        ],
    ),
    "text_partial": (ONE_HELLO_TURN, [ok(HELLO, HELLO_PIECES)]),
    "thinking_partial": (
        [
            *PRELUDE,
            "stream/message_start",
            "stream/content_block_start",  # thinking
            "system/thinking_tokens",
            "stream/content_block_delta",
            "stream/content_block_delta",
            "assistant",
            "stream/content_block_stop",
            "stream/content_block_start",  # text
            "stream/content_block_delta",
            "stream/content_block_delta",
            "assistant",
            *STREAM_END,
            "result/success",
        ],
        [ok("Thought done.", ["Thought ", "done."])],
    ),
    "tool_bash_partial": (
        [
            "system/init",
            "system/status",
            *streamed("Running ", "it."),
            "assistant",
            "stream/content_block_stop",
            "stream/content_block_start",  # tool_use
            "stream/content_block_delta",
            "stream/content_block_delta",
            "assistant",
            *STREAM_END,
            "user",  # the tool's result
            "system/status",
            *streamed("Tool ", "said: ", '"hi"'),
            "assistant",
            *STREAM_END,
            "result/success",
        ],
        [
            ok(
                "Running it." + reply.MESSAGE_SEPARATOR + 'Tool said: "hi"',
                ["Running ", "it.", reply.MESSAGE_SEPARATOR + "Tool ", "said: ", '"hi"'],
            )
        ],
    ),
    "warm_basic_two_turns": ([*ONE_HELLO_TURN, *ONE_HELLO_TURN], [ok(HELLO, HELLO_PIECES), ok(HELLO, HELLO_PIECES)]),
    "warm_interrupt_then_next_turn": (
        [
            *PRELUDE,
            *streamed("s0 ", "s1 ", "s2 ", "s3 "),
            "control_response",  # the interrupt's answer
            "assistant",
            "user",  # "[Request interrupted by user]"
            *STREAM_END,  # message_stop abandons the blocks from index 1: the streamed text (index 0) stays
            "result/error_during_execution",
            "system/init",
            "system/status",
            *streamed("second ", "answer ", "ok"),
            "assistant",
            *STREAM_END,
            "result/success",
            "control_response",
        ],
        [
            Turn(
                "s0 s1 s2 s3 ",
                ["s0 ", "s1 ", "s2 ", "s3 "],
                "error_during_execution",
                True,
                None,
                None,
                "aborted_streaming",
            ),
            ok("second answer ok", ["second ", "answer ", "ok"]),
        ],
    ),
    # The line of an unknown type went to the CLI's stdin: the CLI ignored it and answered the next turn.
    "warm_unknown_type_line": (
        ["system/ui_invalidate", *["system/init", "assistant", "result/success"] * 2],
        [ok("ok", ["ok"]), ok("ok", ["ok"])],
    ),
}


def kind(event: Event) -> str:
    if isinstance(event, System):
        return f"system/{event.subtype}"
    if isinstance(event, StreamEvent):
        return f"stream/{event.event.type}"
    if isinstance(event, Result):
        return f"result/{event.subtype}"
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def decoded(raw_lines: list[bytes]) -> tuple[list[Event], int]:
    """The events of `raw_lines` and how many lines were skipped."""
    out, skipped = [], 0
    for raw in raw_lines:
        event = decode(raw)
        if event is None:
            skipped += 1
        else:
            out.append(event)
    return out, skipped


def turns(evs: list[Event]) -> list[list[Event]]:
    """One list per turn, each ending at its result (lines after the last result start no turn)."""
    out: list[list[Event]] = [[]]
    for event in evs:
        out[-1].append(event)
        if isinstance(event, Result):
            out.append([])
    return out[:-1]


def test_the_fixtures_are_there_and_each_has_its_expectations() -> None:
    assert FIXTURES.is_dir()
    names = {path.stem for path in FIXTURES.glob("*.jsonl")}
    assert names == set(EXPECTED)  # a new transcript needs its expectations here; none may go missing


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_fixture_decodes_to_its_events_text_and_results(name: str) -> None:
    kinds, expected_turns = EXPECTED[name]
    raw_lines = (FIXTURES / f"{name}.jsonl").read_bytes().splitlines()
    evs, skipped = decoded(raw_lines)
    assert skipped == 0
    assert [kind(e) for e in evs] == kinds
    session = {e.session_id for e in evs if isinstance(e, System) and e.subtype == "init"}
    assert len(session) == 1
    retries = [e for e in evs if isinstance(e, System) and e.subtype == "api_retry"]
    assert [r.attempt for r in retries] == list(range(1, len(retries) + 1))
    # Each retry names the status the turn then failed with (none for a connection that broke or never came).
    assert {r.error_status for r in retries} <= {t.api_error_status for t in expected_turns}
    got = turns(evs)
    assert len(got) == len(expected_turns)
    for turn, expected in zip(got, expected_turns, strict=True):
        assembler, sent = feed(turn)
        result = assembler.result
        assert result is not None
        assert (
            result.subtype,
            result.is_error,
            result.api_error_status,
            result.stop_reason,
            result.terminal_reason,
        ) == (
            expected.subtype,
            expected.is_error,
            expected.api_error_status,
            expected.stop_reason,
            expected.terminal_reason,
        )
        assert result.session_id in session
        assert (assembler.text, sent) == (expected.text, expected.sent)
        completion, _ = feed(turn, streaming=False)
        assert completion.text == expected.text
        # A turn fails exactly when its result is an error, or (streaming) when the sent text cannot be kept.
        streaming_ok = not expected.is_error and "".join(expected.sent) == expected.text
        assert (assembler.failure() is None) == streaming_ok
        assert (completion.failure() is None) == (not expected.is_error)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_lines_of_unknown_types_are_skipped_and_counted(name: str) -> None:
    raw_lines = (FIXTURES / f"{name}.jsonl").read_bytes().splitlines()
    unknown = [b'{"type": "bogus", "x": 1}', b'{"type": "keep_alive"}', b'{"type": 7}', b'{"x": 1}']
    mixed = [line for raw in raw_lines for line in (raw, unknown[len(raw) % len(unknown)])]
    evs, skipped = decoded(mixed)
    assert skipped == len(raw_lines)
    assert evs == decoded(raw_lines)[0]


def test_garbage_is_a_protocol_error_and_unknown_types_are_skipped() -> None:
    for garbage in (b"this is not json", b'{"type": "assistant", "message": {', b"[1, 2]", b'"result"'):
        with pytest.raises(ProtocolError):
            decode(garbage)
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
        ("err_529_overloaded", 529, errors.Overloaded),
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
    chunks = chat.Chunks("chatcmpl-1", 1700000000, "claude-sonnet-4")
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


def thinking_delta(text: str, message: str, index: int = 0) -> Event:
    return stream_line(
        {"type": "content_block_delta", "index": index, "delta": {"type": "thinking_delta", "thinking": text}},
        message,
    )


def test_thinking_a_retry_repeats_is_not_shown_twice() -> None:
    """The stream broke after some thinking and some text; the CLI retried and the model thought the same again."""
    assembler = reply.Assembler(streaming=True)
    shown: list[str] = []
    for event in [
        start("m1"),
        thinking_delta("Let me ", "m1"),
        thinking_delta("th", "m1"),
        abandon("m1"),
        start("m2"),
        thinking_delta("Let me ", "m2"),
        thinking_delta("think.", "m2"),
        text_delta("Hi", "m2", index=1),
        result(usage={"input_tokens": 6, "output_tokens": 4}),
    ]:
        assembler.feed(event)
        shown.append(assembler.thinking_delta)
    assert "".join(shown) == "Let me think."
    assert assembler.thinking == "Let me think."  # the abandoned message's thinking is left out
    assert assembler.text == "Hi"


def test_thinking_a_retry_changes_goes_on_after_a_break() -> None:
    assembler = reply.Assembler(streaming=True)
    shown: list[str] = []
    for event in [
        start("m1"),
        thinking_delta("First idea", "m1"),
        abandon("m1"),
        start("m2"),
        thinking_delta("Other", "m2"),
    ]:
        assembler.feed(event)
        shown.append(assembler.thinking_delta)
    assert "".join(shown) == "First idea" + reply.MESSAGE_SEPARATOR + "Other"
    assert assembler.thinking == "Other"
