"""The control socket's protocol, declared once: what henbackupctl asks the master and
is answered (the channel between processes and its messages: channel.py; the status reply's
rows: status_rows.py).

A request is one JSON object on one line: "command" names it, its other members are the
command's fields. REQUESTS declares each command's fields, their types and which are
required; `parse_request` checks a decoded request against its declaration before anything
acts on it, so that a request of the wrong shape costs one usage error (henbackupctl exit 2)
naming the field, never the daemon. henbackupctl builds its requests from the same
declarations. A field sent as null counts as not sent. A reply is a JSON object with "ok"
(a failed one: `reply_error`). A request that waits for its job is first answered
{"waiting": REQUEST_ID} at once, then its job's events ({"event": {...}}), then the reply.

henbackupctl imports this module and none of the daemon's, so it declares its records as
namedtuples and imports typing for type checkers only: importing dataclasses would cost
henbackupctl a quarter of its start-up, and typing a tenth.
"""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Mapping
from types import MappingProxyType

from henbackup.errors import HenbackupError, UsageError

TYPE_CHECKING = False  # as typing.TYPE_CHECKING is, without importing typing
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SOCKET = "/run/henbackup/control.sock"
GROUP = "henbackup"  # its members may use the control socket (what each may ask: permissions)
DENIED = f"permission denied: run as root or as a member of group {GROUP}"


class Type(namedtuple("Type", ("name", "accepts"))):
    """What a field's JSON value may be: `accepts(value)` says whether a value is one, and
    `name` how an error message says it."""

    __slots__ = ()


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


class Field(namedtuple("Field", ("name", "type", "required"), defaults=(False,))):
    """A command's field: its name, its Type, and whether a request must send it."""

    __slots__ = ()


class ControlRequest(namedtuple("ControlRequest", ("command", "fields"))):
    """A request of the right shape: its command, and `fields`, a mapping of every field
    the command declares to its value (None when not sent)."""

    __slots__ = ()

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
        Field("target_base", OBJECT),  # how the client sees it (jobs/restore.seen_otherwise)
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
        raise UsageError(f"unknown command {quoted(command)}")
    fields = checked_fields(data, "command", declared, ("request", command), UsageError)
    return ControlRequest(command, MappingProxyType(fields))


def checked_fields(
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
            raise error(f"malformed {kind}: {name_of} has no field {quoted(name)}")
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
if TYPE_CHECKING:
    ControlReply = dict[str, Any]
else:
    ControlReply = dict
ERROR_CODES = ("usage", "failed", "permission")  # henbackupctl exits 2, 1 and 4


def reply_error(code: str, message: str) -> ControlReply:
    """A failed reply; `code` is one of ERROR_CODES (henbackupctl's exit codes)."""
    return {"ok": False, "code": code, "error": message}


def frame(message: Mapping[str, Any]) -> bytes:
    """One message on the wire (control socket and channels alike): JSON on one line."""
    return json.dumps(message).encode() + b"\n"


def quoted(name: str, limit: int = 40) -> str:
    """A client's string in an error message: quoted, escaped, and short."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), "null")
