"""Structured outputs without processes: the response format checked as a JSON Schema (a 400 naming the field), the
note for the model, fence stripping, the problems an invalid answer is told about, and the turn core on a scripted
worker — the text held back and checked, one retry on the same lease with usage added up, the valid JSON recorded,
an answer cut at the output limit passed on as it is, tool calls handed over, and an error when the retry fails too."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import pytest
from maxproxy import errors
from maxproxy.bus import Bus
from maxproxy.claude.events import TurnEvent
from maxproxy.keys import LOCAL
from maxproxy.settings import Settings
from maxproxy.turns import structured
from maxproxy.turns.core import Caller, Core, Event, Outcome, TextDelta, ToolCallEvent
from maxproxy.turns.messages import OutputSchema, TurnRequest, UserMessage

from tests.test_reply_tools import accepted, result, start, stop, text, tool_use
from tests.test_turns import FakeLease, Fakes

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}}},
    "required": ["name", "pets"],
    "additionalProperties": False,
    "$defs": {"Pet": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}}, "required": ["kind"]}},
}
OUTPUT = structured.json_schema({"name": "Person", "schema": PERSON, "description": "who"}, "response_format.js")


# --- the request -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        ({"schema": {}}, "f.name"),
        ({"name": "a b", "schema": {}}, "f.name"),
        ({"name": "A"}, "f.schema"),
        ({"name": "A", "schema": True}, "f.schema"),
        ({"name": "A", "schema": {"type": "integer", "minimum": "1"}}, "f.schema"),
        ({"name": "A", "schema": {"$ref": "#/$defs/Missing"}}, "f.schema"),
        ({"name": "A", "schema": {}, "description": 3}, "f.description"),
        ({"name": "A", "schema": {}, "strict": 1}, "f.strict"),
    ],
)
def test_bad_formats_name_their_field(spec: dict[str, Any], param: str) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        structured.json_schema(spec, "f")
    assert caught.value.param == param


def test_the_note_carries_the_schema() -> None:
    assert OutputSchema(kind="json_schema", schema=PERSON, name="Person", description="who") == OUTPUT
    note = structured.instructions(OUTPUT)
    assert note.startswith("<response_format>\n")
    assert note.endswith("\n</response_format>")
    assert "`Person`" in note
    assert "What it describes: who" in note
    assert '"$defs"' in note
    assert "one JSON object" in structured.instructions(structured.JSON_OBJECT)


# --- the answer --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        ('```json\n{"a": 1}\n```', '{"a": 1}'),
        ('\n```JSON \n{"a": 1}\n```\n', '{"a": 1}'),
        ("```\n[1,\n 2]\n```", "[1,\n 2]"),
        ('```{"a": 1}```', '{"a": 1}'),
        ('  {"a": 1}\n', '{"a": 1}'),
        ("no fence", "no fence"),
    ],
)
def test_unfenced(answer: str, body: str) -> None:
    assert structured.unfenced(answer) == body


def test_check() -> None:
    valid = '{"name": "Ada", "pets": [{"kind": "cat"}]}'
    assert structured.check(OUTPUT, valid) == structured.Verdict(valid)
    assert structured.check(OUTPUT, f"```json\n{valid}\n```").text == valid
    assert structured.check(OUTPUT, f"Here you are:\n```json\n{valid}\n```\nEnjoy.").text == valid  # one block
    two = f"```json\n{valid}\n```\nor\n```json\n{valid}\n```"
    assert (structured.check(OUTPUT, two).problem or "").startswith("it is not JSON (JSON is malformed")
    assert structured.check(OUTPUT, " ").problem == "the answer is empty"
    wrong = structured.check(OUTPUT, '{"pets": [{"kind": "cow"}], "age": 3}')
    assert wrong.text == '{"pets": [{"kind": "cow"}], "age": 3}'
    assert wrong.problem is not None
    assert "at $: 'name' is a required property" in wrong.problem
    assert "at $.pets[0].kind: 'cow' is not one of ['cat', 'dog']" in wrong.problem
    assert "('age' was unexpected)" in wrong.problem
    assert structured.check(structured.JSON_OBJECT, "[1]").problem == "at $: [1] is not of type 'object'"
    assert structured.check(structured.JSON_OBJECT, '{"x": "```"}').problem is None


def test_many_problems_are_counted_and_long_ones_cut() -> None:
    output = structured.json_schema({"name": "N", "schema": {"type": "array", "items": {"type": "string"}}}, "f")
    problem = structured.check(output, "[1, 2, 3, 4, 5, 6, 7]").problem
    assert problem is not None
    assert problem.count("is not of type") == 5
    assert problem.endswith("; and 2 more")
    long = structured.check(output, f"[{'1' * 1000}]").problem
    assert long is not None
    assert len(long) < 320
    assert long.endswith("…")


# --- the turn core -----------------------------------------------------------------------------------------------


class ScriptedLease(FakeLease):
    """One script per CLI turn; the lines each turn got are kept."""

    def __init__(self, scripts: list[Sequence[TurnEvent | Exception | None]]) -> None:
        super().__init__(scripts[0])
        self.scripts = scripts
        self.lines: list[Any] = []

    def turn(self, lines: Any, watchdog: Any, **kwargs: Any) -> AsyncGenerator[TurnEvent | None, None]:
        self.script = self.scripts[len(self.lines)]
        self.lines.append(lines)
        return super().turn(lines, watchdog, **kwargs)


class StructuredFakes(Fakes):
    def __init__(self, scripts: list[Sequence[TurnEvent | Exception | None]]) -> None:
        super().__init__(scripts[0])
        self.lease = ScriptedLease(scripts)

    @contextlib.asynccontextmanager
    async def acquire(self, *_: Any, **__: Any) -> AsyncIterator[FakeLease]:
        yield self.lease


def answer(message: str, body: str, reason: str = "end_turn") -> list[TurnEvent]:
    usage = {"input_tokens": 10, "output_tokens": 4}
    return [start(message), text(message, body), stop(message, reason, 4), result(usage=usage)]


async def run(
    scripts: list[Sequence[TurnEvent | Exception | None]], *, stream: bool = True, output: OutputSchema = OUTPUT
) -> tuple[list[Event], StructuredFakes]:
    fakes = StructuredFakes(scripts)
    bus = Bus()
    bus.listen(fakes.hear)
    cli = type("Cli", (), {"path": "claude", "api_key_source": None, "logged_in": True})()
    parts: dict[str, Any] = {"pool": fakes, "sessions": fakes, "quotas": fakes, "breaker": fakes}
    settings = Settings()
    core = Core(settings=settings, cli=cli, bus=bus, models=settings.model_table, **parts)
    request = TurnRequest(
        model="claude-sonnet-4", messages=[UserMessage(content="hi")], stream=stream, output_schema=output
    )
    got: list[Event] = []
    async with contextlib.aclosing(core.turn(request, Caller(key=LOCAL, owner="local", headers={})).events()) as events:
        async for event in events:
            got.append(event)
    return got, fakes


VALID = '{"name": "Ada", "pets": []}'


async def test_an_invalid_answer_is_asked_for_again_on_the_same_lease() -> None:
    events, fakes = await run([answer("m1", '{"name": "Ada"}'), answer("m2", f"```json\n{VALID}\n```")])
    assert [e for e in events if isinstance(e, TextDelta)] == [TextDelta(VALID)]  # only the checked JSON
    outcome = events[-1]
    assert isinstance(outcome, Outcome)
    assert (outcome.finish_reason, outcome.text, outcome.error) == ("stop", VALID, None)
    assert (outcome.usage.prompt_tokens, outcome.usage.completion_tokens) == (20, 8)  # both CLI turns
    first, second = fakes.lease.lines
    assert "<response_format>" in first[-1]["message"]["content"][-1]["text"]  # the note on the question
    [correction] = second
    assert "'pets' is a required property" in correction["message"]["content"][0]["text"]
    assert fakes.settled[0].content == VALID  # the conversation records the JSON the client got
    [settled] = fakes.used  # accounted once, for both
    assert (settled.input_tokens + settled.cached_tokens, settled.output_tokens) == (20, 8)
    assert len(settled.cli_turns) == 2  # the breaker reads each CLI turn


async def test_still_invalid_raises() -> None:
    with pytest.raises(errors.InvalidStructuredOutput) as caught:
        await run([answer("m1", "nope"), answer("m2", "[]")], stream=False)
    assert caught.value.status == 502
    assert "after 2 attempts: at $: [] is not of type 'object'" in caught.value.message


async def test_a_cut_answer_goes_out_as_it_is() -> None:
    events, fakes = await run([answer("m1", '{"name": "A', reason="max_tokens")])
    assert len(fakes.lease.lines) == 1  # not asked for again
    outcome = events[-1]
    assert isinstance(outcome, Outcome)
    assert (outcome.finish_reason, outcome.text) == ("length", '{"name": "A')


async def test_text_before_a_tool_call_goes_with_it() -> None:
    script = [start("m1"), text("m1", "Looking it up."), tool_use("m1", "tu1"), accepted("tu1"), stop("m1")]
    events, fakes = await run([script])
    assert events[:2] == [TextDelta("Looking it up."), ToolCallEvent(0, "calltu1", "get_weather", '{"city":"Paris"}')]
    outcome = events[-1]
    assert isinstance(outcome, Outcome)
    assert outcome.finish_reason == "tool_calls"
    assert len(fakes.lease.lines) == 1
