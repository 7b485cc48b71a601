"""cgroup v2 code on a directory tree laid out as the kernel lays out a delegated cgroup.

This machine's unified mount has no controllers, so the tree is made of plain files: the
kernel's own semantics (cgroup.procs moving a process, subtree_control reading back without
"+", removing a directory with its interface files) are stood in for, and each test says
where. The files and values written are exactly those the kernel would get.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from henbackup.config.model import Resources
from henbackup.limits import cgroups, mapping
from henbackup.limits.place import Placement, problems

SERVICE = "system.slice/henbackup.service"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup"
    service = root / SERVICE
    service.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (service / "cgroup.controllers").write_text("cpu io memory pids\n")
    (service / "cgroup.subtree_control").write_text("")
    (service / "cgroup.procs").write_text("4242\n")
    os.setxattr(service, "trusted.delegate", b"1")  # as systemd marks it for Delegate=yes
    return root


def proc_file(tmp_path: Path, path: str) -> Path:
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(f"0::/{path}\n")
    return proc


def test_the_master_moves_into_a_leaf_and_hands_the_controllers_down(tree, tmp_path):
    assert cgroups.prepare_v2(tree, proc_file(tmp_path, SERVICE)) is None
    service = tree / SERVICE
    assert (service / "daemon" / "cgroup.procs").read_text() == "4242"
    assert (service / "cgroup.subtree_control").read_text() == "+cpu +io +memory"


@pytest.mark.parametrize("keep_sys_admin", [True, False])
def test_delegation_is_read_without_cap_sys_admin_too(tmp_path, keep_sys_admin):
    """The unit's CapabilityBoundingSet leaves CAP_SYS_ADMIN out, which hides trusted.*
    attributes: systemd 251+ marks a delegated cgroup with user.delegate as well."""
    service = tmp_path / "service"
    service.mkdir()
    os.setxattr(service, "trusted.delegate", b"1")
    os.setxattr(service, "user.delegate", b"1")
    drop = [] if keep_sys_admin else ["setpriv", "--bounding-set=-sys_admin", "--"]
    code = f"from henbackup.limits import cgroups; print(cgroups._delegated({str(service)!r}))"
    said = subprocess.run([*drop, sys.executable, "-c", code], capture_output=True, text=True)
    assert said.stdout == "True\n", said.stderr
    os.removexattr(service, "user.delegate")
    said = subprocess.run([*drop, sys.executable, "-c", code], capture_output=True, text=True)
    assert said.stdout == ("True\n" if keep_sys_admin else "False\n"), said.stderr


def test_prepared_once_a_child_finds_the_service_cgroup(tree, tmp_path):
    (tree / SERVICE / "daemon").mkdir()
    (tree / SERVICE / "cgroup.subtree_control").write_text("cpu io memory\n")  # as read back
    host = cgroups.detect(tree, proc_file(tmp_path, f"{SERVICE}/daemon"))
    assert host == cgroups.Host("v2", {"": tree / SERVICE}, {})
    assert problems(Resources(cpu_weight=20, memory_max=1 << 20), host) == {}


def test_a_controller_not_handed_down_is_a_problem_with_its_reason(tree, tmp_path):
    (tree / SERVICE / "cgroup.subtree_control").write_text("cpu memory\n")
    host = cgroups.detect(tree, proc_file(tmp_path, f"{SERVICE}/daemon"))
    assert problems(Resources(io_weight=20, cpu_weight=20), host) == {
        "io_weight": f"controller io is not enabled for cgroup {SERVICE}"
    }


def test_a_cgroup_that_is_not_delegated_is_left_alone(tree, tmp_path):
    scope = tree / "user.slice" / "session-3.scope"  # henbackup run by hand, as root
    scope.mkdir(parents=True)
    (scope / "cgroup.procs").write_text("17\n")
    proc = proc_file(tmp_path, "user.slice/session-3.scope")
    reason = (
        "cgroup /user.slice/session-3.scope is not delegated to henbackup "
        "(run by systemd, Delegate=yes)"
    )
    assert cgroups.prepare_v2(tree, proc) == reason
    assert sorted(p.name for p in scope.iterdir()) == ["cgroup.procs"]  # untouched
    host = cgroups.detect(tree, proc)
    assert host.layout == "none"
    assert problems(Resources(memory_max=1 << 20), host) == {"memory_max": reason}


def test_a_leaf_left_by_a_killed_job_of_the_same_pid_is_made_afresh(tree, tmp_path):
    """Its job process was killed (its leaf stayed) and its pid is reused: the leaf is
    thawed and removed, so that the new job neither starts frozen nor keeps old limits.
    (On this fake tree its files keep it from going: it is thawed at least.)"""
    host = cgroups.detect(tree, proc_file(tmp_path, f"{SERVICE}/daemon"))
    stale = tree / SERVICE / "job-4242"
    stale.mkdir()
    (stale / "cgroup.freeze").write_text("1")
    leaf, failed = cgroups.make_leaf(host, "job-4242", {})
    assert (leaf, failed) == (cgroups.Leaf("v2", {"": stale}), {})
    assert (stale / "cgroup.freeze").read_text() == "0"


def test_with_bfq_the_io_weight_is_bfq_s_too(tree, tmp_path):
    """io.weight counts only with io.cost on; BFQ, where it is the disk's scheduler, reads
    io.bfq.weight (a file of every leaf then), as systemd writes it."""
    (tree / SERVICE / "cgroup.subtree_control").write_text("io\n")
    host = cgroups.detect(tree, proc_file(tmp_path, f"{SERVICE}/daemon"))
    (tree / SERVICE / "job-78").mkdir()
    (tree / SERVICE / "job-78" / "io.bfq.weight").write_text("default 100\n")
    values = mapping.v2_values(Resources(io_weight=1000))
    _, failed = cgroups.make_leaf(host, "job-78", values)
    assert failed == {}
    assert (tree / SERVICE / "job-78" / "io.bfq.weight").read_text() == "181"


def test_the_leaf_gets_exactly_the_files_and_values_and_goes_away(tree, tmp_path):
    (tree / SERVICE / "cgroup.subtree_control").write_text("cpu io memory\n")
    host = cgroups.detect(tree, proc_file(tmp_path, f"{SERVICE}/daemon"))
    resources = Resources(cpu_weight=20, io_weight=30, cpu_quota=0.5, memory_max=256 << 20)
    from henbackup.limits.mapping import v2_values

    leaf, failed = cgroups.make_leaf(host, "job-77", v2_values(resources))
    assert failed == {}
    directory = tree / SERVICE / "job-77"
    assert leaf == cgroups.Leaf("v2", {"": directory})
    written = {path.name: path.read_text() for path in directory.iterdir()}
    assert written == {
        "cpu.weight": "20",
        "cpu.max": "50000 100000",
        "io.weight": "default 30",
        "memory.max": "268435456",
    }
    leaf.enter()  # the kernel would move us; here the pid is what is written
    assert (directory / "cgroup.procs").read_text() == str(os.getpid())
    for path in directory.iterdir():  # interface files vanish with the directory in cgroupfs
        path.unlink()
    leaf.remove()
    assert not directory.exists()


def test_usage_and_the_memory_kill_reason(tree):
    directory = tree / SERVICE / "job-1"
    directory.mkdir()
    leaf = cgroups.Leaf("v2", {"": directory})
    (directory / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\n")
    (directory / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
    (directory / "io.stat").write_text("8:0 rbytes=100 wbytes=20 rios=1 wios=1\n8:16 rbytes=5\n")
    (directory / "memory.peak").write_text("5000000\n")
    seen = []

    def send(kind, message, **fields):
        seen.append((kind, message, fields))

    placement = Placement("pictures", Resources(memory_max=256 << 20), send, leaf)
    placement.emit("job.started", "pictures→r: backup started", job="j1")
    (directory / "cpu.stat").write_text("usage_usec 4000000\n")
    (directory / "memory.events").write_text("oom 1\noom_kill 1\n")
    killed = "restic killed by SIGKILL"
    placement.emit("job.failed", f"pictures→r: backup failed: {killed}", job="j1", error=killed)
    _, message, fields = seen[-1]
    reason = "restic was killed by the memory limit of pictures (memory_max = 256M)"
    assert message == f"pictures→r: backup failed: {reason}"
    assert fields == {
        "job": "j1",
        "limits": "memory_max=256M",
        "cpu_sec": 2.5,
        "memory_peak": 5000000,
        "read_bytes": 0,
        "written_bytes": 0,
        "error": reason,
    }
    assert placement.explain(killed) == reason  # what `henbackup backup` prints
    assert placement.explain("other") == "other"


def test_a_value_the_kernel_refuses_is_named_by_its_key(tree, tmp_path):
    (tree / SERVICE / "cgroup.subtree_control").write_text("cpu io memory\n")
    host = cgroups.detect(tree, proc_file(tmp_path, f"{SERVICE}/daemon"))
    (tree / SERVICE / "job-5" / "memory.max").mkdir(parents=True)  # stands in for EINVAL
    leaf, failed = cgroups.make_leaf(host, "job-5", {"memory_max": {"memory.max": "1"}})
    assert leaf is not None
    path = tree / SERVICE / "job-5" / "memory.max"
    assert failed == {"memory_max": f"cannot write '1' to {path}: Is a directory"}


def test_the_leaves_of_killed_job_processes_are_swept(tree, tmp_path):
    (tree / SERVICE / "cgroup.subtree_control").write_text("cpu io memory\n")
    host = cgroups.detect(tree, proc_file(tmp_path, f"{SERVICE}/daemon"))
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no process has now
    for pid in (gone.pid, os.getpid()):
        (tree / SERVICE / f"job-{pid}").mkdir()
    (tree / SERVICE / "daemon").mkdir()
    assert cgroups.sweep(host) == [tree / SERVICE / f"job-{gone.pid}"]
    left = sorted(p.name for p in (tree / SERVICE).iterdir() if p.is_dir())
    assert left == ["daemon", f"job-{os.getpid()}"]
