"""The turn core on a scripted worker (no processes): it yields neutral events — text, keepalive ticks, tool calls —
and ends with an Outcome; a streaming turn that fails after its first event ends with the failure as its Outcome,
one that fails before it raises; usage is accounted once and the conversation settled."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from maxproxy import errors
from maxproxy.bus import Bus, Item, TurnSettled
from maxproxy.claude.events import TurnEvent
from maxproxy.keys import LOCAL
from maxproxy.settings import Settings
from maxproxy.turns.core import Caller, Core, Event, Keepalive, Outcome, TextDelta, ToolCallEvent
from maxproxy.turns.messages import TurnRequest, UserMessage

from tests.test_reply_tools import accepted, result, start, stop, text, tool_use


@dataclass
class FakeWorker:
    interrupted: bool = False
    waiting: bool = False
    in_turn: bool = False
    turn_cost: float = 0.5
    session_id: str | None = "s1"


class FakeLease:
    def __init__(self, script: Sequence[TurnEvent | Exception | None]) -> None:
        self.worker = FakeWorker()
        self.script = script

    async def apply(self, options: Any, toolset: Any) -> None:
        pass

    def turn(self, lines: Any, watchdog: Any, **_: Any) -> AsyncGenerator[TurnEvent | None, None]:
        async def events() -> AsyncGenerator[TurnEvent | None, None]:
            for item in self.script:
                if isinstance(item, Exception):
                    raise item
                yield item

        return events()

    async def interrupt(self) -> None:
        self.worker.interrupted = True

    # what a `Lease` shows of its worker
    @property
    def in_turn(self) -> bool:
        return self.worker.in_turn

    @property
    def waiting(self) -> bool:
        return self.worker.waiting

    @property
    def interrupted(self) -> bool:
        return self.worker.interrupted

    @property
    def turn_cost(self) -> float:
        return self.worker.turn_cost

    @property
    def session_id(self) -> str | None:
        return self.worker.session_id


@dataclass
class Fakes:
    script: Sequence[TurnEvent | Exception | None]
    settled: list[Any] = field(default_factory=list)
    used: list[TurnSettled] = field(default_factory=list)  # what the bus heard

    # pool
    @contextlib.asynccontextmanager
    async def acquire(self, *_: Any, **__: Any) -> AsyncIterator[FakeLease]:
        yield FakeLease(self.script)

    # sessions
    @contextlib.asynccontextmanager
    async def exclusive(self, *_: Any) -> AsyncIterator[None]:
        yield

    async def plan(self, identity: Any, request: Any, parts: Any, full: Any, **_: Any) -> Any:
        record = type("Record", (), {"public_id": "sess_1", "id": "c1"})()
        return type("Plan", (), {"record": record, "turn": full, "continuing": False, "resume": None})()

    async def claim(self, plan: Any, lease: Any) -> None:
        pass

    async def settle(self, plan: Any, lease: Any, answer: Any) -> None:
        self.settled.append(answer)

    # quotas, breaker
    def check_model(self, key: Any, model: str) -> None:
        pass

    @contextlib.contextmanager
    def admit(self, key: Any) -> Iterator[dict[str, str]]:
        yield {"x-ratelimit-limit-requests": "10"}

    def check(self, family: str) -> None:
        pass

    # the bus's listeners (the ledger, metrics, the breaker)
    def hear(self, item: Item) -> None:
        if isinstance(item, TurnSettled):
            self.used.append(item)


async def run(script: Sequence[TurnEvent | Exception | None], *, stream: bool = True) -> tuple[list[Event], Fakes]:
    fakes = Fakes(script)
    bus = Bus()
    bus.listen(fakes.hear)
    cli = type("Cli", (), {"path": "claude", "api_key_source": None, "logged_in": True})()
    parts: dict[str, Any] = {"pool": fakes, "sessions": fakes, "quotas": fakes, "breaker": fakes}
    settings = Settings()
    core = Core(settings=settings, cli=cli, bus=bus, models=settings.model_table, **parts)
    request = TurnRequest(model="claude-sonnet-4", messages=[UserMessage(content="hi")], stream=stream)
    turn = core.turn(request, Caller(key=LOCAL, owner="local", headers={}))
    got: list[Event] = []
    async with contextlib.aclosing(turn.events()) as events:
        async for event in events:
            if not got:
                assert turn.headers == {"x-session-id": "sess_1", "x-ratelimit-limit-requests": "10"}
            got.append(event)
    return got, fakes


async def test_text_keepalive_and_the_outcome() -> None:
    events, fakes = await run(
        [None, start("m1"), text("m1", "Hel"), text("m1", "lo"), stop("m1", "end_turn"), result(usage={})]
    )
    assert events[:3] == [Keepalive(), TextDelta("Hel"), TextDelta("lo")]
    outcome = events[-1]
    assert isinstance(outcome, Outcome)
    assert (outcome.finish_reason, outcome.text, outcome.error) == ("stop", "Hello", None)
    assert fakes.settled[0].content == "Hello"  # recorded: the consumer took the Outcome and went on
    assert len(fakes.used) == 1


async def test_tool_calls_end_the_answer() -> None:
    events, _ = await run([start("m1"), tool_use("m1", "tu1"), accepted("tu1"), stop("m1")])
    call = ToolCallEvent(0, "calltu1", "get_weather", '{"city":"Paris"}')
    assert events[0] == call
    outcome = events[-1]
    assert isinstance(outcome, Outcome)
    assert (outcome.finish_reason, outcome.calls) == ("tool_calls", [call])


async def test_a_failure_after_the_first_event_is_the_outcome_before_it_is_raised() -> None:
    broken = errors.CLIFailed("The CLI exited")
    events, fakes = await run([start("m1"), text("m1", "Hi"), broken])
    outcome = events[-1]
    assert isinstance(outcome, Outcome)
    assert outcome.error is broken
    assert fakes.settled == [None]
    with pytest.raises(errors.CLIFailed):
        await run([start("m1"), broken])
    with pytest.raises(errors.CLIFailed):
        await run([start("m1"), text("m1", "Hi"), broken], stream=False)
