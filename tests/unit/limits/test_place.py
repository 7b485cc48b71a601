"""What check-config and the start-up warnings say about a host's cgroups."""

from datetime import UTC, datetime
from pathlib import Path

from henbackup.config.load import load_config
from henbackup.config.plan import describe_plan
from henbackup.limits.cgroups import Host
from henbackup.limits.place import config_problems, host_report

NO_BLKIO = "the I/O scheduler offers no blkio weight (CFQ or BFQ needed)"
V1 = Host(
    "v1",
    {"cpu": Path("/sys/fs/cgroup/cpu"), "memory": Path("/sys/fs/cgroup/memory")},
    {"blkio": NO_BLKIO},
)


def config(tmp_path: Path):
    path = tmp_path / "henbackup.toml"
    path.write_text(
        '[repositories.r]\nlocation = "/srv/r"\npassword = "x"\n'
        'resources = { memory_max = "512M", io_weight = 10 }\n'
        '[backups.pictures]\npaths = ["/a"]\nrepositories = ["r"]\n'
        "resources = { cpu_weight = 20, io_weight = 20, nice = 10 }\n"
        '[backups.plain]\npaths = ["/b"]\nrepositories = ["r"]\n'
    )
    return load_config(path)


def test_every_limit_this_host_cannot_apply_is_named_with_its_owner_and_reason(tmp_path):
    assert config_problems(config(tmp_path), V1) == [
        ("backup", "pictures", "io_weight", NO_BLKIO),
        ("repository", "r", "io_weight", NO_BLKIO),
    ]


def test_check_config_says_how_each_limit_is_honoured(tmp_path):
    assert host_report(config(tmp_path), V1).splitlines() == [
        "Limits on this host (cgroup layout: v1)",
        f"  pictures: cpu_weight: cpu.shares 204; io_weight: not here ({NO_BLKIO}); nice: yes",
        f"  r: io_weight: not here ({NO_BLKIO}); memory_max: memory.limit_in_bytes 536870912",
    ]


def test_without_cgroups_only_nice_and_ionice_hold(tmp_path):
    why = "no cgroup hierarchy at /sys/fs/cgroup"
    none = Host("none", missing={"cpu": why, "io": why, "memory": why})
    assert [(o, k) for _, o, k, _ in config_problems(config(tmp_path), none)] == [
        ("pictures", "cpu_weight"),
        ("pictures", "io_weight"),
        ("r", "io_weight"),
        ("r", "memory_max"),
    ]


def test_the_plan_shows_a_repositorys_resources(tmp_path):
    plan = describe_plan(config(tmp_path), datetime(2026, 1, 1, tzinfo=UTC))
    repository = plan[plan.index("Repository r") :].split("\n\n")[0]
    assert "  resources       io_weight 10, memory_max 512 MiB" in repository.splitlines()
