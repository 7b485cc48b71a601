"""From `resources` to the values the kernel is given: pure arithmetic, one place.

cgroup v1 values use systemd's own mapping (src/basic/cgroup-util.h), so that a weight means
what it means in a unit file: CPUWeight → cpu.shares = weight * 1024 / 100 (clamped to
2..262144), IOWeight → blkio.weight = weight * 500 / 100 (clamped to 10..1000), CPUQuota →
cpu.cfs_quota_us over a cfs_period_us of 100 ms.
"""

from __future__ import annotations

import math

from henbackup.config.model import Resources

CPU_PERIOD_USEC = 100_000  # systemd's CGROUP_CPU_QUOTA_DEFAULT_PERIOD_USEC
CPU_QUOTA_MIN_USEC = 1000  # the kernel refuses a quota below 1 ms

# Which controller each key needs, by layout; nice and ionice need none.
V2_CONTROLLER = {"cpu_weight": "cpu", "cpu_quota": "cpu", "io_weight": "io", "memory_max": "memory"}
V1_CONTROLLER = {
    "cpu_weight": "cpu",
    "cpu_quota": "cpu",
    "io_weight": "blkio",
    "memory_max": "memory",
}
CGROUP_KEYS = tuple(V2_CONTROLLER)
IONICE_CLASSES = {"realtime": 1, "best-effort": 2, "idle": 3}


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def cpu_shares(weight: int) -> int:
    """systemd's cgroup_cpu_weight_to_shares: 100 → 1024, 20 → 204."""
    return _clamp(weight * 1024 // 100, 2, 262144)


def blkio_weight(weight: int) -> int:
    """systemd's cgroup_weight_io_to_blkio: 100 → 500, 20 → 100."""
    return _clamp(weight * 500 // 100, 10, 1000)


def bfq_weight(weight: int) -> int:
    """systemd's BFQ_WEIGHT: 1..100 stay, 100..10000 → 100..1000 (BFQ's own range)."""
    return weight if weight <= 100 else 100 + (weight - 100) * 900 // 9900


def quota_usec(fraction: float) -> int:
    """CPU time per CPU_PERIOD_USEC for `fraction` of one CPU (0.5 → 50000)."""
    return max(CPU_QUOTA_MIN_USEC, round(fraction * CPU_PERIOD_USEC))


def v2_values(resources: Resources) -> dict[str, dict[str, str]]:
    """Key → {file in the leaf: value} on cgroup v2 (only the keys that are set).

    io_weight is written to io.weight and, where the disk's scheduler is BFQ (whose file
    only exists then), to io.bfq.weight, as systemd does."""
    values: dict[str, dict[str, str]] = {}
    if resources.cpu_weight is not None:
        values["cpu_weight"] = {"cpu.weight": str(resources.cpu_weight)}
    if resources.cpu_quota is not None:
        values["cpu_quota"] = {"cpu.max": f"{quota_usec(resources.cpu_quota)} {CPU_PERIOD_USEC}"}
    if resources.io_weight is not None:  # io.weight counts with io.cost, BFQ's its own
        values["io_weight"] = {
            "io.weight": f"default {resources.io_weight}",
            "io.bfq.weight": str(bfq_weight(resources.io_weight)),
        }
    if resources.memory_max is not None:
        values["memory_max"] = {"memory.max": str(resources.memory_max)}
    return values


def v1_values(resources: Resources) -> dict[str, dict[str, str]]:
    """Key → {file in the controller's leaf: value} on cgroup v1 (systemd's arithmetic).

    io_weight names blkio.weight; the BFQ scheduler's blkio.bfq.weight is used where only
    that one exists (see cgroups.V1Leaf)."""
    values: dict[str, dict[str, str]] = {}
    if resources.cpu_weight is not None:
        values["cpu_weight"] = {"cpu.shares": str(cpu_shares(resources.cpu_weight))}
    if resources.cpu_quota is not None:
        values["cpu_quota"] = {
            "cpu.cfs_period_us": str(CPU_PERIOD_USEC),
            "cpu.cfs_quota_us": str(quota_usec(resources.cpu_quota)),
        }
    if resources.io_weight is not None:
        values["io_weight"] = {"blkio.weight": str(blkio_weight(resources.io_weight))}
    if resources.memory_max is not None:
        values["memory_max"] = {"memory.limit_in_bytes": str(resources.memory_max)}
    return values


def gomaxprocs(resources: Resources) -> int | None:
    """GOMAXPROCS for restic under a CPU quota: the CPUs it may use, rounded up (Go before
    1.25 does not read cgroup quotas, and runs one thread per core into the throttle)."""
    if resources.cpu_quota is None:
        return None
    return max(1, math.ceil(resources.cpu_quota))


def ioprio(resources: Resources) -> int | None:
    """The ioprio_set value for `ionice`: the class, and the level the kernel derives from
    the nice value when none is given ((nice + 20) / 5; idle has no level)."""
    if resources.ionice is None:
        return None
    klass = IONICE_CLASSES[resources.ionice]
    level = 0 if resources.ionice == "idle" else ((resources.nice or 0) + 20) // 5
    return klass << 13 | level
