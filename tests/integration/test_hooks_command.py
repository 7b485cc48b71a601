"""Command hooks as real processes: timeouts kill the whole group, 75 skips, cancel kills."""

from __future__ import annotations

import json
import os
import select
import signal
from pathlib import Path

import pytest

from henbackup.config.model import CommandHook, Hooks
from henbackup.errors import JobCancelled
from henbackup.hooks import HookContext, command, run_hook, run_hooks, run_with_hooks
from henbackup.process import SafePoint

CONTEXT = HookContext("grafana", "before", job="j1", trigger="schedule")
GENEROUS = 15.0


def sh(script: str, **options) -> CommandHook:
    return CommandHook(("/bin/sh", "-c", script), **options)


def assert_gone(pid: int) -> None:
    """The process has exited (a pidfd turns readable then, zombie or reaped)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([pidfd], [], [], GENEROUS)[0], f"process {pid} survived its hook"
    finally:
        os.close(pidfd)


def test_success_runs_in_a_clean_environment_and_the_given_directory(events, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-the-daemon")
    hook = sh('echo "$HENBACKUP_BACKUP $HENBACKUP_HOOK $A ${AWS_SECRET_ACCESS_KEY:-unset} $PWD"')
    hook = CommandHook(hook.command, env=(("A", "1"),), cwd=str(tmp_path))
    outcome = run_hook(hook, CONTEXT, events)
    assert outcome.status == "succeeded"
    assert outcome.output == f"grafana before 1 unset {tmp_path}"
    done = dict(events.recorded[-1].fields)
    assert done["HENBACKUP_EXIT_STATUS"] == "0" and done["HENBACKUP_RESULT"] == "succeeded"


def test_exit_75_skips_the_run_and_is_not_a_failure(events):
    verdict = run_hooks([sh("echo nothing new; exit 75"), sh("exit 1")], CONTEXT, events)
    assert [o.status for o in verdict.outcomes] == ["skipped"]
    assert verdict.skip and not verdict.failed
    assert [e.kind for e in events.recorded] == ["hook.started", "hook.succeeded"]
    assert dict(events.recorded[-1].fields)["HENBACKUP_RESULT"] == "skipped"
    assert "asked to skip this run" in events.recorded[-1].message


def test_a_skip_before_hook_skips_the_whole_run(events):
    ran = []
    result = run_with_hooks(
        Hooks(before=(sh("exit 75"),), failure=(sh("exit 0"),)),
        CONTEXT,
        events,
        lambda: ran.append("body"),
    )
    assert result.status == "skipped" and ran == []


def test_a_failing_command_reports_its_status(events):
    outcome = run_hook(sh("echo oops >&2; exit 3", on_failure="ignore"), CONTEXT, events)
    assert outcome.status == "failed" and outcome.error == "exited with status 3"
    assert outcome.output == "oops"
    assert events.recorded[-1].kind == "hook.failed"
    assert "(ignored)" in events.recorded[-1].message


def test_a_command_killed_by_a_real_time_signal_names_its_number(events):
    number = signal.SIGRTMIN + 6
    outcome = run_hook(sh(f"kill -{number} $$", on_failure="ignore"), CONTEXT, events)
    assert outcome.status == "failed" and outcome.error == f"killed by signal {number}"


@pytest.mark.parametrize(
    "hook",
    [CommandHook(("/bin/echo", "s3cr\x00t")), CommandHook(("/bin/true",), env=(("A", "s\x00"),))],
)
def test_a_nul_character_fails_the_hook_without_showing_it(events, hook):
    outcome = run_hook(hook, CONTEXT, events)
    assert outcome.status == "failed"
    assert outcome.error == "cannot run: its command or environment holds a NUL character"


def test_a_missing_program_fails_cleanly(events):
    outcome = run_hook(CommandHook(("/nonexistent/dump",)), CONTEXT, events)
    assert outcome.error == "cannot run /nonexistent/dump: No such file or directory"


def test_a_missing_working_directory_is_named_not_the_program(events):
    outcome = run_hook(CommandHook(("/bin/true",), cwd="/nonexistent-dir"), CONTEXT, events)
    assert outcome.error == "cannot enter its cwd /nonexistent-dir: No such file or directory"


def test_a_hanging_hook_is_killed_with_its_children_at_the_timeout(events, tmp_path):
    pidfile = tmp_path / "grandchild"
    hook = sh(f"sleep 1000 & echo $! > {pidfile}; echo started; wait", timeout=0.5)
    outcome = run_hook(hook, CONTEXT, events, kill_grace=GENEROUS)
    assert outcome.status == "failed" and outcome.error == "timed out after 0.5s"
    assert outcome.output == "started"
    assert_gone(int(pidfile.read_text()))


def test_a_hook_ignoring_sigterm_is_killed_after_the_grace(events, tmp_path):
    pidfile = tmp_path / "grandchild"
    hook = sh(f"trap '' TERM; sleep 1000 & echo $! > {pidfile}; wait", timeout=0.3)
    outcome = run_hook(hook, CONTEXT, events, kill_grace=0.3)
    assert outcome.status == "failed" and outcome.error == "timed out after 0.3s"
    assert_gone(int(pidfile.read_text()))


def test_a_background_child_does_not_hold_the_hook_up(events, tmp_path):
    pidfile = tmp_path / "daemon"
    hook = sh(f"sleep 1000 > /dev/null 2>&1 & echo $! > {pidfile}; echo left", timeout=GENEROUS)
    outcome = run_hook(hook, CONTEXT, events)
    assert outcome.status == "succeeded" and outcome.output == "left"
    os.kill(int(pidfile.read_text()), signal.SIGKILL)


@pytest.fixture
def cancel_point():
    """SIGUSR1 as a job process has it: the handler only records (and wakes the wakeup
    fd); the safe point raises JobCancelled."""
    asked: list[int] = []
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def check() -> None:
        if asked:
            asked.clear()
            raise JobCancelled("cancelled")

    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: asked.append(signum))
    wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    try:
        yield SafePoint(check, read_fd)
    finally:
        signal.set_wakeup_fd(wakeup)
        signal.signal(signal.SIGUSR1, previous)
        os.close(read_fd)
        os.close(write_fd)


def test_cancelling_the_job_kills_the_hooks_process_group(events, tmp_path, cancel_point):
    pidfile = tmp_path / "grandchild"
    # The hook itself signals this process once its grandchild runs: no timing involved.
    hook = sh(f"sleep 1000 & echo $! > {pidfile}; kill -USR1 $PPID; wait", timeout=GENEROUS)
    with pytest.raises(JobCancelled):
        run_hook(hook, CONTEXT, events, kill_grace=GENEROUS, safe_point=cancel_point)
    assert_gone(int(pidfile.read_text()))
    assert events.recorded[-1].kind == "hook.failed"
    assert dict(events.recorded[-1].fields)["HENBACKUP_ERROR"] == "cancelled"


def test_a_cancellation_arriving_while_the_hook_starts_still_kills_its_group(
    events, tmp_path, monkeypatch, cancel_point
):
    """The signal comes before the hook is under watch: it must wait, not leak the group."""
    pidfile, fifo = tmp_path / "grandchild", tmp_path / "fifo"
    os.mkfifo(fifo)

    class LateWatch(command._Watch):
        def __init__(self, process, safe_point):
            with open(fifo) as gate:  # returns once the hook has signalled this process
                gate.read()
            super().__init__(process, safe_point)

    monkeypatch.setattr(command, "_Watch", LateWatch)
    script = f"sleep 1000 & echo $! > {pidfile}; kill -USR1 $PPID; echo > {fifo}; wait"
    hook = sh(script, timeout=GENEROUS)
    with pytest.raises(JobCancelled):
        run_hook(hook, CONTEXT, events, kill_grace=GENEROUS, safe_point=cancel_point)
    assert_gone(int(pidfile.read_text()))


def test_output_is_truncated_and_secrets_redacted(events):
    secret = "hunter2-very-secret"
    script = 'for i in $(seq 1 2000); do echo "line $i $PGPASSWORD"; done; echo "bye $PGPASSWORD"'
    hook = sh(script, env=(("PGPASSWORD", secret),), on_failure="continue")
    outcome = run_hook(hook, CONTEXT, events)
    assert outcome.output.startswith("[…output truncated…]\n")
    assert outcome.output.endswith("bye <redacted>")
    assert len(outcome.output.encode()) <= 4096 + 64
    everything = json.dumps([e.journal_fields() for e in events.recorded])
    assert secret not in everything and "very-secret" not in everything


def test_failure_hooks_get_the_reason_of_the_failure(events, tmp_path):
    out = Path(tmp_path) / "reason"
    hooks = Hooks(failure=(sh(f'echo "$HENBACKUP_HOOK: $HENBACKUP_ERROR" > {out}'),))
    result = run_with_hooks(hooks, CONTEXT, events, lambda: "aws-ireland: backend unreachable")
    assert result.status == "failed"
    assert out.read_text() == "failure: aws-ireland: backend unreachable\n"


@pytest.fixture
def unreapable(monkeypatch):
    """Popen.wait as for a hook blocked in the kernel (D state), which SIGKILL does not end.
    A fake: no test can put a real process in that state. A bounded wait times out at once;
    an unbounded one would never return, so it fails the test instead. The real processes
    (killed all the same) are reaped afterwards. Yields each wait's (process, timeout)."""
    import subprocess

    real_wait = subprocess.Popen.wait
    waited: list[tuple[subprocess.Popen, float | None]] = []

    def wait(self, timeout=None):
        waited.append((self, timeout))
        if timeout is None:
            raise AssertionError("waited without bound for a hook that cannot die")
        raise subprocess.TimeoutExpired(self.args, timeout)

    monkeypatch.setattr(subprocess.Popen, "wait", wait)
    yield waited
    monkeypatch.undo()
    for process in {process for process, _ in waited}:
        real_wait(process, GENEROUS)


def test_a_hook_that_cannot_die_at_its_timeout_fails_saying_so(events, unreapable):
    """It held the job, its queue slot included, for ever."""
    outcome = run_hook(sh("exec sleep 1000", timeout=0.2), CONTEXT, events, kill_grace=0.1)
    assert outcome.status == "failed"
    assert outcome.error == (
        "timed out after 0.2s and did not die after SIGKILL (blocked in the kernel?)"
    )
    assert events.recorded[-1].kind == "hook.failed"
    assert {timeout for _, timeout in unreapable} == {command.KILL_WAIT}


def test_a_cancel_is_not_held_by_a_hook_that_cannot_die(events, unreapable, cancel_point):
    hook = sh("kill -USR1 $PPID; exec sleep 1000", timeout=GENEROUS)
    with pytest.raises(JobCancelled):
        run_hook(hook, CONTEXT, events, kill_grace=0.1, safe_point=cancel_point)
    assert events.recorded[-1].kind == "hook.failed"
    assert {timeout for _, timeout in unreapable} == {command.KILL_WAIT}
