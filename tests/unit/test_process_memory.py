"""Forking keeps memory shared: the parent's objects are frozen out of every collection
before a fork and stay so, in the parent as in the child (a collection writes into every
object it looks at, which would give each worker a private copy of the master's pages).

Run in a process of its own: freezing is for the life of the process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

DIRECTORIES = ("RUNTIME", "STATE", "CACHE")

SCENARIO = textwrap.dedent(
    """
    import gc, os, weakref
    from henbackup.process import fork_child, reap

    class Node:
        pass

    kept = [Node() for _ in range(1000)]
    garbage = Node()
    garbage.self = garbage  # a cycle: only a collection frees it
    gone = weakref.ref(garbage)
    del garbage

    def child():
        return 0 if gc.get_freeze_count() >= len(kept) else 3

    forked = fork_child("memory-test", child)
    code = os.waitstatus_to_exitcode(reap(forked))
    frozen = gc.get_freeze_count()
    gc.collect()  # a full collection of the parent's, as one comes some day
    print(gone() is None, code, frozen >= len(kept), gc.get_freeze_count() == frozen)
    """
)


def test_a_fork_collects_then_freezes_the_parents_objects_for_good() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCENARIO], capture_output=True, text=True, timeout=60
    )
    assert result.stderr == ""
    # the cycle was collected before freezing; the child found the objects frozen; the
    # parent's stay frozen after the fork, even through a full collection
    assert result.stdout.split() == ["True", "0", "True", "True"]


MERGEABLE = textwrap.dedent(
    """
    import os
    from henbackup.process import fork_child, reap

    def mergeable(pid="self"):
        # The heap's VmFlags in smaps: "mg" once offered to the kernel's same-page merging.
        heap = False
        with open(f"/proc/{pid}/smaps") as smaps:
            for line in smaps:
                if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                    heap = line.rstrip().endswith("[heap]")
                elif heap and line.startswith("VmFlags:"):
                    return " mg" in line
        return None

    before = mergeable()
    forked = fork_child("memory-test", lambda: 0 if mergeable() else 3)
    print(before, os.waitstatus_to_exitcode(reap(forked)), mergeable())
    """
)


def test_a_fork_offers_what_the_child_inherits_to_the_kernels_same_page_merging() -> None:
    # Whether the kernel merges is the owner's choice (/sys/kernel/mm/ksm/run); what the
    # parent and the child hold is offered either way (bench/scale.py measures the merging).
    result = subprocess.run(
        [sys.executable, "-c", MERGEABLE], capture_output=True, text=True, timeout=60
    )
    assert result.stderr == ""
    assert result.stdout.split() == ["False", "0", "True"]


# The daemon as far as its first fork, with a restic and a borg repository (both engines
# imported): Master.run is replaced by one fork that reports what ran in the child inside
# os.fork(), before its body: the handlers registered with os.register_at_fork.
AT_FORK = textwrap.dedent(
    """
    import os, sys
    from henbackup import process
    from henbackup.master import supervisor

    ran, inside = [], [False]

    def profile(frame, event, arg):
        if inside[0] and event == "call":
            ran.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")

    def fork():
        inside[0] = True
        try:
            return real_fork()
        finally:
            inside[0] = False

    def first_fork(master):
        forked = process.fork_child("at-fork-test", lambda: print(ran) or 0)
        return os.waitstatus_to_exitcode(process.reap(forked))

    real_fork, os.fork = os.fork, fork
    supervisor.Master.run = first_fork
    sys.setprofile(profile)
    from henbackup.cli import daemon
    sys.exit(daemon.main(["--events", "json", "--config", sys.argv[1], "run"]))
    """
)


def test_a_forked_worker_runs_no_at_fork_handler(tmp_path: Path) -> None:
    # Such a handler (threading's, imported by subprocess; random's, by tempfile; one of
    # ours) writes, in every worker, into pages it shared: 0.3 MiB each (bench/scale.py).
    (tmp_path / "pw").write_text("secret\n")
    config = tmp_path / "henbackup.toml"
    config.write_text(
        f'[repositories.restic]\nlocation = "{tmp_path / "r"}"\n'
        f'password_file = "{tmp_path / "pw"}"\n'
        f'[repositories.borg]\nengine = "borg"\nlocation = "{tmp_path / "b"}"\n'
        f'password_file = "{tmp_path / "pw"}"\n'
        f'[backups.b]\npaths = ["{tmp_path}"]\nrepositories = ["restic", "borg"]\n'
    )
    config.chmod(0o600)
    env = {**os.environ, **{f"{kind}_DIRECTORY": str(tmp_path / kind) for kind in DIRECTORIES}}
    result = subprocess.run(
        [sys.executable, "-c", AT_FORK, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"
