"""When a watched backup should start: henbackup.toml(5) TRIGGERS, `watch = { wait_min, wait_max }`.

After the first change the backup waits until nothing changed for `wait_min`, and never longer
than `wait_max` after that first change. Changes seen while a backup runs leave exactly one
follow-up run, debounced the same way with its window opening when the backup finishes: it
starts once quiet for `wait_min` (counting from the last change, even one during the
backup), at most `wait_max` after the finish. So continuous changes give one backup per
`wait_max` plus its duration, never back-to-back runs. An inotify queue overflow (events were
lost) counts as a change.

`Debouncer` is a pure state machine over the times it is given (monotonic seconds);
`DebounceTimer` puts it on the worker's loop.
"""

from __future__ import annotations

from collections.abc import Callable

from henbackup.loop import Loop, Timer


class Debouncer:
    def __init__(self, wait_min: float, wait_max: float) -> None:
        """Raises ValueError for a negative wait."""
        if wait_min < 0 or wait_max < 0:
            raise ValueError("wait_min and wait_max must not be negative")
        self.wait_min, self.wait_max = wait_min, wait_max
        self._first: float | None = None  # opening of the pending window; None: nothing pending
        self._last = 0.0  # time of the latest change in the window
        self.changes = 0  # changes in the pending window
        self.overflowed = False  # the pending window includes lost events
        self.running = False
        self.fired = False  # the trigger went out; the backup has not started yet

    def change(self, now: float, count: int = 1) -> None:
        """`count` changes were seen at `now`."""
        if self._first is None:
            self._first, self._last = now, now
        self._last = max(self._last, now)
        self.changes += count

    def overflow(self, now: float) -> None:
        """The kernel dropped events: something changed, we cannot tell what."""
        self.change(now, 0)
        self.overflowed = True

    def due(self) -> float | None:
        """When the backup should start (monotonic seconds, possibly already past), or None:
        nothing pending, or a backup is running or was triggered already."""
        if self._first is None or self.running or self.fired:
            return None
        # Never before the window opened: a follow-up quiet since long starts at the finish.
        return max(min(self._last + self.wait_min, self._first + self.wait_max), self._first)

    def reason(self) -> str:
        """What the pending window saw, for the trigger event: "3 changes", "1 change"..."""
        text = f"{self.changes} change{'' if self.changes == 1 else 's'}"
        if not self.overflowed:
            return text
        lost = "lost events (inotify queue overflow)"
        return f"{text} and {lost}" if self.changes else lost

    def fire(self) -> str:
        """The due time came and the trigger goes out; returns its reason. Until the backup
        starts (or finishes, if it never started) `due()` is None: no second trigger."""
        self.fired = True
        return self.reason()

    def backup_started(self, now: float) -> None:
        """A backup of these paths started (any trigger): it saves every change so far."""
        self._first = None
        self.changes, self.overflowed = 0, False
        self.running, self.fired = True, False

    def backup_finished(self, now: float) -> None:
        """The backup ended (or a fired trigger was dropped before it started): changes seen
        since its start open the follow-up window now."""
        self.running, self.fired = False, False
        if self._first is not None:
            self._first = now


class DebounceTimer:
    """Keeps one loop deadline at the debouncer's due time and calls `on_due(reason)` (after
    `fire()`) when it comes. Lazy: a storm of changes only moves the due time later, so the
    deadline is re-armed when it expires early, not at every change."""

    def __init__(self, loop: Loop, debouncer: Debouncer, on_due: Callable[[str], None]) -> None:
        self.loop, self.debouncer, self.on_due = loop, debouncer, on_due
        self._timer: Timer | None = None

    def changed(self, count: int) -> None:
        """For Watcher.on_change: `count` changes now."""
        self.debouncer.change(self.loop.clock(), count)
        self.poke()

    def overflowed(self) -> None:
        """For Watcher.on_overflow."""
        self.debouncer.overflow(self.loop.clock())
        self.poke()

    def poke(self) -> None:
        """Arm the deadline if something is due and none is armed (call after any change of
        the debouncer's state, e.g. backup_finished)."""
        due = self.debouncer.due()
        if due is not None and self._timer is None:
            self._timer = self.loop.call_at(due, self._expired)

    def _expired(self) -> None:
        self._timer = None
        due = self.debouncer.due()
        if due is None:
            return
        if due > self.loop.clock():  # changes came since it was armed
            self._timer = self.loop.call_at(due, self._expired)
            return
        self.on_due(self.debouncer.fire())

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
