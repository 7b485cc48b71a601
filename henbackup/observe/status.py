"""The daemon's one status model: what runs, what waits, how every run last ended.

Fed by the job events that job processes send up to the master, read by STATUS=,
`henbackupctl status`, `henbackupctl queue` and the metrics alike, without any lock: the
queue's order comes from the events too (job.queued carries the ticket's arrival number,
job.started and job.queued the job process's pid). A job process that dies without a word
(SIGKILL) has its jobs forgotten by `owner_gone` when the master reaps it, so that no row
runs or waits forever. Tickets of processes outside this daemon (a `henbackup backup` run
by hand) send no event here: the caller reads them from the queue's files, and `queue()`
places them among the daemon's own. The results of finished runs are kept in a
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

from henbackup.files import read_record, write_atomically
from henbackup.humanize import relative
from henbackup.scheduler.ticket import Ticket

RESULTS = ("succeeded", "failed", "cancelled")
ENDINGS = {f"job.{result}": result for result in RESULTS}
WATCHER_FAILED = "watcher failed: watched backups run on schedule only"
CONFIG_REJECTED = (
    "new configuration rejected, the previous one runs (journalctl HENBACKUP_EVENT=config.invalid)"
)
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
class RunHistory:
    """The history of one RunKey's runs since the state directory was created."""

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
    priority: int = 0  # Priority.effective
    position: int | None = None  # as job.queued told it; `queue()` gives the one of now
    percent: float | None = None
    bytes_done: int | None = None  # read (a backup) or written (a restore)
    total_bytes: int | None = None
    seconds_remaining: float | None = None
    bytes_sent: int | None = None  # a backup's upload so far
    send_rate: float | None = None  # bytes per second, over the last seconds
    pid: int = 0  # its job process (0: not said)
    queued_at: float | None = None  # when it entered the host-wide queue
    sequence: int | None = None  # its arrival number in the host-wide queue
    ticket: str = ""  # the queue ticket it runs under, when not its own (a backup's forget)
    stalled: bool = False  # said to make no progress (job.stalled), and has not moved since
    paused: bool = False  # preempted (job.paused), until job.resumed

    @property
    def ticket_id(self) -> str:
        """What the queue calls it (and `henbackupctl cancel` takes)."""
        return self.ticket or self.job

    @property
    def title(self) -> str:
        """`pictures→aws-ireland`, or `check aws-ireland` for a repository's own job."""
        if self.key.backup:
            return f"{self.key.backup}→{self.key.repository}"
        return f"{self.key.operation} {self.key.repository}"


@dataclass(frozen=True)
class WorkerView:
    """One worker as the master last told the model (its own loop's news, no lock)."""

    name: str
    kind: str  # backup, repository
    state: str  # master/states.State's value: starting, running, backoff, fatal…
    running: bool = False  # a run (hooks and jobs) is in progress in its job process
    next_run: float | None = None  # epoch seconds of its next scheduled run


class StatusModel:
    def __init__(self, path: Path | None = None) -> None:
        """`path`: where finished results are kept (None: in memory only)."""
        self.path = path
        self.records: dict[RunKey, RunHistory] = {}
        self.problems: list[str] = []  # what could not be read of the kept results
        if path is not None:
            self.records, self.problems = _load(path)
        self.live: dict[str, LiveJob] = {}
        self.workers: dict[str, WorkerView] = {}  # by key: `backup:NAME`, `repository:NAME`
        self.watcher: str | None = None  # the watcher's state (None: no backup is watched)
        self.stopping = False
        self.config_path: Path | None = None  # named in the hint when no backup is defined
        self.config_rejected: float | None = None  # when the last reload was, if rejected

    def daemon_changed(
        self,
        workers: Iterable[tuple[str, WorkerView]],
        stopping: bool,
        config_path: Path | None = None,
    ) -> None:
        """The master's workers and whether it stops, after any change of theirs."""
        self.workers, self.stopping = dict(workers), stopping
        self.config_path = config_path

    def worker_changed(self, key: str, view: WorkerView) -> None:
        """One worker's news (its state, its run, its next run), the others unchanged."""
        self.workers[key] = view

    def watcher_changed(self, state: str | None) -> None:
        """The watcher's state (starting, running, backoff, fatal…), None when there is none."""
        self.watcher = state

    def status_line(self) -> str:
        """One line (STATUS=, the top of `henbackupctl status`):
        `2 backups; running: pictures→aws 42%; queued: 1; failed: music; next: …`; a watcher
        that gave up is said too: no change starts a backup then."""
        workers = self.workers.values()
        backups = sum(1 for worker in workers if worker.kind == "backup")
        running = [_activity(job) for job in self.running()]
        queued = len(self.waiting())
        fatal = [worker.name for worker in workers if worker.state == "fatal"]
        parts = [f"{backups} backup{'s' if backups != 1 else ''}"]
        if self.stopping:
            parts.append("stopping")
        parts.append(f"running: {', '.join(running)}" if running else "idle")
        if queued:
            parts.append(f"queued: {queued}")
        if fatal:
            parts.append(f"failed: {', '.join(fatal)}")
        if self.watcher == "fatal":
            parts.append(WATCHER_FAILED)
        if self.config_rejected is not None:
            parts.append(CONFIG_REJECTED)
        upcoming = [(worker.next_run, worker.name) for worker in workers if worker.next_run]
        if upcoming and not self.stopping:
            when, name = min(upcoming)
            parts.append(f"next: {name} {relative(when - time.time())}")
        if not self.workers and not self.stopping and self.config_path is not None:
            parts.append(  # a fresh install: say what to do next
                f"define a backup in {self.config_path}, "
                "then: henbackup check-config; systemctl reload henbackup"
            )
        return "; ".join(parts)

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
            job = self._live(job_id, key, owner, state, fields, job)
        elif kind == "job.progress":  # a stalled run reports too: stalled until it moves
            progress = _progress(fields)
            job = replace(job, stalled=job.stalled and not _moved(job, progress), **progress)
        elif kind == "job.stalled":  # the run keeps its start and its progress
            job = replace(job, stalled=True)
        elif kind in ("job.paused", "job.resumed"):
            job = replace(job, paused=kind == "job.paused")
        # else a warning on its way: nothing changes
        self.live[job_id] = job
        return None

    def _live(
        self,
        job_id: str,
        key: RunKey,
        owner: str,
        state: str,
        fields: Mapping[str, Any],
        before: LiveJob | None = None,
    ) -> LiveJob:
        """A job in `state` from now; what its queued self knew of its ticket stays."""
        return LiveJob(
            job_id,
            key,
            owner,
            state,
            time.time(),
            trigger=str(fields.get("trigger") or ""),
            priority=_int(fields.get("priority")) or 0,
            position=_int(fields.get("position")) if state == "queued" else None,
            pid=_int(fields.get("pid")) or (before.pid if before else 0),
            queued_at=_float(fields.get("queued_at")) or (before.queued_at if before else None),
            sequence=_int(fields.get("sequence")) or (before.sequence if before else None),
            ticket=str(fields.get("ticket") or ""),
        )

    def _record(self, job: LiveJob, result: str, fields: Mapping[str, Any]) -> None:
        old = self.records.get(job.key, RunHistory())
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
        snapshots = _int(fields.get("snapshots"))  # counted by a forget, or a new repository's
        counted = replace(job.key, operation="backup")
        known = self.records.get(counted, RunHistory()).snapshots
        if snapshots is None and job.key.operation == "backup" and known is not None:
            snapshots = known + 1 if result == "succeeded" and fields.get("snapshot") else None
        if snapshots is not None and job.key.backup:
            self.recount({(counted.repository, counted.backup): snapshots})

    def recount(self, counts: Mapping[tuple[str, str], int]) -> None:
        """How many snapshots backups have in repositories, by (repository, backup), as a
        listing or a retention counted them."""
        for (repository, backup), count in counts.items():
            key = RunKey(repository, "backup", backup)
            self.records[key] = replace(self.records.get(key, RunHistory()), snapshots=count)

    def owner_gone(self, owner: str) -> list[LiveJob]:
        """Forget the live jobs of a process that ended; returns those it never ended."""
        gone = [job for job in self.live.values() if job.owner == owner]
        for job in gone:
            del self.live[job.job]
        return gone

    def queue(self, outsiders: Iterable[Ticket] = ()) -> list[LiveJob]:
        """The host-wide queue as the events tell it: running jobs in arrival order, then
        waiting ones in the order they will run, each with its position (1 runs next).

        `outsiders`: the living tickets read from the queue's files; those of jobs this
        model does not know (processes outside the daemon, or a job whose first event is
        still on its way) take their places among the daemon's own."""
        known = self.ticket_ids()
        jobs = [*self.live.values(), *(_outsider(t) for t in outsiders if t.job_id not in known)]
        running = sorted((j for j in jobs if j.state == "running"), key=_arrival)
        waiting = sorted((j for j in jobs if j.state == "queued"), key=_turn)
        return [
            *(replace(job, position=None) for job in running),
            *(replace(job, position=place) for place, job in enumerate(waiting, start=1)),
        ]

    def ticket_ids(self) -> set[str]:
        """The queue tickets of the jobs the events told of."""
        return {job.ticket_id for job in self.live.values()}

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

    def items(self) -> Iterable[tuple[RunKey, RunHistory]]:
        return sorted(self.records.items())


def _activity(job: LiveJob) -> str:
    """`pictures→aws-ireland 42%`, `check aws-ireland`, `… 42% (stalled)`, `… (paused)`."""
    activity = f"{job.title} {job.percent:g}%" if job.percent is not None else job.title
    if job.paused:
        return f"{activity} (paused)"
    return f"{activity} (stalled)" if job.stalled else activity


def _arrival(job: LiveJob) -> tuple[float, int]:
    return (job.queued_at or job.since, job.sequence or 0)


def _turn(job: LiveJob) -> tuple[int, float, float]:
    """The queue's order (scheduler.ticket.order_key): greater priority first, then the
    first to arrive; Priority.effective orders as the priority does."""
    sequence = math.inf if job.sequence is None else job.sequence
    return (-job.priority, sequence, job.queued_at or job.since)


def _outsider(ticket: Ticket) -> LiveJob:
    """A ticket of the queue's files as a live job of nobody's here."""
    return LiveJob(
        ticket.job_id,
        RunKey(ticket.repository, ticket.operation, ticket.backup or ""),
        "",
        "queued" if ticket.state == "waiting" else "running",
        ticket.queued_at,
        priority=ticket.priority.effective,
        pid=ticket.pid,
        queued_at=ticket.queued_at,
        sequence=ticket.sequence,
    )


def _moved(job: LiveJob, progress: Mapping[str, Any]) -> bool:
    """Whether `progress` got further than the job had got (what restic reports: a restic
    that read ahead and now only uploads reports no more until its end: what it sent does)."""
    further = [
        (progress["bytes_done"], job.bytes_done),
        (progress["bytes_sent"], job.bytes_sent),
        (progress["percent"], job.percent),
    ]
    return any(now is not None and (then is None or now > then) for now, then in further)


def _progress(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "percent": _float(fields.get("percent")),
        "bytes_done": _int(fields.get("bytes_done")),
        "total_bytes": _int(fields.get("total_bytes")),
        "seconds_remaining": _float(fields.get("seconds_remaining")),
        "bytes_sent": _int(fields.get("bytes_sent")),
        "send_rate": _float(fields.get("send_rate")),
    }


def _record_json(record: RunHistory) -> dict[str, Any]:
    data = asdict(record)
    data["runs"] = dict(record.runs)
    return data


# The most the kept results may weigh: 1,000 backups on two repositories, each with its
# backups, forgets and restores and a last error of 1,000 characters, make 10 MiB.
MAX_RESULTS_BYTES = 32 << 20


def _load(path: Path) -> tuple[dict[RunKey, RunHistory], list[str]]:
    """The kept results, and what could not be read of them (one line each): a file that
    cannot be read (a link, a FIFO that would block the master before READY, one too big)
    counts as no results, an entry that makes no sense as no entry."""
    try:
        data = json.loads(read_record(path, MAX_RESULTS_BYTES))
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


def _entry(item: object) -> tuple[RunKey, RunHistory]:
    """One kept result; raises ValueError unless every member is one of its own, typed."""
    entry = _checked(item, _ENTRY, required=("key",))
    last = entry.get("last")
    return RunKey(**_checked(entry["key"], _KEY, required=("repository", "operation"))), RunHistory(
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
    """A str that can be written out again (JSON lets a lone surrogate in: "\\ud800")."""
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


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
