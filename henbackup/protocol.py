"""The messages between henbackup's processes, declared once: what henbackupctl asks and
is answered on the control socket, what a worker and its job processes tell their parent on
their channel (henbackup/channel.py), and how a job process exits.

Control requests. A request is one JSON object on one line: "command" names it, its other
members are the command's fields. REQUESTS declares each command's fields, their types and
which are required; `parse_request` checks a decoded request against its declaration
before anything acts on it, so that a request of the wrong shape costs one usage error
(henbackupctl exit 2) naming the field, never the daemon. henbackupctl builds its requests
from the same declarations. A field sent as null counts as not sent. A reply is a JSON
object with "ok" (a failed one: `reply_error`); the status reply's rows are declared here
(StatusRow), with the JSON schema of each member: the tests check the daemon against it.

Channel messages. Nine frozen dataclasses, one per "type": a worker says Ready then a
Heartbeat every few seconds, and JobState as its job process starts and ends; a job process
tells each job and hook event (JobEvent, which its worker forwards with the requests waiting
for it), a one-off job process its OneOffResult; the master asks a worker to StartRun. The
watcher (the daemon's one inotify instance) is told what to Watch and Unwatch, and says
what it saw (WatchNews), which the master forwards to the backup's worker.
`decode_message` checks a received line against its declaration: a child that sends a line
of the wrong shape costs one ProtocolError, never its parent.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Any, ClassVar, Self

from henbackup.errors import HenbackupError, ProtocolError, UsageError

DEFAULT_SOCKET = "/run/henbackup/control.sock"
GROUP = "henbackup"  # its members may use the control socket (what each may ask: permissions)
DENIED = f"permission denied: run as root or as a member of group {GROUP}"


@dataclass(frozen=True)
class Type:
    """What a field's JSON value may be; `name` is how an error message says it."""

    name: str
    accepts: Callable[[object], bool]


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no number


TEXT = Type("a string", lambda value: isinstance(value, str))
FLAG = Type("true or false", lambda value: isinstance(value, bool))
TEXTS = Type(
    "a list of strings",
    lambda value: isinstance(value, list) and all(isinstance(item, str) for item in value),
)
PRIORITY = Type("a string or an integer", lambda v: isinstance(v, str) or _is_integer(v))
INTEGER = Type("an integer", _is_integer)
NUMBER = Type("a number", lambda v: _is_integer(v) or isinstance(v, float))
OBJECT = Type(
    "an object", lambda value: isinstance(value, dict) and all(isinstance(k, str) for k in value)
)


@dataclass(frozen=True)
class Field:
    name: str
    type: Type
    required: bool = False


@dataclass(frozen=True)
class ControlRequest:
    """A request of the right shape: `fields` has every declared field, None when not sent."""

    command: str
    fields: Mapping[str, Any]

    def get(self, name: str) -> Any:
        """The field's value, or None when it was not sent (or is not the command's)."""
        return self.fields.get(name)


_PRIORITY = Field("priority", PRIORITY)
_WAIT = Field("wait", FLAG)  # false: answer once the job is accepted (--no-wait)

REQUESTS: dict[str, tuple[Field, ...]] = {
    "status": (),
    "queue": (),
    "cancel": (Field("job", TEXT, required=True),),
    "backup": (Field("backup", TEXT, required=True), Field("repository", TEXT), _PRIORITY, _WAIT),
    "list-snapshots": (Field("repository", TEXT), Field("backup", TEXT)),
    "restore-snapshot": (
        Field("repository", TEXT, required=True),
        Field("snapshot", TEXT, required=True),
        Field("target", TEXT),
        Field("in_place", FLAG),
        Field("include", TEXTS),
        _PRIORITY,
        _WAIT,
    ),
    "check": (
        Field("repository", TEXT, required=True),
        Field("read_data_subset", TEXT),
        _PRIORITY,
        _WAIT,
    ),
    "prune": (Field("repository", TEXT, required=True), _PRIORITY, _WAIT),
}


def parse_request(data: object) -> ControlRequest:
    """The request in `data` (decoded JSON); raises UsageError with one line naming what
    is wrong: not an object, no or an unknown command, an unknown, missing or mistyped field."""
    command = data.get("command") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(command, str):
        raise UsageError("malformed request: no command")
    declared = REQUESTS.get(command)
    if declared is None:
        raise UsageError(f"unknown command {_shown(command)}")
    fields = _checked(data, "command", declared, ("request", command), UsageError)
    return ControlRequest(command, MappingProxyType(fields))


def _checked(
    data: dict[str, Any],
    tag: str,
    declared: tuple[Field, ...],
    what: tuple[str, str],
    error: type[HenbackupError],
) -> dict[str, Any]:
    """Every declared field of `data` (None when not sent), its `tag` member aside; raises
    `error` naming the first unknown, missing or mistyped field. `what`: ("request",
    "cancel"), ("message", "job")."""
    (kind, name_of) = what
    names = {field.name for field in declared}
    for name in data:
        if name != tag and name not in names:
            raise error(f"malformed {kind}: {name_of} has no field {_shown(name)}")
    fields = {}
    for field in declared:
        value = data.get(field.name)
        if value is None and field.required:
            raise error(f"malformed {kind}: {name_of} needs {field.name!r}")
        if value is not None and not field.type.accepts(value):
            raise error(
                f"malformed {kind}: {field.name!r} of {name_of} must be {field.type.name},"
                f" not {_json_type(value)}"
            )
        fields[field.name] = value
    return fields


def decode(line: bytes) -> ControlRequest:
    """The request on one line of JSON; raises UsageError (also for JSON nested so deeply
    that decoding it would exhaust the stack)."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        raise UsageError("malformed request: expected one JSON object") from None
    return parse_request(data)


def build_request(command: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The request henbackupctl sends: `command` with the declared fields found in
    `options` (e.g. its parsed command line); the others are not the daemon's business."""
    declared = (field.name for field in REQUESTS[command])
    return {"command": command, **{name: options[name] for name in declared if name in options}}


# --- control replies --------------------------------------------------------------------

# A reply: a JSON object with "ok"; a failed one has "code" (ERROR_CODES) and "error".
ControlReply = dict[str, Any]
ERROR_CODES = ("usage", "failed", "permission")  # henbackupctl exits 2, 1 and 4


def reply_error(code: str, message: str) -> ControlReply:
    """A failed reply; `code` is one of ERROR_CODES (henbackupctl's exit codes)."""
    return {"ok": False, "code": code, "error": message}


def frame(message: Mapping[str, Any]) -> bytes:
    """One message on the wire (control socket and channels alike): JSON on one line."""
    return json.dumps(message).encode() + b"\n"


# --- the status reply --------------------------------------------------------------------
# `henbackupctl status --json`: {"ok", "status" (the STATUS= line), "daemon": {"pid",
# "config"}, "backups": [{"name", WorkerStatus..., "repositories": [StatusRow...]}],
# "repositories": [{"name", WorkerStatus..., "operations": [{"operation", StatusRow...}]}]}.
# Each member says what its value may be as a JSON schema: the tests check replies with it.

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

    def as_reply(self) -> dict[str, Any]:
        return dict(vars(self))  # plain values in order (asdict: deep, 10 times slower)


@dataclass(frozen=True)
class WorkerStatus:
    """A backup's or repository's worker: its state, whether a run is in progress, and when
    it runs next."""

    worker: str | None = _member(
        {"enum": ["stopped", "starting", "running", "backoff", "fatal", "stopping", None]}
    )
    run: str = _member({"enum": ["idle", "running"]})
    next_run: float | None = _member(_EPOCH_OR_NULL)

    def as_reply(self) -> dict[str, Any]:
        return dict(vars(self))  # plain values in order (asdict: deep, 10 times slower)


def member_schemas(declared: type[StatusRow | WorkerStatus]) -> dict[str, Schema]:
    """Each member's name and JSON schema, in the reply's order."""
    return {member.name: member.metadata["schema"] for member in dataclasses.fields(declared)}


# --- job processes' exit codes -----------------------------------------------------------


class JobExit(IntEnum):
    """How a job process ends (its exit code); anything else: it crashed or was killed."""

    OK = 0
    FAILED = 1
    CANCELLED = 3  # henbackupctl cancel, or a stop


# --- channel messages --------------------------------------------------------------------


class _Message:
    """A channel message: `TYPE` is its "type" member; each dataclass field declares one
    other member, with its JSON type (`_carrying`); one without a default is required."""

    TYPE: ClassVar[str]

    @classmethod
    def shape(cls) -> tuple[Field, ...]:
        return tuple(
            Field(member.name, member.metadata["type"], member.default is dataclasses.MISSING)
            for member in dataclasses.fields(cls)  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, Any]:
        members = dataclasses.fields(self)  # type: ignore[arg-type]
        return {
            "type": self.TYPE,
            **{member.name: getattr(self, member.name) for member in members},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """The message in `data` (its "type" already known); raises ProtocolError."""
        fields = _checked(data, "type", cls.shape(), ("message", cls.TYPE), ProtocolError)
        given = {name: value for name, value in fields.items() if value is not None}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})


def _carrying(json_type: Type, default: Any = dataclasses.MISSING) -> Any:
    """A message's member, whose JSON value must be of `json_type`."""
    return dataclasses.field(default=default, metadata={"type": json_type})


def _requests() -> Any:
    return _carrying(TEXTS, ())  # the control requests waiting for it (their ids)


@dataclass(frozen=True)
class Ready(_Message):
    """A worker is up: its first message."""

    TYPE = "ready"


@dataclass(frozen=True)
class Heartbeat(_Message):
    """A worker's loop is alive (sent every few seconds; silence means hung)."""

    TYPE = "heartbeat"


@dataclass(frozen=True)
class JobState(_Message):
    """A worker's job process started ("running") or ended ("idle", with its exit code and
    the requests its run answers); and when the worker runs next."""

    TYPE = "job"
    state: str = _carrying(Type('"running" or "idle"', lambda v: v in ("running", "idle")))
    next_run: float | None = _carrying(NUMBER, None)
    operation: str | None = _carrying(TEXT, None)
    exit: int = _carrying(INTEGER, JobExit.OK)
    requests: tuple[str, ...] = _requests()


@dataclass(frozen=True)
class JobEvent(_Message):
    """A job or hook event of a job process; its worker forwards it with `requests`."""

    TYPE = "event"
    kind: str = _carrying(TEXT)
    message: str = _carrying(TEXT)
    fields: Mapping[str, Any] = _carrying(OBJECT)
    requests: tuple[str, ...] = _requests()


@dataclass(frozen=True)
class StartRun(_Message):
    """The master asks a worker for a run (henbackupctl backup)."""

    TYPE = "run"
    operation: str = _carrying(TEXT, "backup")
    repository: str | None = _carrying(TEXT, None)
    priority: str | None = _carrying(TEXT, None)
    requests: tuple[str, ...] = _requests()


@dataclass(frozen=True)
class OneOffResult(_Message):
    """A one-off job process's reply to its henbackupctl request: sent as is, with "ok"."""

    TYPE = "result"
    reply: Mapping[str, Any] = _carrying(OBJECT)  # flattened on the wire, beside "type"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, **self.reply}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        reply = {name: value for name, value in data.items() if name != "type"}
        if not isinstance(reply.get("ok"), bool):
            raise ProtocolError("malformed message: result needs 'ok', true or false")
        if not reply["ok"] and reply.get("code") not in ERROR_CODES:
            raise ProtocolError(
                f"malformed message: a failed result's 'code' is one of {', '.join(ERROR_CODES)}"
            )
        if not isinstance(reply.get("error", ""), str | None):
            raise ProtocolError("malformed message: 'error' of result must be a string")
        return cls(reply)


@dataclass(frozen=True)
class Watch(_Message):
    """The master asks the watcher to watch a backup's paths (anew, if it watched them)."""

    TYPE = "watch"
    backup: str = _carrying(TEXT)
    paths: tuple[str, ...] = _carrying(TEXTS)
    excludes: tuple[str, ...] = _carrying(TEXTS, ())


@dataclass(frozen=True)
class Unwatch(_Message):
    """The master asks the watcher to stop watching a backup."""

    TYPE = "unwatch"
    backup: str = _carrying(TEXT)


@dataclass(frozen=True)
class WatchNews(_Message):
    """What the watcher saw of a backup's paths, forwarded by the master to its worker:
    `changes` changes, lost events (`overflow`), or a watch limit met (`limit` says which
    and how to raise it)."""

    TYPE = "watched"
    backup: str = _carrying(TEXT)
    changes: int = _carrying(INTEGER, 0)
    overflow: bool = _carrying(FLAG, False)
    limit: str | None = _carrying(TEXT, None)


ChannelMessage = (
    Ready | Heartbeat | JobState | JobEvent | StartRun | OneOffResult | Watch | Unwatch | WatchNews
)
MESSAGES: dict[str, type[ChannelMessage]] = {
    kind.TYPE: kind
    for kind in (
        Ready,
        Heartbeat,
        JobState,
        JobEvent,
        StartRun,
        OneOffResult,
        Watch,
        Unwatch,
        WatchNews,
    )
}


def encode_message(message: ChannelMessage) -> bytes:
    return frame(message.to_dict())


def decode_message(line: bytes) -> ChannelMessage:
    """The message on one line of JSON; raises ProtocolError with one line saying what is
    wrong (not JSON, no or an unknown type, a field missing, unknown or mistyped)."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        raise ProtocolError("malformed message: expected one JSON object") from None
    kind = data.get("type") if isinstance(data, dict) else None
    if not isinstance(kind, str):
        raise ProtocolError("malformed message: no type")
    declared = MESSAGES.get(kind)
    if declared is None:
        raise ProtocolError(f"malformed message: unknown type {_shown(kind)}")
    return declared.from_dict(data)


def _shown(name: str, limit: int = 40) -> str:
    """A client's string in an error message: quoted, escaped, and short."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), "null")
