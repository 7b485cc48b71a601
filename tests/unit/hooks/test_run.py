"""on_failure and exit 75 as data: which hooks run, and what the run becomes."""

from __future__ import annotations

import pytest

from henbackup.config.model import CommandHook, Hook, Hooks, HttpHook
from henbackup.errors import JobCancelled, StopRequested
from henbackup.hooks import HookContext, HookOutcome, Verdict, run_hooks, run_with_hooks

CONTEXT = HookContext("grafana", "before", job="j1")


def hook(name, on_failure="stop"):
    return CommandHook((name,), on_failure=on_failure)


class Script:
    """A fake runner: each hook's program name says how it ends."""

    def __init__(self):
        self.ran: list[tuple[str, str, str | None]] = []

    def __call__(self, hook, context, emit):
        name = hook.command[0]
        self.ran.append((context.phase, name, context.error))
        status = name.split("-")[0]  # "succeeded-1", "failed-2", "skipped"
        error = None if status == "succeeded" else f"{name} went wrong"
        return HookOutcome(status, hook.on_failure, f"command {name}", error)


def no_emit(kind, message, **fields):
    raise AssertionError("the fake runner emits nothing")


def test_ignore_has_no_effect_and_the_phase_goes_on():
    script = Script()
    verdict = run_hooks([hook("failed", "ignore"), hook("succeeded")], CONTEXT, no_emit, script)
    assert [name for _, name, _ in script.ran] == ["failed", "succeeded"]
    assert not verdict.failed and not verdict.stop and verdict.error is None


def test_continue_marks_failed_and_the_phase_goes_on():
    script = Script()
    verdict = run_hooks([hook("failed", "continue"), hook("succeeded")], CONTEXT, no_emit, script)
    assert len(script.ran) == 2
    assert verdict.failed and not verdict.stop
    assert verdict.error == "command failed: failed went wrong"


def test_stop_ends_the_phase():
    script = Script()
    verdict = run_hooks([hook("failed"), hook("succeeded")], CONTEXT, no_emit, script)
    assert len(script.ran) == 1 and verdict.failed and verdict.stop


def test_skip_ends_the_phase_without_failing():
    script = Script()
    verdict = run_hooks([hook("skipped"), hook("succeeded")], CONTEXT, no_emit, script)
    assert len(script.ran) == 1 and verdict.skip and not verdict.failed


def test_an_empty_phase_is_a_clean_verdict():
    assert Verdict() == run_hooks([], CONTEXT, no_emit, Script())
    assert not (Verdict().failed or Verdict().stop or Verdict().skip)


def hooks(before=(), after=(), failure=()):
    return Hooks(tuple(map(hook, before)), tuple(map(hook, after)), tuple(map(hook, failure)))


def test_a_clean_run_runs_before_body_after():
    script, body = Script(), []
    result = run_with_hooks(
        hooks(["succeeded-b"], ["succeeded-a"], ["succeeded-f"]),
        CONTEXT,
        no_emit,
        lambda: body.append(1),
        script,
    )
    assert result.status == "succeeded" and body == [1]
    assert [(phase, name) for phase, name, _ in script.ran] == [
        ("before", "succeeded-b"),
        ("after", "succeeded-a"),
    ]


def test_a_failing_body_runs_failure_hooks_with_its_reason():
    script = Script()
    result = run_with_hooks(
        hooks([], ["succeeded-a"], ["succeeded-f"]), CONTEXT, no_emit, lambda: "aws: down", script
    )
    assert result.status == "failed" and result.error == "aws: down"
    assert script.ran == [("failure", "succeeded-f", "aws: down")]


def test_a_stop_before_hook_skips_the_body_and_runs_failure_hooks():
    script, body = Script(), []
    result = run_with_hooks(
        hooks(["failed-b"], ["succeeded-a"], ["succeeded-f"]),
        CONTEXT,
        no_emit,
        lambda: body.append(1),
        script,
    )
    assert result.status == "failed" and body == []
    assert [(p, n) for p, n, _ in script.ran] == [
        ("before", "failed-b"),
        ("failure", "succeeded-f"),
    ]
    assert result.before.stop and result.failure.outcomes


def test_a_continue_before_hook_runs_the_body_but_the_run_fails():
    script, body = Script(), []
    before = (CommandHook(("failed-b",), on_failure="continue"),)
    result = run_with_hooks(
        Hooks(before, (hook("succeeded-a"),), (hook("succeeded-f"),)),
        CONTEXT,
        no_emit,
        lambda: body.append(1),
        script,
    )
    assert result.status == "failed" and body == [1]
    assert [n for _, n, _ in script.ran] == ["failed-b", "succeeded-f"]


def test_a_skip_before_hook_ends_the_run_quietly():
    script, body = Script(), []
    result = run_with_hooks(
        hooks(["skipped"], ["succeeded-a"], ["succeeded-f"]),
        CONTEXT,
        no_emit,
        lambda: body.append(1),
        script,
    )
    assert result.status == "skipped" and body == [] and len(script.ran) == 1


def test_a_failing_after_hook_fails_the_run_and_runs_failure_hooks():
    script = Script()
    result = run_with_hooks(
        hooks([], ["failed-a"], ["succeeded-f"]), CONTEXT, no_emit, lambda: None, script
    )
    assert result.status == "failed" and result.after.failed
    assert script.ran[-1][:2] == ("failure", "succeeded-f")


def test_cancellation_runs_failure_hooks_then_propagates():
    script = Script()

    def cancelled():
        raise JobCancelled("cancelled")

    with pytest.raises(JobCancelled):
        run_with_hooks(hooks([], [], ["succeeded-f"]), CONTEXT, no_emit, cancelled, script)
    assert script.ran == [("failure", "succeeded-f", "cancelled")]


@pytest.mark.parametrize("phase", ["before", "after"])
def test_a_cancel_during_a_hook_runs_failure_hooks_too(phase):
    """A before hook that stopped a service has a failure hook that starts it again: a
    cancel that came during the before (or after) hook skipped it."""

    class Cancelling(Script):
        def __call__(self, hook, context, emit):
            outcome = super().__call__(hook, context, emit)
            if context.phase == phase:
                raise JobCancelled("cancelled")
            return outcome

    script = Cancelling()
    hooked = hooks(["succeeded-b"], ["succeeded-a"], ["succeeded-f"])
    with pytest.raises(JobCancelled):
        run_with_hooks(hooked, CONTEXT, no_emit, lambda: None, script)
    assert script.ran[-1] == ("failure", "succeeded-f", "cancelled")
    assert [ran[0] for ran in script.ran].count("failure") == 1


@pytest.mark.parametrize(
    ("interruption", "timeouts", "retries"),
    [(JobCancelled("cancelled"), [600.0, 600.0], 5), (StopRequested("stop"), [30.0, 30.0], 0)],
)
def test_the_failure_hooks_of_a_stopped_run_end_before_the_daemons_stop_deadline(
    interruption, timeouts, retries
):
    """A stop (not a cancel) bounds them: else the master's deadline killed the worker and
    left its job process, and the failure hook, running after the daemon."""
    given: list[Hook] = []

    def runner(hook, context, emit):
        given.append(hook)
        return HookOutcome("succeeded", hook.on_failure, "a hook", None)

    def interrupted():
        raise interruption

    slow = Hooks(
        failure=(
            CommandHook(("notify",), timeout=600.0),
            HttpHook("http://h/", timeout=600.0, retries=5),
        )
    )
    with pytest.raises(type(interruption)):
        run_with_hooks(slow, CONTEXT, no_emit, interrupted, runner)
    assert [hook.timeout for hook in given] == pytest.approx(timeouts, abs=1.0)
    assert given[1].retries == retries


def test_once_the_stop_deadline_is_past_no_other_failure_hook_runs(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("henbackup.hooks.run.time.monotonic", lambda: clock[0])
    given: list[float] = []

    def runner(hook, context, emit):
        given.append(hook.timeout)
        clock[0] += hook.timeout  # it takes its whole time
        return HookOutcome("failed", hook.on_failure, "a hook", "timed out")

    def stopped():
        raise StopRequested("stop")

    notify = CommandHook(("notify",), timeout=600.0, on_failure="continue")
    with pytest.raises(StopRequested):
        run_with_hooks(Hooks(failure=(notify, notify)), CONTEXT, no_emit, stopped, runner)
    assert given == [30.0]
