"""When a scheduled backup (or check, or prune) runs next: henbackup.toml(5) TRIGGERS, `schedule`.

- An interval entry ("1d") is due one interval after the last success; a cron entry at its
  first occurrence after the last success, in local time (DST: see config/cron.py). The
  earliest entry wins. Never succeeded: due now.
- Missed while the daemon was down, however many times: due now, once.
- After a failed attempt (restic, a hook, its job killed): retried `retry_after` later, or
  at the entry's next regular time if that comes first, so a broken backup never runs in a
  tight loop, nor at every start of a daemon in a crash loop.
- After an interrupted attempt (henbackup stopped during it: no end recorded, see
  ScheduleRecord.unfinished): due now, as a missed run is. It is not the backup's failure.
- A record from the future means the wall clock went back since it was written. Up to
  FUTURE_TOLERANCE back, the run did happen: count from it (no double run). Further back,
  the clock that wrote it was wrong: it says nothing, so the run is due now (no wait of
  years; counting from now instead put it off again at each start), and its own record
  is then right.

`ScheduleTimer` keeps one wall-clock alarm armed for the next run. The default alarm is a
timerfd on CLOCK_REALTIME with TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET: the kernel wakes
it at the wall-clock time even across suspend (a monotonic deadline would come late by the
time asleep) and at once when the clock is set (NTP step, `date -s`), so no periodic
re-check is needed. Each wake-up recomputes from the wall clock: not due yet (clock set
back) re-arms; due, however many occurrences were skipped (clock set forward, resume), fires
once.
"""

from __future__ import annotations

import errno
import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from henbackup import linux
from henbackup.config.cron import CronSpec, parse_cron
from henbackup.config.model import Cron, Interval, ScheduleEntry
from henbackup.loop import Loop, Timer
from henbackup.worker.state import ScheduleRecord

RETRY_AFTER = 600.0  # a failed run is retried after 10 minutes (or its next regular time)
FUTURE_TOLERANCE = 86400.0  # how far back a clock may be set and the record still trusted
_EARLY = 0.001  # float rounding: a wake-up this close to the due time counts as due


@dataclass(frozen=True)
class NextRun:
    when: float  # epoch seconds; may be in the past: due now
    entry: ScheduleEntry  # the entry that asked for it

    @property
    def label(self) -> str:
        """The entry as the config spells it: `every 1d` or `cron "0 3 * * *"`."""
        return describe(self.entry)


@dataclass(frozen=True)
class Fired:
    """A scheduled run is due: what the worker reports as HENBACKUP_TRIGGER and reason."""

    trigger: Literal["schedule", "startup"]  # startup: it was already due when the daemon began
    reason: str
    due: float  # epoch seconds


def describe(entry: ScheduleEntry) -> str:
    return f"every {entry.text}" if isinstance(entry, Interval) else f'cron "{entry.expression}"'


def local_zone() -> tzinfo:
    """The system's time zone with its DST rules: $TZ, else /etc/localtime, else UTC."""
    name = os.environ.get("TZ", "").removeprefix(":")
    try:
        if name:
            return ZoneInfo(name) if not name.startswith("/") else _zone_file(Path(name))
        return _zone_file(Path("/etc/localtime"))
    except (OSError, ValueError, ZoneInfoNotFoundError):
        return UTC


def _zone_file(path: Path) -> tzinfo:
    with path.open("rb") as stream:
        return ZoneInfo.from_file(stream, key=str(path))


@functools.lru_cache(maxsize=256)
def _cron(expression: str) -> CronSpec:
    return parse_cron(expression)


def _after(entry: ScheduleEntry, last: float, zone: tzinfo) -> float:
    """The entry's first run time after a run at `last`."""
    if isinstance(entry, Interval):
        return last + entry.seconds
    assert isinstance(entry, Cron)
    return _cron(entry.expression).next_after(datetime.fromtimestamp(last, zone)).timestamp()


def _trusted(moment: float | None, now: float) -> float | None:
    """`moment` as a base to count from, None if a wrong clock wrote it (see
    FUTURE_TOLERANCE in the module docstring)."""
    if moment is None or moment <= now + FUTURE_TOLERANCE:
        return moment
    return None


def next_run(
    entries: Sequence[ScheduleEntry],
    last_success: float | None,
    now: float,
    *,
    last_attempt: float | None = None,
    interrupted: bool = False,
    zone: tzinfo | None = None,
    retry_after: float = RETRY_AFTER,
) -> NextRun:
    """The next run of a schedule (see the module docstring); raises ValueError when empty.

    An attempt after the last success failed, or with `interrupted` never ended. All times
    are wall-clock epoch seconds; cron entries are read in `zone` (default: the system's).
    """
    if not entries:
        raise ValueError("an empty schedule never runs")
    zone = zone or local_zone()
    base, attempt = _trusted(last_success, now), _trusted(last_attempt, now)
    when, entry = min(
        ((now if base is None else _after(e, base, zone), e) for e in entries),
        key=lambda pair: pair[0],
    )
    retry = attempt is not None and (base is None or attempt > base)
    if not retry or attempt is None:
        return NextRun(when, entry)
    if interrupted:  # due since it started (with the clock set back since then: now)
        return NextRun(min(when, attempt, now), entry)
    regular = min(_after(e, attempt, zone) for e in entries)
    return NextRun(max(when, min(attempt + retry_after, regular)), entry)


class Alarm(Protocol):
    """Calls its owner back once the wall clock reaches the time set (and possibly earlier,
    e.g. when the clock is set: the owner re-checks)."""

    def set(self, when: float) -> None: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


AlarmFactory = Callable[[Callable[[], None]], Alarm]


class ScheduleTimer:
    """Arms the loop for the next scheduled run and calls `on_due` once it is due.

    Call `arm(record)` when the worker starts and again after every run ends: after firing
    the timer stays quiet until re-armed, so a run is never started twice for one due time.
    """

    def __init__(
        self,
        loop: Loop,
        entries: Sequence[ScheduleEntry],
        on_due: Callable[[Fired], None],
        *,
        wall_clock: Callable[[], float] = time.time,
        zone: tzinfo | None = None,
        make_alarm: AlarmFactory | None = None,
        retry_after: float = RETRY_AFTER,
    ) -> None:
        self.entries = tuple(entries)
        self.on_due = on_due
        self.wall_clock = wall_clock
        # Only cron entries read the time zone: parsing /etc/localtime in every worker would
        # cost each some 0.3 MiB of its own memory (henbackup.process).
        crons = any(isinstance(entry, Cron) for entry in self.entries)
        self.zone = zone or (local_zone() if crons else UTC)
        self.retry_after = retry_after
        self.next: NextRun | None = None  # what the alarm waits for; None: disarmed
        self._record = ScheduleRecord()
        self._first_arm = True
        self._startup = False  # the first due time was already past when the worker began
        factory = make_alarm or (lambda wake: TimerfdAlarm(loop, wake))
        self._alarm = factory(self._wake)

    def arm(self, record: ScheduleRecord) -> NextRun | None:
        """Wait for the run after `record`; returns it (None for an empty schedule).

        The first arm decides the trigger name: due already then is "startup" (missed while
        the daemon was down, interrupted by its stop, or never run); any later due time is
        "schedule".
        """
        self._record = record
        planned = self._schedule()
        overdue = planned is not None and planned.when < self.wall_clock() - _EARLY
        self._startup = self._first_arm and (
            overdue or record.last_success is None or record.unfinished
        )
        self._first_arm = False
        return planned

    def _schedule(self) -> NextRun | None:
        if not self.entries:
            self.next = None
            return None
        self.next = next_run(
            self.entries,
            self._record.last_success,
            self.wall_clock(),
            last_attempt=self._record.last_attempt,
            interrupted=self._record.unfinished,
            zone=self.zone,
            retry_after=self.retry_after,
        )
        self._alarm.set(self.next.when)
        return self.next

    def _wake(self) -> None:
        if self.next is None:
            return
        now = self.wall_clock()
        planned = self._schedule()  # from the wall clock as it is now: jumps are absorbed
        if planned is None or planned.when > now + _EARLY:
            return  # not due yet (clock set back, or woken for a clock change): re-armed
        self.next = None
        self._alarm.cancel()
        self.on_due(Fired(*self._why(planned)))

    def _why(self, planned: NextRun) -> tuple[Literal["schedule", "startup"], str, float]:
        record = self._record
        if record.unfinished:
            reason = f"{planned.label}, its last run was interrupted"
        elif record.last_success is None:
            reason = f"{planned.label}, never succeeded"
        elif record.failed:
            reason = f"{planned.label}, retrying after a failed run"
        else:
            reason = planned.label
        if not self._startup:
            return "schedule", reason, planned.when
        self._startup = False
        if record.last_success is not None and not record.unfinished:
            reason += ", missed while the daemon was down"
        return "startup", reason, planned.when

    def cancel(self) -> None:
        """Stop waiting (until the next `arm`)."""
        self.next = None
        self._alarm.cancel()

    def fileno(self) -> int:
        """The alarm's file descriptor, -1 without one (a forked job process closes it)."""
        return int(getattr(self._alarm, "fd", -1))

    def close(self) -> None:
        self.next = None
        self._alarm.close()


class LoopAlarm:
    """An Alarm on the loop's monotonic clock: the wall-clock delay at `set` time becomes a
    deadline. Misses suspend and clock steps until it fires (the owner then re-checks);
    for tests with a controllable clock, and where timerfd is missing."""

    def __init__(self, loop: Loop, wake: Callable[[], None], wall_clock: Callable[[], float]):
        self.loop, self.wake, self.wall_clock = loop, wake, wall_clock
        self._timer: Timer | None = None

    def set(self, when: float) -> None:
        self.cancel()
        delay = max(when - self.wall_clock(), 0.0)
        self._timer = self.loop.call_at(self.loop.clock() + delay, self.wake)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.cancel()


class TimerfdAlarm:
    """An Alarm on a CLOCK_REALTIME timerfd in the loop (see the module docstring)."""

    def __init__(self, loop: Loop, wake: Callable[[], None]) -> None:
        """Raises OSError when the kernel refuses a timerfd."""
        self.loop, self.wake = loop, wake
        self.fd = linux.timerfd_create(linux.CLOCK_REALTIME)
        loop.add_reader(self.fd, self._readable)

    def set(self, when: float) -> None:
        """Ring at wall-clock `when` (at once if past), or when the clock is set."""
        seconds = max(when, 1.0)  # an all-zero it_value would disarm instead
        flags = linux.TFD_TIMER_ABSTIME | linux.TFD_TIMER_CANCEL_ON_SET
        linux.timerfd_settime(self.fd, flags, seconds)

    def cancel(self) -> None:
        linux.timerfd_settime(self.fd, 0, 0.0)

    def _readable(self) -> None:
        try:
            os.read(self.fd, 8)  # the expiry count; ECANCELED: the clock was set
        except BlockingIOError:
            return
        except OSError as error:
            if error.errno != errno.ECANCELED:
                raise
        self.wake()

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
