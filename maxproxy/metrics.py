"""`GET /metrics` in the Prometheus text format (prometheus-client, one registry per app): requests by model, key and
status; time to first token and request duration; queue depth and wait; workers by state; worker starts, recycles
and crashes; tokens and cost by key and model; the subscription breaker; the plan's windows (utilization and reset
time) and extra usage. Counters and histograms are updated as requests end; the pool's, the breaker's and the plan's
state is read when the metrics are scraped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from maxproxy.breaker import Breaker
from maxproxy.bus import Item, QueueWait, TurnSettled
from maxproxy.plan import Plan
from maxproxy.pool import Pool

if TYPE_CHECKING:
    from maxproxy.state import Access

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, models: set[str]) -> None:
        self.models = models  # label values come from this set only: a client cannot grow the label space
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "maxproxy_requests",
            "Requests that ran a turn (chat completions and responses), answered",
            ["model", "key", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "maxproxy_time_to_first_token_seconds",
            "Streaming requests: time to the first token (or tool call)",
            ["model"],
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.duration = Histogram(
            "maxproxy_request_duration_seconds",
            "Chat completion requests: time to the whole answer",
            ["model"],
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.queue_wait = Histogram(
            "maxproxy_queue_wait_seconds",
            "Time a request waited for a concurrency slot",
            ["family"],
            buckets=(0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.tokens = Counter("maxproxy_tokens", "Tokens used", ["key", "model", "kind"], registry=r)
        self.cost = Counter("maxproxy_cost_usd", "Cost as the CLI reports it", ["key", "model"], registry=r)

    def request(self, access: Access, status: int, seconds: float) -> None:
        model = access.model if access.model in self.models else "other"
        self.requests.labels(model, access.key_name or "local", str(status)).inc()
        if status < 400:
            self.duration.labels(model).observe(seconds)
            if access.ttft_ms is not None:
                self.ttft.labels(model).observe(access.ttft_ms / 1000)

    def observe(self, item: Item) -> None:
        """A bus listener: what the pool and the turns report as it happens."""
        if isinstance(item, QueueWait):
            self.queue_wait.labels(item.family).observe(item.seconds)
        elif isinstance(item, TurnSettled) and item.spent:
            self._used(item)

    def _used(self, turn: TurnSettled) -> None:
        key, model = turn.key, turn.model if turn.model in self.models else "other"
        self.tokens.labels(key, model, "input").inc(turn.input_tokens)
        self.tokens.labels(key, model, "cached").inc(turn.cached_tokens)
        self.tokens.labels(key, model, "output").inc(turn.output_tokens)
        self.cost.labels(key, model).inc(turn.cost_usd)

    def watch(self, pool: Pool, breaker: Breaker, plan: Plan) -> None:
        """Read the pool's, the breaker's and the plan's state at every scrape."""
        self.registry.register(_State(pool, breaker, plan))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _State(Collector):
    def __init__(self, pool: Pool, breaker: Breaker, plan: Plan) -> None:
        self.pool = pool
        self.breaker = breaker
        self.plan = plan

    def collect(self) -> Iterator[Metric]:
        pool = self.pool
        workers = GaugeMetricFamily("maxproxy_workers", "CLI worker processes by state", labels=["state"])
        for state, count in pool.states().items():
            workers.add_metric([state], count)
        yield workers
        depth = GaugeMetricFamily("maxproxy_queue_depth", "Requests waiting for a slot", labels=["family"])
        for family, count in pool.queue_depths().items():
            depth.add_metric([family], count)
        yield depth
        yield CounterMetricFamily("maxproxy_workers_started", "CLI workers started", value=pool.counts["spawned"])
        yield CounterMetricFamily(
            "maxproxy_worker_start_failures", "CLI workers that failed to start", value=pool.counts["start_failed"]
        )
        yield CounterMetricFamily(
            "maxproxy_worker_crashes", "CLI workers that died on their own", value=pool.counts["retired:crashed"]
        )
        recycles = CounterMetricFamily("maxproxy_worker_recycles", "CLI workers stopped, by reason", labels=["reason"])
        for name, count in pool.counts.items():
            if name.startswith("retired:"):
                recycles.add_metric([name.removeprefix("retired:")], count)
        yield recycles
        open_now = {trip.scope for trip in self.breaker.state()}
        breaker = GaugeMetricFamily(
            "maxproxy_breaker_open", "1 while the subscription breaker is open for a scope", labels=["scope"]
        )
        for scope in sorted(open_now | {"all", "opus", "sonnet", "haiku"}):
            breaker.add_metric([scope], 1 if scope in open_now else 0)
        yield breaker
        yield CounterMetricFamily("maxproxy_breaker_trips", "Times the breaker opened", value=self.breaker.trips)
        yield from self._plan()
        yield CounterMetricFamily(
            "maxproxy_bus_dropped", "Event bus items lost to a full subscriber queue", value=pool.bus.dropped
        )

    def _plan(self) -> Iterator[Metric]:
        """Only the windows known now (label values come from the CLI's plan, not from clients)."""
        windows = self.plan.current()
        used = GaugeMetricFamily(
            "maxproxy_plan_utilization", "The plan's window used, as a fraction (1 = its limit)", labels=["window"]
        )
        resets = GaugeMetricFamily(
            "maxproxy_plan_resets_at_seconds", "When the plan's window resets (Unix time)", labels=["window"]
        )
        for window in windows:
            if window.utilization is not None:
                used.add_metric([window.name], window.utilization)
            if window.resets_at is not None:
                resets.add_metric([window.name], window.resets_at)
        yield used
        yield resets
        yield GaugeMetricFamily(
            "maxproxy_plan_extra_usage_in_use",
            "1 while answers are billed as extra usage",
            value=int(bool(self.plan.overage.in_use)),
        )
