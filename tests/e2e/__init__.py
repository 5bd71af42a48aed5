"""End-to-end tests: real clients → maxproxy → the real pinned CLI → the fake upstream on loopback."""

from __future__ import annotations

from typing import TYPE_CHECKING

from openai.types.chat import ChatCompletionMessageParam

if TYPE_CHECKING:
    from maxproxy.pool import Pool

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"


def quiet(pool: Pool) -> bool:
    """Nothing lent, taken back, started or stopped: every process the pool has is one it lists (a start under way
    has a process the pool does not list yet)."""
    return pool.busy == 0 and not pool._returns and not pool._stopping and not pool.starting
