"""The daemon's one status model: what runs, what waits, how every run last ended.

Fed by the job events that job processes send up to the master, read by STATUS=,
`henbackupctl status` and the metrics alike. The results of finished runs are kept in a
small JSON file in the state directory, so that a restart does not forget when a backup
last succeeded; live jobs are not kept (a restart ends them). What cannot be read of that
file (not JSON, nested too deeply, an entry of the wrong shape) counts as absent, and the
model says so in `problems`.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from henbackup.files import write_atomically

RESULTS = ("succeeded", "failed", "cancelled")
ENDINGS = {f"job.{result}": result for result in RESULTS}
# Listing snapshots is a question, not a job whose health anyone watches: not recorded.
UNRECORDED = frozenset({"snapshots"})


@dataclass(frozen=True, order=True)
class RunKey:
    """What a result is about: one operation of one backup (or repository) on a repository."""

    repository: str
    operation: str  # backup, forget, restore, check, prune, snapshots
    backup: str = ""  # empty for a repository's own operations (check, prune)


@dataclass(frozen=True)
class LastRun:
    started: float  # epoch seconds
    result: str  # succeeded, failed, cancelled
    duration: float | None = None
    error: str | None = None
    snapshot: str | None = None
    job: str = ""
    limits: str | None = None  # the resources it ran under (limits/place.py)
    cpu_sec: float | None = None  # what its programs used, where the cgroup measures it
    memory_peak: int | None = None


@dataclass(frozen=True)
class RunRecord:
    """Everything known of one RunKey's runs since the state directory was created."""

    last: LastRun | None = None
    last_success: float | None = None  # when the last successful run started
    runs: Mapping[str, int] = field(default_factory=dict)  # result → count
    bytes_added: int = 0
    snapshots: int | None = None  # how many the backup has in the repository, when known


@dataclass(frozen=True)
class LiveJob:
    """A job that waits in the queue or runs now."""

    job: str
    key: RunKey
    owner: str  # who runs its process: a worker's key, or a one-off request's id
    state: str  # queued, running
    since: float  # epoch seconds of its latest change of state
    trigger: str = ""
    priority: int = 0
    position: int | None = None
    percent: float | None = None
    bytes_done: int | None = None
    total_bytes: int | None = None
    seconds_remaining: float | None = None

    @property
    def title(self) -> str:
        """`pictures→aws-ireland`, or `check aws-ireland` for a repository's own job."""
        if self.key.backup:
            return f"{self.key.backup}→{self.key.repository}"
        return f"{self.key.operation} {self.key.repository}"


class StatusModel:
    def __init__(self, path: Path | None = None) -> None:
        """`path`: where finished results are kept (None: in memory only)."""
        self.path = path
        self.records: dict[RunKey, RunRecord] = {}
        self.problems: list[str] = []  # what could not be read of the kept results
        if path is not None:
            self.records, self.problems = _load(path)
        self.live: dict[str, LiveJob] = {}

    def apply(self, kind: str, fields: Mapping[str, Any], owner: str) -> LiveJob | None:
        """Take in one job event; returns the job it ended, if it ended one."""
        job_id = str(fields.get("job") or "")
        if not job_id or not kind.startswith("job."):
            return None
        key = RunKey(
            str(fields.get("repository") or ""),
            str(fields.get("operation") or ""),
            str(fields.get("backup") or ""),
        )
        if kind in ENDINGS:
            ended = self.live.pop(job_id, None) or self._live(job_id, key, owner, "running", fields)
            if key.operation not in UNRECORDED:
                self._record(ended, ENDINGS[kind], fields)
            return ended
        state = "queued" if kind == "job.queued" else "running"
        job = self.live.get(job_id)
        if job is None or job.state != state or kind == "job.queued":
            job = self._live(job_id, key, owner, state, fields)
        elif kind == "job.progress":
            job = replace(job, **_progress(fields))
        # else a warning or a stall on its way: the run keeps its start and its progress
        self.live[job_id] = job
        return None

    def _live(
        self, job_id: str, key: RunKey, owner: str, state: str, fields: Mapping[str, Any]
    ) -> LiveJob:
        return LiveJob(
            job_id,
            key,
            owner,
            state,
            time.time(),
            trigger=str(fields.get("trigger") or ""),
            priority=_int(fields.get("priority")) or 0,
            position=_int(fields.get("position")) if state == "queued" else None,
        )

    def _record(self, job: LiveJob, result: str, fields: Mapping[str, Any]) -> None:
        old = self.records.get(job.key, RunRecord())
        started = job.since if job.state == "running" else time.time()
        duration = _float(fields.get("duration_sec"))
        last = LastRun(
            started,
            result,
            duration,
            fields.get("error") or None,
            fields.get("snapshot") or None,
            job.job,
            fields.get("limits") or None,
            _float(fields.get("cpu_sec")),
            _int(fields.get("memory_peak")),
        )
        self.records[job.key] = replace(
            old,
            last=last,
            last_success=started if result == "succeeded" else old.last_success,
            runs={**old.runs, result: old.runs.get(result, 0) + 1},
            bytes_added=old.bytes_added + (_int(fields.get("bytes_added")) or 0),
        )
        snapshots = _int(fields.get("snapshots"))  # counted by a backup, or by its forget
        if snapshots is not None and job.key.backup:
            counted = replace(job.key, operation="backup")
            self.records[counted] = replace(
                self.records.get(counted, RunRecord()), snapshots=snapshots
            )

    def owner_gone(self, owner: str) -> list[LiveJob]:
        """Forget the live jobs of a process that ended; returns those it never ended."""
        gone = [job for job in self.live.values() if job.owner == owner]
        for job in gone:
            del self.live[job.job]
        return gone

    def set_positions(self, positions: Mapping[str, int]) -> None:
        """Queue positions as the scheduler sees them now (job id → 1, 2, …)."""
        for job_id, job in self.live.items():
            if job.state == "queued":
                self.live[job_id] = replace(job, position=positions.get(job_id, job.position))

    def running(self) -> list[LiveJob]:
        return [job for job in self.live.values() if job.state == "running"]

    def waiting(self) -> list[LiveJob]:
        return [job for job in self.live.values() if job.state == "queued"]

    def jobs_of(self, key: RunKey) -> list[LiveJob]:
        return [job for job in self.live.values() if job.key == key]

    def save(self) -> None:
        """Keep the finished results; raises OSError when the state directory is not writable."""
        if self.path is None:
            return
        data = [{"key": asdict(key), **_record_json(record)} for key, record in self.items()]
        write_atomically(self.path, (json.dumps(data, indent=1) + "\n").encode())

    def items(self) -> Iterable[tuple[RunKey, RunRecord]]:
        return sorted(self.records.items())


def _progress(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "percent": _float(fields.get("percent")),
        "bytes_done": _int(fields.get("bytes_done")),
        "total_bytes": _int(fields.get("total_bytes")),
        "seconds_remaining": _float(fields.get("seconds_remaining")),
    }


def _record_json(record: RunRecord) -> dict[str, Any]:
    data = asdict(record)
    data["runs"] = dict(record.runs)
    return data


def _load(path: Path) -> tuple[dict[RunKey, RunRecord], list[str]]:
    """The kept results, and what could not be read of them (one line each): a file that
    cannot be read counts as no results, an entry that makes no sense as no entry."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}, []
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: nested too deep
        why = error.strerror if isinstance(error, OSError) else "not JSON, or nested too deeply"
        return {}, [f"{path}: cannot read the kept job results ({why}): they start afresh"]
    if not isinstance(data, list):
        return {}, [f"{path}: the kept job results are not a JSON list: they start afresh"]
    records = {}
    for item in data:
        with contextlib.suppress(ValueError):
            key, record = _entry(item)
            records[key] = record
    if len(records) < len(data):
        ignored = f"{len(data) - len(records)} of {len(data)}"
        return records, [f"{path}: {ignored} kept job results make no sense: ignored"]
    return records, []


def _entry(item: object) -> tuple[RunKey, RunRecord]:
    """One kept result; raises ValueError unless every member is one of its own, typed."""
    entry = _checked(item, _ENTRY, required=("key",))
    last = entry.get("last")
    return RunKey(**_checked(entry["key"], _KEY, required=("repository", "operation"))), RunRecord(
        last=LastRun(**_checked(last, _LAST, required=("started", "result"))) if last else None,
        last_success=entry.get("last_success"),
        runs=dict(entry.get("runs", {})),
        bytes_added=entry.get("bytes_added", 0),
        snapshots=entry.get("snapshots"),
    )


def _checked(
    data: object, shape: Mapping[str, Callable[[object], bool]], required: tuple[str, ...]
) -> dict[str, Any]:
    if not isinstance(data, dict) or any(name not in data for name in required):
        raise ValueError("missing members")
    if any(name not in shape or not shape[name](value) for name, value in data.items()):
        raise ValueError("unknown or mistyped members")
    return data


def _is_text(value: object) -> bool:
    return isinstance(value, str)


def _is_seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _optional(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or check(value)


_KEY = {"repository": _is_text, "operation": _is_text, "backup": _is_text}
_LAST = {
    "started": _is_seconds,
    "result": lambda value: value in RESULTS,
    "duration": _optional(_is_seconds),
    "error": _optional(_is_text),
    "snapshot": _optional(_is_text),
    "job": _is_text,
    "limits": _optional(_is_text),
    "cpu_sec": _optional(_is_seconds),
    "memory_peak": _optional(_is_count),
}
_ENTRY = {
    "key": lambda value: isinstance(value, dict),
    "last": lambda value: value is None or isinstance(value, dict),
    "last_success": _optional(_is_seconds),
    "runs": lambda value: (
        isinstance(value, dict) and all(_is_text(k) and _is_count(v) for k, v in value.items())
    ),
    "bytes_added": _is_count,
    "snapshots": _optional(_is_count),
}


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
