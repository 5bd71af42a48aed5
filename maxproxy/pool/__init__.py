"""The worker pool: admission (a fair, bounded queue per model family), the CLI workers' life cycle, conversations
held between turns, upkeep and the pid registry. `async with pool.acquire(...) as lease` is the one way in."""

from maxproxy.pool.pool import Lease, Pool, ResumeFailed

__all__ = ["Lease", "Pool", "ResumeFailed"]
