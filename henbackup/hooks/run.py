"""Running hooks with their events, and what their outcomes mean for the run.

Hooks run blocking, inside the job process. What its safe point raises meanwhile (a stop,
a cancel: JobCancelled) kills a command hook's process group (see command.py), or an HTTP
hook's process (http.py), and propagates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from henbackup.config.model import CommandHook, Hook, Hooks
from henbackup.errors import JobCancelled, StopRequested
from henbackup.hooks import command
from henbackup.hooks.outcome import Attempt, HookContext, HookOutcome, Status, Verdict
from henbackup.hooks.output import clean_output, hook_secrets
from henbackup.observe.events import EmitFunction
from henbackup.process import NEVER, SafePoint
from henbackup.redact import Redactor

Runner = Callable[[Hook, HookContext, EmitFunction], HookOutcome]

# What the failure hooks of a run the daemon stops get, in all: the worker must be done
# before the master's stop deadline (80 s, within systemd's TimeoutStopSec), which kills it
# and leaves its job process behind. An HTTP hook then gets one attempt.
STOPPING_HOOKS_TIME = 30.0

_CONSEQUENCES = {
    "ignore": "ignored",
    "continue": "the run goes on, marked failed",
    "stop": "the run stops",
}


def describe(hook: Hook) -> str:
    """How events name `hook`, without secrets."""
    if isinstance(hook, CommandHook):
        return hook_secrets(hook)(command.describe(hook))
    from henbackup.hooks import http  # with ssl and urllib: loaded by the HTTP hooks only

    return hook_secrets(hook)(http.describe(hook))


def run_hook(
    hook: Hook,
    context: HookContext,
    emit: EmitFunction,
    backoff: float | None = None,  # between HTTP retries; None: http.BACKOFF
    kill_grace: float = command.KILL_GRACE,
    safe_point: SafePoint | None = None,
) -> HookOutcome:
    """Run one hook between hook.started and hook.succeeded / hook.failed events.

    Returns its outcome (a skip, exit 75, is reported as hook.succeeded with
    HENBACKUP_RESULT=skipped). Raises JobCancelled if the job is cancelled meanwhile (what
    `safe_point` raises; without one, the hook runs in this process, not stoppable).
    """
    description = describe(hook)
    title = f"{context.backup}: {context.phase} hook ({description})"
    emit("hook.started", f"{title} started", **context.fields(), hook_target=description)
    started = time.monotonic()
    try:
        attempt = _attempt(hook, context, backoff, kill_grace, safe_point)
    except JobCancelled:
        emit("hook.failed", f"{title} cancelled", **context.fields(), error="cancelled")
        raise
    outcome = _outcome(hook, description, attempt, hook_secrets(hook))
    _report(outcome, attempt, title, context, emit, time.monotonic() - started)
    return outcome


def _attempt(
    hook: Hook,
    context: HookContext,
    backoff: float | None,
    kill_grace: float,
    safe_point: SafePoint | None,
) -> Attempt:
    if isinstance(hook, CommandHook):
        env = command.environment(hook, context.environment())
        return command.run_command(hook, env, kill_grace, safe_point or NEVER)
    from henbackup.hooks import http

    backoff = http.BACKOFF if backoff is None else backoff
    hook = http.for_run(hook, context)
    # apart even without a safe point: only a child can be killed at the hook's deadline
    return http.run_http_apart(hook, backoff, safe_point or NEVER)


def _outcome(hook: Hook, description: str, attempt: Attempt, redact: Redactor) -> HookOutcome:
    return HookOutcome(
        status=attempt.status,
        on_failure=hook.on_failure,
        description=description,
        error=None if attempt.error is None else redact(attempt.error),
        output=clean_output(attempt.output, attempt.truncated, redact),
    )


def _report(
    outcome: HookOutcome,
    attempt: Attempt,
    title: str,
    context: HookContext,
    emit: EmitFunction,
    duration: float,
) -> None:
    fields = {
        **context.fields(),
        "hook_target": outcome.description,
        "result": outcome.status,
        "duration_sec": duration,
        "output": outcome.output or None,
        **attempt.fields,
    }
    if outcome.status == "succeeded":
        emit("hook.succeeded", f"{title} succeeded", **fields)
    elif outcome.status == "skipped":
        emit("hook.succeeded", f"{title} asked to skip this run ({outcome.error})", **fields)
    else:
        consequence = _CONSEQUENCES[outcome.on_failure]
        message = f"{title} failed: {outcome.error} ({consequence})"
        emit("hook.failed", message, **fields, error=outcome.error, on_failure=outcome.on_failure)


def run_hooks(
    hooks: Sequence[Hook],
    context: HookContext,
    emit: EmitFunction,
    runner: Runner = run_hook,
    deadline: float | None = None,
) -> Verdict:
    """Run `hooks` in order, stopping after a skip or a failure with on_failure = stop; each
    within `deadline` (monotonic seconds) if given, and none once it is (nearly) past.

    Returns the Verdict of the phase; raises JobCancelled if the job is cancelled.
    """
    outcomes: list[HookOutcome] = []
    for hook in hooks:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left < 1.0:  # the rest are not run: the stop must end in time
                break
            hook = _within(hook, left)
        outcome = runner(hook, context, emit)
        outcomes.append(outcome)
        if outcome.status == "skipped" or (outcome.counts_as_failure and hook.on_failure == "stop"):
            break
    return Verdict(tuple(outcomes))


@dataclass(frozen=True)
class RunResult:
    """A whole run with its hooks: succeeded, failed or skipped (a before hook exited 75)."""

    status: Status
    error: str | None = None
    before: Verdict = field(default_factory=Verdict)
    after: Verdict = field(default_factory=Verdict)
    failure: Verdict = field(default_factory=Verdict)


def run_with_hooks(
    hooks: Hooks,
    context: HookContext,
    emit: EmitFunction,
    body: Callable[[], str | None],
    runner: Runner = run_hook,
) -> RunResult:
    """before hooks → `body` → after hooks on success, failure hooks otherwise.

    `body` runs the jobs and returns None on success or a one-line, secret-free reason.
    A `stop` failure of a before hook skips `body`; a `continue` failure runs it but marks
    the run failed; an after hook failing marks the run failed too (then failure hooks run).
    A skip (exit 75) of a before hook ends the run at once, with no other hooks. When the
    job is cancelled, failure hooks run (with HENBACKUP_ERROR=cancelled) and JobCancelled
    propagates.
    """
    try:
        before = run_hooks(hooks.before, replace(context, phase="before"), emit, runner)
        if before.skip:
            return RunResult("skipped", before=before)
        error = before.error
        if not before.stop:
            error = body() or error
        after = Verdict()
        if error is None:
            after = run_hooks(hooks.after, replace(context, phase="after"), emit, runner)
            if not after.failed:
                return RunResult("succeeded", before=before, after=after)
            error = after.error
    except JobCancelled as error:  # in a hook too: a before hook stopped, a failure hook runs
        cancelled = replace(context, phase="failure", error="cancelled")
        stopping = isinstance(error, StopRequested)
        deadline = time.monotonic() + STOPPING_HOOKS_TIME if stopping else None
        run_hooks(hooks.failure, cancelled, emit, runner, deadline)
        raise
    failure_context = replace(context, phase="failure", error=error)
    failure = run_hooks(hooks.failure, failure_context, emit, runner)
    return RunResult("failed", error, before, after, failure)


def _within(hook: Hook, seconds: float) -> Hook:
    """`hook` bounded to `seconds` in all: an HTTP hook, to one attempt."""
    timeout = min(hook.timeout, seconds)
    if isinstance(hook, CommandHook):
        return replace(hook, timeout=timeout)
    return replace(hook, timeout=timeout, retries=0)
