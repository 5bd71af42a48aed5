"""The pool's per-worker holder, lease and upkeep on their own, without processes: every state change checks the state
it leaves, the holder publishes its worker's events only under the turn it is lent for, a lease raises once it is
released, and the upkeep decides idle expiry (plain idle beyond `min_idle`, held conversations retired, waiting turns
freed after `tool_wait`) and the warm set's starts within `max_workers`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from maxproxy.bus import Bus, TurnRef
from maxproxy.claude.command import Launch
from maxproxy.claude.events import System
from maxproxy.claude.worker import Worker
from maxproxy.pool import Holder, Lease, RetireReason, WorkerState, upkeep
from maxproxy.settings import Settings

from tests.conftest import make_settings

SONNET, HAIKU = Launch(model="sonnet"), Launch(model="haiku")
S = WorkerState


@dataclass
class FakeWorker:
    name: str = "w1"
    pid: int = 1
    alive: bool = True
    in_turn: bool = False
    waiting: bool = False
    interrupted: bool = False
    turn_cost: float = 0.0
    session_id: str | None = "s1"
    seen: list[Any] = field(default_factory=list)


def holder(state: WorkerState, launch: Launch = SONNET, *, owned: bool = False, idle_since: float = 0.0) -> Holder:
    """A holder brought to `state` through the transitions."""
    h = Holder(launch, Bus(), owned=owned)
    if state is S.STARTING:
        return h
    h.up(cast(Worker, FakeWorker()))
    if state is S.IDLE:
        h.park()
    else:
        h.lend(TurnRef(turn_id="t", request_id=None, model="m", worker="w1", key=""))
        if state is not S.LENT:
            h.take_back()
            if state is S.HOLDING or state is S.WAITING_FOR_TOOLS:
                cast(FakeWorker, h.worker).waiting = state is S.WAITING_FOR_TOOLS
                h.hold("c1")
            elif state is S.STOPPING:
                h.retire()
    assert h.state is state
    h.idle_since = idle_since
    return h


ALLOWED = {
    "lend": {S.STARTING, S.IDLE, S.HOLDING, S.WAITING_FOR_TOOLS, S.RETURNING},
    "take_back": {S.LENT},
    "park": {S.STARTING, S.RETURNING},
    "hold": {S.RETURNING},
    "reclaim": {S.HOLDING},
    "free": {S.WAITING_FOR_TOOLS},
    "retire": {S.STARTING, S.IDLE, S.LENT, S.RETURNING, S.HOLDING, S.WAITING_FOR_TOOLS},
}
REF = TurnRef(turn_id="t2", request_id=None, model="m", worker="w1", key="")


@pytest.mark.parametrize("verb", sorted(ALLOWED))
@pytest.mark.parametrize("state", list(WorkerState))
def test_every_transition_checks_the_state_it_leaves(verb: str, state: WorkerState) -> None:
    h = holder(state)
    if state is S.STARTING:
        h.up(cast(Worker, FakeWorker()))
    args: dict[str, tuple[Any, ...]] = {"lend": (REF,), "hold": ("c2",)}
    if state in ALLOWED[verb]:
        getattr(h, verb)(*args.get(verb, ()))
        assert h.state is not state or verb == "lend"
    else:
        with pytest.raises(RuntimeError, match="not "):
            getattr(h, verb)(*args.get(verb, ()))
        assert h.state is state


def test_a_start_without_its_process_cannot_be_lent_or_parked() -> None:
    for verb, args in (("lend", (REF,)), ("park", ())):
        with pytest.raises(RuntimeError, match="no process"):
            getattr(Holder(SONNET, Bus(), owned=True), verb)(*args)


def test_the_conversation_goes_with_the_state() -> None:
    h = holder(S.HOLDING)
    assert [h.conversation] == ["c1"]
    h.reclaim()
    assert h.is_in(S.RETURNING)
    assert h.conversation is None
    h.lend(REF)
    h.take_back()
    h.hold("c3")
    h.retire()
    assert h.conversation is None


async def test_events_go_to_the_bus_only_under_the_turn_lent_for() -> None:
    bus = Bus()
    subscription = bus.subscribe()
    h = Holder(SONNET, bus, owned=False)
    h.up(cast(Worker, FakeWorker()))
    h(System(subtype="before"))
    h.lend(REF)
    h(System(subtype="during"))
    h.take_back()
    h.park()
    h(System(subtype="after"))
    got = [subscription.queue.get_nowait() for _ in range(subscription.queue.qsize())]
    assert got == [(REF, System(subtype="during"))]


async def test_a_released_lease_raises_on_every_use() -> None:
    lease = Lease(cast(Worker, FakeWorker()))
    assert lease.session_id == "s1"
    assert not lease.waiting
    lease.keep("c1")
    lease.detach()
    assert lease.released
    for use in ("pid", "in_turn", "waiting", "interrupted", "turn_cost", "session_id"):
        with pytest.raises(RuntimeError, match="w1 used after it was released"):
            getattr(lease, use)
    with pytest.raises(RuntimeError):
        lease.keep("c1")
    with pytest.raises(RuntimeError):
        lease.turn([], cast(Any, None))
    with pytest.raises(RuntimeError):
        await lease.interrupt()


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    return make_settings(tmp_path, **{"idle_timeout": 10.0, "tool_wait": 5.0, "min_idle": 1, **overrides})


def test_idle_expiry_keeps_min_idle_of_warm_models_and_retires_held_conversations(tmp_path: Path) -> None:
    old, fresh = 0.0, 95.0
    warm_old, warm_older, cold = (
        holder(S.IDLE, idle_since=old + 1),
        holder(S.IDLE, idle_since=old),
        holder(S.IDLE, HAIKU),
    )
    held_old, held_fresh = holder(S.HOLDING, idle_since=old), holder(S.HOLDING, idle_since=fresh)
    waiting_long, waiting_dead = holder(S.WAITING_FOR_TOOLS, idle_since=90.0), holder(S.WAITING_FOR_TOOLS)
    cast(FakeWorker, waiting_dead.worker).alive = False
    lent = holder(S.LENT)
    every = [warm_old, warm_older, cold, held_old, held_fresh, waiting_long, waiting_dead, lent]
    decided = upkeep.expired(every, settings(tmp_path), [SONNET], now=100.0)
    assert decided == [
        (warm_older, RetireReason.IDLE),  # the oldest goes, min_idle stays
        (cold, RetireReason.IDLE),  # not a warm model: none kept
        (held_old, RetireReason.IDLE),  # retired, not rewound
        (waiting_long, upkeep.FREE),  # past tool_wait, not yet idle_timeout
        (waiting_dead, RetireReason.EXITED_IDLE),
    ]


def test_the_warm_set_starts_what_is_missing_within_max_workers(tmp_path: Path) -> None:
    warm = [SONNET, HAIKU]
    assert upkeep.shortfall([], settings(tmp_path, min_idle=2), warm) == [SONNET, SONNET, HAIKU, HAIKU]
    starting, owned = holder(S.STARTING), holder(S.STARTING, owned=True)  # a request's own start is not the warm set's
    assert upkeep.shortfall([starting, owned], settings(tmp_path, min_idle=2, max_workers=4), warm) == [SONNET, HAIKU]


def test_backoff_starts_after_repeated_failures_and_doubles() -> None:
    backoff = upkeep.Backoff()
    assert [backoff.failed("boom") for _ in range(5)] == [None, None, 1.0, 2.0, 4.0]
    assert backoff.seconds > 0
    assert backoff.last_error == "boom"
    backoff.succeeded()
    assert backoff.seconds == 0
    assert backoff.failures == 0
