"""Owner liveness from /proc: zombies are dead, a reused pid is not the same owner."""

from __future__ import annotations

import os

from henbackup.scheduler.procs import alive, start_time


def test_this_process_is_alive_with_its_own_start_time():
    started = start_time(os.getpid())
    assert isinstance(started, int)
    assert alive(os.getpid(), started)


def test_a_reused_pid_with_another_start_time_is_not_the_owner():
    started = start_time(os.getpid())
    assert not alive(os.getpid(), started + 1)


def test_a_zombie_is_dead_and_so_is_a_reaped_child():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    assert start_time(pid) is None
    os.waitpid(pid, 0)
    assert start_time(pid) is None


def test_pid_zero_is_never_an_owner():
    assert not alive(0, 0)
