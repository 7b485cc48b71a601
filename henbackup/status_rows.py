"""The status reply's rows, declared once: `henbackupctl status --json` is {"ok", "status"
(the STATUS= line), "daemon": {"pid", "config", "watcher" (the watcher's state, as
WorkerStatus.worker says a worker's; null when no backup is watched), "config_rejected"
(when the last reload was, if its configuration was rejected; else null)}, "backups": [{"name",
WorkerStatus..., "repositories": [StatusRow...]}], "repositories": [{"name",
WorkerStatus..., "operations": [{"operation", StatusRow...}]}]}. Each member says what its
value may be as a JSON schema: the tests check the daemon's replies with it. (The master
builds each row as a plain dict of these members, in this order, since a dataclass per row
costs ten times more (master/commands.py); henbackupctl only reads the JSON.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Schema = Mapping[str, Any]
_NULL: Schema = {"type": "null"}
_EPOCH_OR_NULL: Schema = {  # seconds, after 2001
    "anyOf": [{"type": "number", "exclusiveMinimum": 1_000_000_000}, _NULL]
}
_SNAPSHOT_ID: Schema = {"type": "string", "pattern": "^([0-9a-f]{8}|[0-9a-f]{64})$"}
JOB_ID: Schema = {"type": "string", "pattern": "^[0-9a-f]{8}$"}  # jobs/job.py new_job_id
RESULTS = ("succeeded", "failed", "cancelled")


def _member(schema: Schema) -> Any:
    return dataclasses.field(metadata={"schema": schema})


def _running(schema: Schema) -> Any:
    """A member only a running job has (None otherwise)."""
    return dataclasses.field(default=None, metadata={"schema": schema})


@dataclass(frozen=True)
class StatusRow:
    """One backup→repository, or one repository operation: now, and how it last went."""

    repository: str = _member({"type": "string", "minLength": 1})
    state: str = _member({"enum": ["idle", "queued", "running", "paused"]})
    job: str | None = _member({"anyOf": [JOB_ID, _NULL]})  # the job waiting or running
    position: int | None = _member({"type": ["integer", "null"], "minimum": 1})  # queued
    percent: float | None = _member({"type": ["number", "null"], "minimum": 0, "maximum": 100})
    last_attempt: float | None = _member(_EPOCH_OR_NULL)
    last_success: float | None = _member(_EPOCH_OR_NULL)
    result: str | None = _member({"enum": [*RESULTS, None]})
    duration: float | None = _member({"type": ["number", "null"], "minimum": 0})
    error: str | None = _member({"type": ["string", "null"], "pattern": "^[^\\n]*$"})
    snapshot: str | None = _member({"anyOf": [_SNAPSHOT_ID, _NULL]})
    snapshots: int | None = _member({"type": ["integer", "null"], "minimum": 0})
    limits: str | None = _member({"type": ["string", "null"]})  # the last run's resources
    cpu_sec: float | None = _member({"type": ["number", "null"], "minimum": 0})  # it used
    memory_peak: int | None = _member({"type": ["integer", "null"], "minimum": 0})
    # A running job's transfer: bytes read (or restored) of the total, bytes sent to the
    # repository and the rate achieved lately (bytes per second), seconds left (jobs/job.py).
    bytes_done: int | None = _running({"type": ["integer", "null"], "minimum": 0})
    total_bytes: int | None = _running({"type": ["integer", "null"], "minimum": 0})
    bytes_sent: int | None = _running({"type": ["integer", "null"], "minimum": 0})
    send_rate: float | None = _running({"type": ["number", "null"], "minimum": 0})
    seconds_remaining: float | None = _running({"type": ["number", "null"], "minimum": 0})


@dataclass(frozen=True)
class WorkerStatus:
    """A backup's or repository's worker: its state, whether a run is in progress, and when
    it runs next."""

    worker: str | None = _member(
        {"enum": ["stopped", "starting", "running", "backoff", "fatal", "stopping", None]}
    )
    run: str = _member({"enum": ["idle", "running"]})
    next_run: float | None = _member(_EPOCH_OR_NULL)


def member_schemas(declared: type[StatusRow | WorkerStatus]) -> dict[str, Schema]:
    """Each member's name and JSON schema, in the reply's order."""
    return {member.name: member.metadata["schema"] for member in dataclasses.fields(declared)}
