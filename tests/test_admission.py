"""The pool's admission queue on its own, without processes: slots under the family limit and the total, FIFO within
a key and turns between keys, the 429s (`queue_full`, `queue_timeout`) and their Retry-After, cancelled waiters at
every moment, the drain's 503, and the waits noted on the bus. Tests wait on the admitting tasks, not on clocks."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from maxproxy import errors
from maxproxy.bus import Bus, Item, QueueWait
from maxproxy.pool import admission
from maxproxy.pool.admission import Admission

LIMITS = {"sonnet": 1, "haiku": 2}


def make(
    limits: dict[str, int] | None = None,
    total: int = 8,
    queue_max: int = 16,
    queue_timeout: float = 30.0,
    bus: Bus | None = None,
) -> Admission:
    table = LIMITS if limits is None else limits
    return Admission(lambda family: table.get(family, 4), total, queue_max, queue_timeout, bus or Bus())


async def enqueue(adm: Admission, family: str, key: str = "") -> asyncio.Task[None]:
    """An admit that is waiting in the queue (admit has no await before its wait: one step gets it there)."""
    before = adm.queued
    task = asyncio.create_task(adm.admit(family, key))
    await asyncio.sleep(0)
    assert not task.done()
    assert adm.queued == before + 1
    return task


async def next_granted(pending: dict[asyncio.Task[None], str]) -> str:
    """The one waiter that got the slot just freed."""
    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1
    task = done.pop()
    task.result()
    return pending.pop(task)


async def test_slots_stay_under_the_family_limit_and_the_total() -> None:
    adm = make({"sonnet": 2, "haiku": 8}, total=3)
    await adm.admit("sonnet", "k")
    await adm.admit("sonnet", "k")
    await adm.admit("haiku", "k")
    assert (adm.busy, adm.busy_in("sonnet"), adm.busy_in("haiku")) == (3, 2, 1)
    third_sonnet = await enqueue(adm, "sonnet")  # over its family's limit
    second_haiku = await enqueue(adm, "haiku")  # within its family's limit, over the total
    assert adm.depths() == {"sonnet": 1, "haiku": 1}
    adm.release("haiku")  # frees the total: only haiku can use it, sonnet is still at its limit
    await second_haiku
    assert not third_sonnet.done()
    assert (adm.busy, adm.busy_in("sonnet"), adm.busy_in("haiku")) == (3, 2, 1)
    assert adm.depths() == {"sonnet": 1}
    adm.release("sonnet")
    await third_sonnet
    assert (adm.busy, adm.busy_in("sonnet"), adm.queued, adm.depths()) == (3, 2, 0, {})
    for family in ("sonnet", "sonnet", "haiku"):
        adm.release(family)
    assert (adm.busy, adm.busy_in("sonnet"), adm.busy_in("haiku")) == (0, 0, 0)


async def test_one_key_is_served_in_arrival_order() -> None:
    adm = make()
    await adm.admit("sonnet", "k")
    pending = {await enqueue(adm, "sonnet", "k"): name for name in ("a", "b", "c")}
    order = []
    for _ in range(3):
        adm.release("sonnet")
        # The slot is taken for the waiter as it is granted: a newcomer in the same step cannot slip in before it.
        assert adm.busy == 1
        order.append(await next_granted(pending))
    assert order == ["a", "b", "c"]
    adm.release("sonnet")
    assert adm.busy == 0


async def test_a_flooding_key_takes_turns_with_the_others() -> None:
    adm = make()
    await adm.admit("sonnet", "x")
    pending: dict[asyncio.Task[None], str] = {}
    for name in ("A1", "A2", "A3", "A4"):
        pending[await enqueue(adm, "sonnet", "A")] = name
    for name in ("B1", "B2"):
        pending[await enqueue(adm, "sonnet", "B")] = name
    order = []
    for _ in range(2):
        adm.release("sonnet")
        order.append(await next_granted(pending))
    # A key that comes late starts at the tag served last, not at zero: it waits behind the turn now due.
    pending[await enqueue(adm, "sonnet", "C")] = "C1"
    while pending:
        adm.release("sonnet")
        order.append(await next_granted(pending))
    assert order == ["A1", "B1", "A2", "B2", "C1", "A3", "A4"]
    adm.release("sonnet")
    assert (adm.busy, adm.queued) == (0, 0)


async def test_a_full_family_queue_is_429_queue_full() -> None:
    adm = make({"sonnet": 2}, queue_max=2)
    await adm.admit("sonnet", "k")
    await adm.admit("sonnet", "k")
    waiting = [await enqueue(adm, "sonnet"), await enqueue(adm, "sonnet")]
    with pytest.raises(errors.RateLimited) as caught:
        await adm.admit("sonnet", "k")
    refused = caught.value
    assert (refused.status, refused.code) == (429, "queue_full")
    assert refused.message == "Too many requests for sonnet models: 2 running, 2 waiting"
    assert refused.retry_after is not None
    assert 1 <= refused.retry_after <= 60
    assert adm.depths() == {"sonnet": 2}  # the refused request left nothing behind
    await adm.admit("haiku", "k")  # another family has its own queue
    adm.release("sonnet")
    adm.release("sonnet")
    await asyncio.gather(*waiting)
    assert (adm.busy_in("sonnet"), adm.queued) == (2, 0)


async def refusal(adm: Admission, family: str) -> float:
    with pytest.raises(errors.RateLimited) as caught:
        await adm.admit(family, "k")
    assert caught.value.retry_after is not None
    return caught.value.retry_after


async def test_retry_after_follows_the_turn_times() -> None:
    adm = make({"sonnet": 2}, queue_max=2)
    await adm.admit("sonnet", "k")
    await adm.admit("sonnet", "k")
    waiting = [await enqueue(adm, "sonnet"), await enqueue(adm, "sonnet")]
    # Three turns ahead (two queued and this one), two at a time, 5 s each before any turn was timed.
    assert await refusal(adm, "sonnet") == pytest.approx(7.5)
    adm.turn_took("sonnet", 10.0)
    assert await refusal(adm, "sonnet") == pytest.approx(15.0)
    adm.turn_took("sonnet", 20.0)  # the average moves a fifth of the way: 12 s
    assert await refusal(adm, "sonnet") == pytest.approx(18.0)
    adm.turn_took("haiku", 0.1)  # another family's turns say nothing about sonnet's
    assert await refusal(adm, "sonnet") == pytest.approx(18.0)
    adm.turn_took("sonnet", 1000.0)
    assert await refusal(adm, "sonnet") == 60.0
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)

    quick = make({"haiku": 4}, queue_max=0)
    for _ in range(4):
        await quick.admit("haiku", "k")
    quick.turn_took("haiku", 0.1)
    assert await refusal(quick, "haiku") == 1.0


async def test_a_wait_past_queue_timeout_is_429_queue_timeout() -> None:
    adm = make(queue_timeout=0.01)
    await adm.admit("sonnet", "k")
    with pytest.raises(errors.RateLimited) as caught:
        await adm.admit("sonnet", "k")
    late = caught.value
    assert (late.status, late.code, late.message) == (429, "queue_timeout", "Waited 0.01s for a sonnet slot")
    assert late.retry_after == pytest.approx(5.0)
    assert (adm.queued, adm.depths()) == (0, {})
    adm.release("sonnet")  # nobody is granted the slot on behalf of the request that left
    assert adm.busy == 0
    await adm.admit("sonnet", "k")
    assert adm.busy == 1


async def test_a_slot_granted_as_the_wait_times_out_is_used() -> None:
    # With no time to wait, the waiter's timeout is due in the very step that queued it; a release in that step,
    # still ahead of the timeout, grants the slot before the waiter runs again: it sees its timeout with the slot
    # already taken for it.
    adm = make(queue_timeout=0)
    await adm.admit("sonnet", "k")
    waiter = await enqueue(adm, "sonnet")
    adm.release("sonnet")
    await waiter  # no 429: the slot is used
    assert (adm.busy, adm.queued) == (1, 0)
    adm.release("sonnet")
    assert adm.busy == 0


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    adm = make()
    await adm.admit("sonnet", "k")
    gone, next_one = await enqueue(adm, "sonnet"), await enqueue(adm, "sonnet")
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert gone.cancelled()
    assert (adm.queued, adm.depths()) == (1, {"sonnet": 1})
    adm.release("sonnet")
    await next_one
    assert (adm.busy, adm.queued, adm.depths()) == (1, 0, {})
    adm.release("sonnet")
    assert adm.busy == 0


async def test_a_waiter_cancelled_as_a_slot_frees_leaves_no_trace() -> None:
    adm = make()
    await adm.admit("sonnet", "k")
    gone, next_one = await enqueue(adm, "sonnet"), await enqueue(adm, "sonnet")
    # Cancelled and passed over in the same step, before its task could clean up after itself.
    gone.cancel()
    adm.release("sonnet")
    await next_one
    await asyncio.gather(gone, return_exceptions=True)
    assert gone.cancelled()
    assert (adm.busy, adm.queued, adm.depths()) == (1, 0, {})
    adm.release("sonnet")
    assert adm.busy == 0


async def test_a_waiter_cancelled_after_its_grant_passes_the_slot_on() -> None:
    adm = make()
    await adm.admit("sonnet", "k")
    granted, next_one = await enqueue(adm, "sonnet"), await enqueue(adm, "sonnet")
    adm.release("sonnet")  # `granted` has the slot but has not run yet
    granted.cancel()
    await asyncio.gather(granted, return_exceptions=True)
    assert granted.cancelled()
    await next_one
    assert (adm.busy, adm.queued) == (1, 0)
    adm.release("sonnet")
    assert (adm.busy, adm.busy_in("sonnet")) == (0, 0)


async def test_drain_refuses_queued_and_new_requests() -> None:
    adm = make({"sonnet": 1, "haiku": 8}, total=1)
    await adm.admit("sonnet", "k")
    queued = [await enqueue(adm, "sonnet"), await enqueue(adm, "haiku")]
    before = adm.draining
    adm.drain()
    assert (before, adm.draining) == (False, True)
    assert (adm.queued, adm.depths()) == (0, {})
    for outcome in await asyncio.gather(*queued, return_exceptions=True):
        assert isinstance(outcome, errors.Unavailable)
        assert (outcome.status, outcome.code, outcome.retry_after) == (503, "service_unavailable", 5)
        assert outcome.message == "maxproxy is shutting down"
    adm.release("sonnet")  # the turn in flight finishes
    with pytest.raises(errors.Unavailable, match="shutting down"):
        await adm.admit("haiku", "k")  # free slots or not
    assert (adm.busy, adm.queued) == (0, 0)


async def test_queue_waits_reach_bus_listeners(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(admission, "time", SimpleNamespace(monotonic=lambda: clock.now))
    bus = Bus()
    heard: list[Item] = []
    bus.listen(heard.append)
    adm = make(queue_max=1, bus=bus)
    await adm.admit("sonnet", "k")
    waiter = await enqueue(adm, "sonnet")
    with pytest.raises(errors.RateLimited):
        await adm.admit("sonnet", "k")  # refused: it never waited
    clock.now = 102.5
    adm.release("sonnet")
    await waiter
    assert heard == [QueueWait("sonnet", 0.0), QueueWait("sonnet", 2.5)]


async def test_a_release_without_a_slot_changes_nothing() -> None:
    adm = make({"sonnet": 1, "haiku": 8}, total=1)
    adm.release("sonnet")
    assert (adm.busy, adm.busy_in("sonnet")) == (0, 0)
    await adm.admit("sonnet", "k")
    waiter = await enqueue(adm, "haiku")  # waits for the total
    adm.release("haiku")  # haiku holds nothing: counting it would let the waiter in over the total
    assert (adm.busy, adm.busy_in("haiku"), adm.queued) == (1, 0, 1)
    adm.release("sonnet")
    await waiter
    adm.release("haiku")
    adm.release("haiku")
    assert (adm.busy, adm.busy_in("sonnet"), adm.busy_in("haiku")) == (0, 0, 0)
