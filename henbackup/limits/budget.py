"""The host's bandwidth budget, split among the jobs that may run at once.

A restic's limit is fixed when it starts, so the budget is split in advance: each of the
`max_concurrent_jobs` slots gets an equal share, and a job's limit is its own (or the
share), never above the share nor its repository's cap. However many jobs run, their limits
add up to at most the budget.
"""

from __future__ import annotations


def share(budget: int | None, slots: int) -> int | None:
    """One slot's part of the host budget (bytes/s), None without a budget."""
    if budget is None:
        return None
    return max(1, budget // max(1, slots))


def job_limit(own: int | None, budget_share: int | None, cap: int | None) -> int | None:
    """The limit a job's restic gets: the smallest of what is set."""
    limits = [limit for limit in (own, budget_share, cap) if limit is not None]
    return min(limits) if limits else None
