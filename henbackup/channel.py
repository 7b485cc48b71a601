"""The channel between a parent and its child (the master and a worker, a worker and its
job process) over a socketpair, and the messages it carries, declared once.

Ten frozen dataclasses, one per "type": a worker says Ready then a Heartbeat every few
seconds, JobState as its job process starts and ends, and which requests it merged without
following them (Accepted); a job process tells each job and
hook event (JobEvent, which its worker forwards with the requests waiting for it), a one-off
job process its OneOffResult; the master asks a worker to StartRun. The watcher (the
daemon's one inotify instance) is told what to Watch and Unwatch, and says what it saw
(WatchNews), which the master forwards to the backup's worker. How a job process ends is
its exit code (JobExit).

One message a line, as JSON. `decode_message` checks a received line against its
declaration: a line of the wrong shape is handed to the reader's `malformed` as a
ProtocolError, and the lines around it are read on, so that a child that sends one costs
its parent nothing. A child sends with `send`, which waits for room: its parent's loop
reads at once. A parent's loop sends with `send_without_waiting` (through Watched.send):
a child that does not read (hung, or stopped) must not stop the master, whom a member of
group henbackup can make send to it at will. A message that cannot be sent (the peer is
gone) is dropped: the pidfd tells the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, Self

from henbackup.errors import ProtocolError
from henbackup.protocol import (
    ERROR_CODES,
    FLAG,
    INTEGER,
    NUMBER,
    OBJECT,
    TEXT,
    TEXTS,
    Field,
    Type,
    checked_fields,
    frame,
    quoted,
)


class JobExit(IntEnum):
    """How a job process ends (its exit code); anything else: it crashed or was killed."""

    OK = 0
    FAILED = 1
    CANCELLED = 3  # henbackupctl cancel, or a stop

    @classmethod
    def orderly(cls, code: int) -> bool:
        """Whether a process ending with `code` ended in order: not killed, not crashed
        (its grant was released, so the queue re-planned without a nudge)."""
        return code in tuple(cls)


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
        fields = checked_fields(data, "type", cls.shape(), ("message", cls.TYPE), ProtocolError)
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
class Accepted(_Message):
    """A worker merged these requests into a waiting run that already answers as many as
    it follows: their clients are answered now, as --no-wait is, not when the run ends."""

    TYPE = "accepted"
    operation: str = _carrying(TEXT, "backup")
    requests: tuple[str, ...] = _requests()


@dataclass(frozen=True)
class Refused(_Message):
    """A worker cannot take these requests' run (MAX_WAITING runs already wait): their
    clients are answered now, with why."""

    TYPE = "refused"
    reason: str = _carrying(TEXT, "")
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
    Ready
    | Heartbeat
    | JobState
    | JobEvent
    | Accepted
    | StartRun
    | OneOffResult
    | Watch
    | Unwatch
    | WatchNews
)
MESSAGES: dict[str, type[ChannelMessage]] = {
    kind.TYPE: kind
    for kind in (
        Ready,
        Heartbeat,
        JobState,
        JobEvent,
        Accepted,
        Refused,
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
        raise ProtocolError(f"malformed message: unknown type {quoted(kind)}")
    return declared.from_dict(data)


# A peer that sends more without a newline is broken. A one-off's reply is one line: a
# list of 3,500 snapshots is 1 MiB, and 16 MiB hold some 50,000.
MAX_LINE = 16 << 20
MAX_UNREAD = 1 << 20  # a peer that leaves this much unread is hung: its hang check ends it

Malformed = Callable[[ProtocolError], None]


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()  # appended to: a long line costs its length, not its square
        self.unsent = b""  # send_without_waiting's bytes the peer has not taken yet

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        """(parent's end, child's end)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(parent), cls(child)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: ChannelMessage) -> bool:
        """Send one message; returns False when the peer is gone."""
        try:
            self.sock.sendall(encode_message(message))
        except OSError:
            return False
        return True

    def send_without_waiting(self, message: ChannelMessage) -> bool:
        """Queue one message and send what the socket takes now (a loop never waits for a
        child that does not read); False when the peer is gone or left MAX_UNREAD unread."""
        if len(self.unsent) > MAX_UNREAD:
            return False
        self.unsent += encode_message(message)
        return self.flush()

    def flush(self) -> bool:
        """Send what the socket takes now of the unsent bytes; False when the peer is gone."""
        try:
            sent = self.sock.send(self.unsent, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.unsent = b""
            return False
        self.unsent = self.unsent[sent:]
        return True

    def receive(self, malformed: Malformed) -> list[ChannelMessage] | None:
        """Read what is available (call when readable); None at end of file."""
        data = self.sock.recv(1 << 20)
        if not data:
            return None
        self._buffer += data
        lines: list[bytearray] = []
        if b"\n" in data:
            *lines, rest = self._buffer.split(b"\n")
            self._buffer = bytearray(rest)
        if len(self._buffer) > MAX_LINE:
            raise ValueError("message too long")
        messages = []
        for line in filter(None, lines):
            try:
                messages.append(decode_message(line))
            except ProtocolError as error:
                malformed(error)
        return messages

    def drain(self, malformed: Malformed) -> list[ChannelMessage]:
        """Every message already sent by a peer that has exited (never waits for more: a
        grandchild may still hold the peer's end)."""
        self.sock.setblocking(False)
        messages: list[ChannelMessage] = []
        with contextlib.suppress(OSError, ValueError):  # EAGAIN: nothing more was sent
            while (received := self.receive(malformed)) is not None:
                messages += received
        return messages

    def close(self) -> None:
        self.sock.close()
