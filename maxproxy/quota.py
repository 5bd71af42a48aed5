"""Per-key quotas: which models a key may use, how many of its requests may be in flight (`max_concurrent`), how
many may start per minute (`rpm`), and how many tokens it may use per UTC day and per 7 days (`daily_tokens`,
`weekly_tokens`). Every answer to a key with limits carries OpenAI's `x-ratelimit-*` headers (limit, remaining and
reset of requests and tokens), so the OpenAI SDKs back off on their own; a key over a limit gets 429 with
`Retry-After` and the same headers, none remaining of the limit it hit (a `max_concurrent` 429 gives that limit as the
requests one). Fair sharing between keys inside each model's concurrency limit is the pool's (`Pool._grant`).
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator

from maxproxy import errors
from maxproxy.keys import Key
from maxproxy.usage import Ledger, seconds_to_midnight

WINDOW = 60.0  # rpm's window


def duration(seconds: float) -> str:
    """OpenAI's reset format: "450ms", "12s", "6m0s", "2h3m4s"."""
    if round(seconds * 1000) < 1000:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = int(seconds + 0.999)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


class Quotas:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._starts: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)

    def check_model(self, key: Key, model: str) -> None:
        if key.models is not None and model not in key.models:
            raise errors.Forbidden(
                f"The API key {key.name!r} may not use the model {model!r}", param="model", code="model_not_allowed"
            )

    def _recent(self, key: Key, now: float) -> collections.deque[float]:
        starts = self._starts[key.name]
        while starts and now - starts[0] >= WINDOW:
            starts.popleft()
        return starts

    def headers(self, key: Key, now: float | None = None) -> dict[str, str]:
        """The key's x-ratelimit-* state (only for the limits it has)."""
        now = time.monotonic() if now is None else now
        out: dict[str, str] = {}
        if key.rpm is not None:
            starts = self._recent(key, now)
            out["x-ratelimit-limit-requests"] = str(key.rpm)
            out["x-ratelimit-remaining-requests"] = str(max(0, key.rpm - len(starts)))
            out["x-ratelimit-reset-requests"] = duration(WINDOW - (now - starts[0]) if starts else 0.0)
        budget = self._budget(key)
        if budget is not None:
            limit, remaining, reset = budget
            out["x-ratelimit-limit-tokens"] = str(limit)
            out["x-ratelimit-remaining-tokens"] = str(remaining)
            out["x-ratelimit-reset-tokens"] = duration(reset)
        return out

    def _budget(self, key: Key) -> tuple[int, int, float] | None:
        """(limit, remaining, seconds to the next reset) of the tighter token budget, if the key has one. Both
        windows move at UTC midnight (the weekly one drops its oldest day then)."""
        budgets = []
        if key.daily_tokens is not None:
            budgets.append((key.daily_tokens, key.daily_tokens - self.ledger.spent(key.name, 1)))
        if key.weekly_tokens is not None:
            budgets.append((key.weekly_tokens, key.weekly_tokens - self.ledger.spent(key.name, 7)))
        if not budgets:
            return None
        limit, remaining = min(budgets, key=lambda b: b[1])
        return limit, max(0, remaining), seconds_to_midnight()

    @contextlib.contextmanager
    def admit(self, key: Key) -> Iterator[dict[str, str]]:
        """One request of `key` in flight; yields the headers its answer carries. Raises 429 when over a limit."""
        now = time.monotonic()
        if key.max_concurrent is not None and self._in_flight[key.name] >= key.max_concurrent:
            # No request's end can be foreseen: a second is the estimate. The request headers name the limit that
            # refused this one (the rpm's own state would say requests remain, which is not so now).
            retry_after = 1.0
            raise errors.RateLimited(
                f"The API key {key.name!r} has {key.max_concurrent} requests in flight, its `max_concurrent`",
                retry_after=retry_after,
                code="key_concurrency_limit",
                headers={
                    **self.headers(key, now),
                    "x-ratelimit-limit-requests": str(key.max_concurrent),
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": duration(retry_after),
                },
            )
        if key.rpm is not None:
            starts = self._recent(key, now)
            if len(starts) >= key.rpm:
                raise errors.RateLimited(
                    f"The API key {key.name!r} made {key.rpm} requests in the last minute, its `rpm`",
                    retry_after=WINDOW - (now - starts[0]),
                    code="key_rate_limit",
                    headers=self.headers(key, now),
                )
        budget = self._budget(key)
        if budget is not None and budget[1] <= 0:
            raise errors.RateLimited(
                f"The API key {key.name!r} used its token budget ({budget[0]} tokens); it resets at 00:00 UTC",
                retry_after=budget[2],
                code="key_token_budget",
                headers=self.headers(key, now),
            )
        if key.rpm is not None:
            self._starts[key.name].append(now)
        self._in_flight[key.name] += 1
        try:
            yield self.headers(key, now)
        finally:
            self._in_flight[key.name] -= 1
            if not self._in_flight[key.name]:
                del self._in_flight[key.name]
