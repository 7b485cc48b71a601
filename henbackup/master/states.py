"""The life of a supervised child, as one guarded state machine (no I/O here).

    STOPPED ─▶ STARTING ─▶ RUNNING ─▶ STOPPING ─▶ STOPPED
                  │  ▲         │          ▲
                  ▼  │         ▼          │ (stop asked in any live state)
                BACKOFF ◀──────┘
                  │ too many quick failures
                  ▼
                FATAL  (left alone until a reload gives it another try: STARTING)

Every change of state goes through `Child.transition`, which refuses any other edge.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ChildState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    FATAL = "fatal"
    STOPPING = "stopping"


ALLOWED: dict[ChildState, frozenset[ChildState]] = {
    ChildState.STOPPED: frozenset({ChildState.STARTING}),
    ChildState.STARTING: frozenset({ChildState.RUNNING, ChildState.BACKOFF, ChildState.STOPPING}),
    ChildState.RUNNING: frozenset({ChildState.BACKOFF, ChildState.STOPPING}),
    ChildState.BACKOFF: frozenset({ChildState.STARTING, ChildState.FATAL, ChildState.STOPPING}),
    ChildState.FATAL: frozenset({ChildState.STARTING, ChildState.STOPPING}),
    ChildState.STOPPING: frozenset({ChildState.STOPPED}),
}


class InvalidTransition(RuntimeError):
    """A programming error: the supervisor asked for an edge the diagram does not have."""


@dataclass(frozen=True)
class Policy:
    """When a crash counts as quick, how long to wait before a restart, when to give up."""

    stable_after: float = 10.0  # a child that ran this long has recovered: failures reset
    first_delay: float = 1.0
    max_delay: float = 60.0
    max_quick_failures: int = 5

    def delay(self, failures: int) -> float:
        """Seconds to wait before restart number `failures` (1, 2, 4, ... up to max_delay)."""
        return min(self.first_delay * 2 ** max(failures - 1, 0), self.max_delay)


@dataclass
class Child:
    """The supervisor's record of one child: its state and the facts that drive it."""

    name: str
    state: ChildState = ChildState.STOPPED
    pid: int | None = None
    since: float = 0.0  # monotonic time of the last transition
    started_at: float = 0.0
    quick_failures: int = 0
    restart_at: float | None = None  # while in BACKOFF

    def transition(self, new: ChildState, now: float) -> None:
        """Move to `new`; raises InvalidTransition for an edge that is not in ALLOWED."""
        if new not in ALLOWED[self.state]:
            raise InvalidTransition(f"{self.name}: {self.state.value} → {new.value}")
        self.state, self.since = new, now

    def spawned(self, pid: int, now: float) -> None:
        self.transition(ChildState.STARTING, now)
        self.pid, self.started_at, self.restart_at = pid, now, None

    def ready(self, now: float) -> None:
        self.transition(ChildState.RUNNING, now)

    def died(self, now: float, policy: Policy) -> None:
        """The child exited on its own: back off (with a growing delay) or give up."""
        self.pid = None
        if self.state is ChildState.STOPPING:
            self.transition(ChildState.STOPPED, now)
            return
        ran = now - self.started_at
        self.quick_failures = 0 if ran >= policy.stable_after else self.quick_failures
        self.quick_failures += 1
        self.transition(ChildState.BACKOFF, now)
        if self.quick_failures >= policy.max_quick_failures:
            self.transition(ChildState.FATAL, now)
        else:
            self.restart_at = now + policy.delay(self.quick_failures)

    def retry(self) -> None:
        """Another try for a child that gave up (a reload: its cause may be fixed): its
        failures are forgotten, so that it backs off from the first delay again."""
        self.quick_failures = 0

    def stop(self, now: float) -> None:
        """Ask the child to stop; a child with no process is stopped at once."""
        if self.state in (ChildState.STOPPED, ChildState.STOPPING):
            return
        self.transition(ChildState.STOPPING, now)
        if self.pid is None:
            self.transition(ChildState.STOPPED, now)
