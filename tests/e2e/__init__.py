"""End-to-end tests: real clients → maxproxy → the real pinned CLI → the fake upstream on loopback."""

from __future__ import annotations

from typing import TYPE_CHECKING

from openai.types.chat import ChatCompletionMessageParam

if TYPE_CHECKING:
    from maxproxy.claude.worker import Worker
    from maxproxy.pool import Pool

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"


def quiet(pool: Pool) -> bool:
    """Nothing lent, taken back, started or stopped: every process the pool has is one it lists (a start under way
    has a process the pool does not list yet)."""
    return pool.settled


def holding(pool: Pool) -> list[Worker]:
    """The workers keeping a conversation (or its turn waiting for tool results) between turns."""
    return [h.worker for h in pool.workers() if h.conversation is not None]


def live_workers(pool: Pool) -> list[Worker]:
    """Every live worker: idle, lent, being taken back or holding a conversation."""
    return [h.worker for h in pool.workers()]
