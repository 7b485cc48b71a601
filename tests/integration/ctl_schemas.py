"""JSON schemas of `henbackupctl --json`: the stable contract of its machine-readable output.

The status rows are declared once, in henbackup/status_rows.py (StatusRow, WorkerStatus, each
member with its schema). The rest is derived from the code that builds each reply:
henbackup/master/commands.py (status, queue, cancel, the checks that answer at once),
henbackup/master/clients.py (the end of every job a waiting client gets, under "jobs"),
henbackup/master/jobs.py (a one-off request that does not wait), henbackup/jobs/entry.py
and henbackup/jobs/snapshots.py (list-snapshots and restore-snapshot),
henbackup/protocol.py (failed replies: reply_error).

Strict where the shape is known: every key required, nothing else allowed. `validate`
raises jsonschema's ValidationError with the path of the first mismatch.
"""

from __future__ import annotations

from typing import Any

import jsonschema

from henbackup.protocol import ERROR_CODES
from henbackup.status_rows import JOB_ID, RESULTS, StatusRow, WorkerStatus, member_schemas

Schema = dict[str, Any]

NULLABLE_STRING: Schema = {"type": ["string", "null"]}
NULLABLE_NUMBER: Schema = {"type": ["number", "null"]}
NULLABLE_COUNT: Schema = {"type": ["integer", "null"], "minimum": 0}
EPOCH: Schema = {"type": "number", "exclusiveMinimum": 1_000_000_000}  # seconds, after 2001
NULLABLE_EPOCH: Schema = {"anyOf": [EPOCH, {"type": "null"}]}
REQUEST_ID: Schema = {"type": "string", "pattern": "^r[0-9a-f]{8}$"}  # jobs.new_request_id
FULL_ID: Schema = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
SHORT_ID: Schema = {"type": "string", "pattern": "^[0-9a-f]{8}$"}
SNAPSHOT_ID: Schema = {"type": "string", "pattern": "^([0-9a-f]{8}|[0-9a-f]{64})$"}
NAME: Schema = {"type": "string", "minLength": 1}
OPERATIONS = ["backup", "restore", "check", "prune", "forget", "snapshots", "init"]
PRIORITY_LABEL: Schema = {
    "type": "string",
    "pattern": "^(immediate|next|superior|normal|inferior|on-idle|-?[0-9]+)$",
}


def _object(properties: dict[str, Schema], optional: tuple[str, ...] = ()) -> Schema:
    """An object with exactly these keys (all required but `optional`), nothing more."""
    return {
        "type": "object",
        "properties": properties,
        "required": [key for key in properties if key not in optional],
        "additionalProperties": False,
    }


# clients.py `_ended`: one finished job of a request the client waited for.
ENDED_JOB = _object(
    {
        "result": {"enum": list(RESULTS)},
        "job": JOB_ID,
        "operation": {"enum": OPERATIONS},
        "backup": NULLABLE_STRING,
        "repository": NAME,
        "snapshot": {"anyOf": [SNAPSHOT_ID, {"type": "null"}]},
        "duration_sec": NULLABLE_NUMBER,
        "error": NULLABLE_STRING,
    }
)
ENDED_JOBS: Schema = {"type": "array", "items": ENDED_JOB}

# protocol.py `reply_error`: what every refused request gets (exit 2, 1 or 4).
ERROR_REPLY = _object(
    {"ok": {"const": False}, "code": {"enum": list(ERROR_CODES)}, "error": {"type": "string"}}
)
USAGE_ERROR = {
    **ERROR_REPLY,
    "properties": {**ERROR_REPLY["properties"], "code": {"const": "usage"}},
}

# The failed end of a waited-for request: a reason, and the jobs that ended meanwhile.
_FAILURE_KEYS: dict[str, Schema] = {
    "code": {"enum": list(ERROR_CODES)},
    "error": {"type": "string", "minLength": 1},
}

# --- status (commands.status, _worker, _row) ------------------------------------------------

STATUS_ROW = member_schemas(StatusRow)  # the status-row contract: status_rows.py
WORKER = member_schemas(WorkerStatus)
STATUS = _object(
    {
        "ok": {"const": True},
        "status": {"type": "string", "pattern": "^[^\\n]+$"},
        "daemon": _object(
            {
                "pid": {"type": "integer", "minimum": 1},
                "config": NAME,
                "watcher": WORKER["worker"],
                "config_rejected": {"anyOf": [{"type": "number"}, {"type": "null"}]},
            }
        ),
        "backups": {
            "type": "array",
            "items": _object(
                {
                    "name": NAME,
                    **WORKER,
                    "repositories": {"type": "array", "items": _object(STATUS_ROW)},
                }
            ),
        },
        "repositories": {
            "type": "array",
            "items": _object(
                {
                    "name": NAME,
                    **WORKER,
                    "operations": {
                        "type": "array",
                        "items": _object({"operation": {"enum": ["check", "prune"]}, **STATUS_ROW}),
                    },
                }
            ),
        },
    }
)

# --- list-snapshots (entry._list_snapshots, snapshots.snapshot_row) ---------------------------

SNAPSHOT_ROW = _object(
    {
        "id": FULL_ID,
        "short_id": SHORT_ID,
        "time": {
            "type": "string",
            "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?[+-]\d\d:\d\d$",
        },
        "backup": NULLABLE_STRING,
        "repository": NAME,
        "host": {"type": "string"},
        "paths": {"type": "array", "items": {"type": "string"}},
        "tags": {"type": "array", "items": {"type": "string"}},
        "bytes_added": NULLABLE_COUNT,
    }
)
LIST_SNAPSHOTS = _object(
    {
        "ok": {"type": "boolean"},
        "snapshots": {"type": "array", "items": SNAPSHOT_ROW},
        "errors": {"type": "array", "items": {"type": "string"}},
        "jobs": ENDED_JOBS,
        **_FAILURE_KEYS,
    },
    optional=tuple(_FAILURE_KEYS),
)

# --- queue (commands.queue, _ticket_row) -----------------------------------------------------

QUEUE_ROW = _object(
    {
        "job": JOB_ID,
        "state": {"enum": ["waiting", "running", "paused"]},
        "position": {"type": ["integer", "null"], "minimum": 1},
        "operation": {"enum": OPERATIONS},
        "backup": NULLABLE_STRING,
        "repository": NAME,
        "priority": PRIORITY_LABEL,
        "pid": {"type": "integer", "minimum": 1},
        "queued_at": EPOCH,
        "percent": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
    }
)
QUEUE = _object({"ok": {"const": True}, "jobs": {"type": "array", "items": QUEUE_ROW}})

# --- backup, check, prune: waited for (clients.finish) or not (commands.backup) ---------------

WAITED = _object(
    {"ok": {"type": "boolean"}, "jobs": ENDED_JOBS, **_FAILURE_KEYS},
    optional=tuple(_FAILURE_KEYS),
)
BACKUP_ACCEPTED = _object(
    {"ok": {"const": True}, "request": REQUEST_ID, "accepted": {"const": "backup"}}
)
# jobs.start_one_off without waiting: restore-snapshot, check, prune.
ONE_OFF_ACCEPTED = _object(
    {
        "ok": {"const": True},
        "request": REQUEST_ID,
        "accepted": {"enum": ["restore-snapshot", "check", "prune"]},
        "target": {"type": ["string", "null"], "pattern": "^/"},
        "target_existed": {"type": "boolean"},  # restore-snapshot's: a new directory inside
    },
    optional=("target_existed",),
)

# --- restore-snapshot (entry._restore) -------------------------------------------------------

RESTORED = _object(
    {
        "ok": {"const": True},
        "job": JOB_ID,
        "snapshot": FULL_ID,
        "backup": NULLABLE_STRING,
        "target": {"type": "string", "pattern": "^/"},
        "target_existed": {"type": "boolean"},  # --target DIR existed: a new directory inside
        "files_restored": {"type": "integer", "minimum": 0},
        "bytes_restored": {"type": "integer", "minimum": 0},
        "jobs": ENDED_JOBS,
    }
)

# --- cancel (commands.cancel) ----------------------------------------------------------------

CANCEL = _object({"ok": {"const": True}, "job": JOB_ID, "was": {"enum": ["waiting", "running"]}})


def validate(document: object, schema: Schema) -> None:
    """Raise jsonschema.ValidationError unless `document` follows `schema`."""
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(document)
