"""The values the kernel is given for `resources`: systemd's arithmetic on cgroup v1."""

import pytest

from henbackup.config.model import Resources
from henbackup.limits import mapping


@pytest.mark.parametrize(
    ("weight", "shares"), [(100, 1024), (20, 204), (1, 10), (10000, 102400), (50, 512)]
)
def test_cpu_weight_to_shares_as_systemd_maps_it(weight, shares):
    assert mapping.cpu_shares(weight) == shares


@pytest.mark.parametrize(
    ("weight", "blkio"), [(100, 500), (20, 100), (1, 10), (10000, 1000), (200, 1000)]
)
def test_io_weight_to_blkio_weight_as_systemd_maps_it(weight, blkio):
    assert mapping.blkio_weight(weight) == blkio


@pytest.mark.parametrize(
    ("weight", "bfq"), [(1, 1), (30, 30), (100, 100), (1000, 181), (10000, 1000)]
)
def test_io_weight_to_bfq_weight_as_systemd_maps_it(weight, bfq):
    assert mapping.bfq_weight(weight) == bfq


def test_v1_values_for_every_key():
    resources = Resources(cpu_weight=20, io_weight=20, cpu_quota=0.5, memory_max=256 << 20)
    assert mapping.v1_values(resources) == {
        "cpu_weight": {"cpu.shares": "204"},
        "cpu_quota": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000"},
        "io_weight": {"blkio.weight": "100"},
        "memory_max": {"memory.limit_in_bytes": "268435456"},
    }


def test_v2_values_for_every_key():
    resources = Resources(cpu_weight=20, io_weight=30, cpu_quota=1.5, memory_max=1 << 30)
    assert mapping.v2_values(resources) == {
        "cpu_weight": {"cpu.weight": "20"},
        "cpu_quota": {"cpu.max": "150000 100000"},
        "io_weight": {"io.weight": "default 30", "io.bfq.weight": "30"},
        "memory_max": {"memory.max": "1073741824"},
    }


def test_nothing_set_writes_nothing():
    assert mapping.v1_values(Resources()) == {} == mapping.v2_values(Resources())


@pytest.mark.parametrize(("quota", "procs"), [(None, None), (0.5, 1), (1.0, 1), (1.5, 2)])
def test_gomaxprocs_follows_the_quota(quota, procs):
    assert mapping.gomaxprocs(Resources(cpu_quota=quota)) == procs


@pytest.mark.parametrize(
    ("ionice", "nice", "value"),
    [
        (None, 10, None),
        ("idle", 10, 3 << 13),
        ("best-effort", None, 2 << 13 | 4),  # the kernel's level for nice 0
        ("best-effort", 19, 2 << 13 | 7),
        ("realtime", -20, 1 << 13 | 0),
    ],
)
def test_ioprio_class_and_level(ionice, nice, value):
    assert mapping.ioprio(Resources(ionice=ionice, nice=nice)) == value
