"""The worker pool: admission (a fair, bounded queue per model family), a holder per CLI worker (its one state, its
conversation, its fitness and reset), upkeep and the pid registry. `async with pool.acquire(...) as lease` is the one
way in."""

from maxproxy.pool.holder import Holder, RetireReason, WorkerState
from maxproxy.pool.lease import Lease, ResumeFailed
from maxproxy.pool.pool import Pool

__all__ = ["Holder", "Lease", "Pool", "ResumeFailed", "RetireReason", "WorkerState"]
