"""What must survive a restart: when each backup (and each repository's check and prune)
last succeeded, was last attempted and last failed, and since when a watched backup has
changes not yet backed up, as wall-clock epoch seconds. An attempt after the last success
with no failure recorded for it never ended: henbackup stopped during it
(ScheduleRecord.unfinished).

One small JSON file per backup or maintenance operation under the state directory, so each
worker writes only its own file. Written atomically: a temporary file in the same
directory, fsync, rename over the old one, fsync of the directory; a crash leaves the old
record or the new one, never a mix. A record that cannot be read or makes no sense counts
as absent (the schedule then runs at once) and is reported.

The worker keeps its records in memory too, and its schedule goes by those: a record that
cannot be saved (a read-only state directory, a directory in the record's place) is
reported once, and never stops a backup, nor makes the schedule repeat one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from henbackup.files import read_record, write_atomically

_FIELDS = ("last_success", "last_attempt", "changed_since", "last_failure")


@dataclass(frozen=True)
class ScheduleRecord:
    """What a worker's schedule goes by for one backup (or repository operation)."""

    last_success: float | None = None  # epoch seconds
    last_attempt: float | None = None  # the start of the latest run, however it ended
    changed_since: float | None = None  # the first change seen by the watch, not yet saved
    last_failure: float | None = None  # the start of the latest run that ended in failure

    @property
    def failed(self) -> bool:
        """The latest run ended in failure (a restic error, a hook, its job process killed)."""
        return self._unsuccessful and self.last_failure == self.last_attempt

    @property
    def unfinished(self) -> bool:
        """The latest run has no end: henbackup stopped during it (a daemon stop or crash,
        its worker killed). A record written before `last_failure` existed counts every
        unsuccessful run so."""
        return self._unsuccessful and self.last_failure != self.last_attempt

    @property
    def _unsuccessful(self) -> bool:
        attempt, success = self.last_attempt, self.last_success
        return attempt is not None and (success is None or attempt > success)

    @property
    def unsaved_changes(self) -> bool:
        """Changes were seen after the start of the last successful run."""
        if self.changed_since is None:
            return False
        return self.last_success is None or self.changed_since >= self.last_success


class StateStore:
    """Reads and writes ScheduleRecords under `directory` (the daemon's $STATE_DIRECTORY)."""

    def __init__(
        self,
        directory: str | Path,
        on_problem: Callable[[str], None],
        on_unsaved: Callable[[str, str], None] = lambda message, error: None,
    ) -> None:
        """`on_problem(message)` hears about every record that had to be treated as absent;
        `on_unsaved(message, error)` about a record that cannot be saved (once, until a save
        of it works again)."""
        self.directory = Path(directory)
        self.on_problem = on_problem
        self.on_unsaved = on_unsaved
        self._known: dict[str, ScheduleRecord] = {}  # what this process recorded, saved or not
        self._unsaved: set[str] = set()

    def path(self, key: str) -> Path:
        return self.directory / key

    def load(self, key: str) -> ScheduleRecord:
        """The record: as recorded by this store, else as stored (empty when missing,
        unreadable or corrupt; read once)."""
        if key not in self._known:
            self._known[key] = self._read(key)
        return self._known[key]

    def _read(self, key: str) -> ScheduleRecord:
        path = self.path(key)
        try:
            text = read_record(path).decode()
        except FileNotFoundError:
            return ScheduleRecord()
        except (OSError, UnicodeDecodeError) as error:
            self.on_problem(f"{path}: cannot read the run record ({error}); treating it as absent")
            return ScheduleRecord()
        try:
            return _parse(text)
        except (ValueError, RecursionError) as error:  # RecursionError: nested too deeply
            self.on_problem(f"{path}: corrupt run record ({error}); treating it as absent")
            return ScheduleRecord()

    def save(self, key: str, record: ScheduleRecord) -> None:
        """Replace the stored record atomically; raises OSError when it cannot."""
        data = {name: getattr(record, name) for name in _FIELDS}
        write_atomically(self.path(key), (json.dumps(data) + "\n").encode())

    def record_attempt(self, key: str, when: float) -> ScheduleRecord:
        """Note that a run starts at `when`; returns the record."""
        return self._keep(key, replace(self.load(key), last_attempt=when))

    def record_change(self, key: str, when: float) -> ScheduleRecord:
        """Note that the watch saw a change at `when` (kept until a run saves it)."""
        return self._keep(key, replace(self.load(key), changed_since=when))

    def record_failure(self, key: str, when: float) -> ScheduleRecord:
        """Note that the run started at `when` failed; returns the record."""
        return self._keep(key, replace(self.load(key), last_failure=when))

    def record_success(self, key: str, when: float) -> ScheduleRecord:
        """Note that the run started at `when` succeeded; returns the record.

        `when` is the run's start: what changed during the run may not be in it.
        """
        return self._keep(key, replace(self.load(key), last_success=when))

    def _keep(self, key: str, record: ScheduleRecord) -> ScheduleRecord:
        """Remember `record`, and save it if the disk lets us (never raises)."""
        self._known[key] = record
        try:
            self.save(key, record)
        except OSError as error:
            if key not in self._unsaved:
                self._unsaved.add(key)
                reason = error.strerror or str(error)
                message = (
                    f"{self.path(key)}: cannot save the run record ({reason}); backups go on,"
                    " but after a restart their schedule counts from the last record saved"
                )
                self.on_unsaved(message, reason)
        else:
            self._unsaved.discard(key)
        return record


def _parse(text: str) -> ScheduleRecord:
    """The record in `text`; raises ValueError saying what is wrong."""
    data = json.loads(text)  # json.JSONDecodeError is a ValueError
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    values: dict[str, float | None] = {}
    for name in _FIELDS:
        value = data.get(name)
        if value is not None and not _seconds(value):
            raise ValueError(f"{name} is not a number of seconds: {value!r}")
        values[name] = None if value is None else float(value)
    return ScheduleRecord(**values)


# Times a record may hold: from the epoch to the year 2242. Outside, datetime.fromtimestamp
# (the schedule's triggers) raises OSError or ValueError, and the worker would die at start.
_LATEST = 2.0**33


def _seconds(value: object) -> bool:
    """Whether a JSON value is a time in range (bool is an int to Python, not here)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return math.isfinite(value) and 0 <= value < _LATEST
