"""Structured events (henbackup(8), EVENTS): one journal entry each, or one line on stderr
(JSON for pipes and files, readable text on a terminal).

`emit("job.succeeded", "pictures → aws: snapshot 1a2b", backup="pictures", ...)` sends
MESSAGE, PRIORITY, MESSAGE_ID, SYSLOG_IDENTIFIER=henbackup, HENBACKUP_EVENT and one
HENBACKUP_<NAME> field per keyword. Callers pass only secret-free values.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TextIO

from henbackup.printable import printable

IDENTIFIER = "henbackup"

# Stable per kind: `journalctl MESSAGE_ID=...` and the catalog rely on these never changing.
MESSAGE_IDS: dict[str, str] = {
    "daemon.started": "c17a673fde8e4aa5851695e7febc1481",
    "daemon.stopping": "37454ee2d375471ba9917f428fd44cbc",
    "config.reloaded": "8ac05e4dabec4cd9aaeaa75c42b4f77c",
    "config.invalid": "b269a3c25f6b484a8d88ee96b0552478",
    "secret.exposed": "8e53437624ea44b39ce7a749747be804",
    "child.started": "46d11ebd97234b0baaa126aa3ce5b620",
    "child.exited": "a065ec5568b54fa3b11c4a050c7e0681",
    "trigger.fired": "42d0ce379ab74211b5eea6c67f579c85",
    "watch.overflow": "eca0727a828847f5879c2bb0459e2a77",
    "watch.limit": "c0cb6e2203c64ecfa1d7f753f2c56ef5",
    "job.queued": "9db1b1a44b1c48e0a774db92c9cc8890",
    "job.started": "9c38347f5ea5463c963cf35faf5376ba",
    "job.progress": "09ab136f50fd46db8d308dd566d1a323",
    "job.succeeded": "46f20b6b5f294b549fbcca0d0183a6c3",
    "job.warning": "954a95c88fd548df850a04931685d363",
    "job.stalled": "fcb477c7315a49c1b8965fcc0b89b268",
    "job.paused": "868ec3a94db7474bbf52b91942a176b0",
    "job.resumed": "dfd0ca63c15b49e889ba82e320f1c90f",
    "job.failed": "a9e817b7809241c1a667ca60a3b1e22f",
    "job.cancelled": "a288b95b444940e3ae722c37556e07dd",
    "repository.initialized": "9dd063aa276c43aca7c9d413d74a7b55",
    "hook.started": "74d55b3aeaa4496a92aee99e9e445b58",
    "hook.succeeded": "642f3a6f6ef444f18e846e459a1cdf54",
    "hook.failed": "a38b0636ddbf415b9f1e26240eac29b4",
    "metrics.failed": "e6d8bba1c7ee4e93951623e7ce77876f",
    "status.unsaved": "981fef94cf3b4798aa4434b0823180aa",
    "status.unreadable": "d85b8908d3ee42b48b4324805c46f0ad",
    "daemon.error": "067f09bde23d48dc9500efbb2bee7fe8",
    "limits.unavailable": "5b1c0e7f3d8a4e52a6f1c9d04b7e2a31",
}

# syslog levels
ERR, WARNING, NOTICE, INFO = 3, 4, 5, 6
LEVEL_NAMES = {ERR: "error", WARNING: "warning", NOTICE: "notice", INFO: "info"}
LEVEL_WIDTH = 7  # "warning": messages line up
# SGR colours of the level's name on a terminal: red, yellow, bold; info stays plain.
LEVEL_COLOURS = {ERR: "31", WARNING: "33", NOTICE: "1"}
_PRIORITIES = {
    "config.invalid": ERR,
    "daemon.error": ERR,
    "job.failed": ERR,
    "hook.failed": WARNING,
    "secret.exposed": WARNING,
    "job.warning": WARNING,
    "job.stalled": WARNING,
    "watch.limit": WARNING,
    "metrics.failed": WARNING,
    "status.unsaved": WARNING,
    "status.unreadable": WARNING,
    "limits.unavailable": WARNING,
    "watch.overflow": NOTICE,
    "repository.initialized": NOTICE,
    "job.paused": NOTICE,
    "daemon.started": NOTICE,
    "daemon.stopping": NOTICE,
}

FieldValue = str | int | float | None


@dataclass(frozen=True)
class Event:
    kind: str
    message: str
    fields: tuple[tuple[str, str], ...]  # (HENBACKUP_NAME, value), None values left out

    @property
    def priority(self) -> int:
        return _PRIORITIES.get(self.kind, INFO)

    def journal_fields(self) -> dict[str, str]:
        """Every field of the journal entry, MESSAGE included."""
        return {
            "MESSAGE": self.message,
            "PRIORITY": str(self.priority),
            "MESSAGE_ID": MESSAGE_IDS[self.kind],
            "SYSLOG_IDENTIFIER": IDENTIFIER,
            "HENBACKUP_EVENT": self.kind,
            **dict(self.fields),
        }


def make_event(kind: str, message: str, **fields: FieldValue) -> Event:
    """Build an event; raises KeyError for a kind without a MESSAGE_ID (a programming error)."""
    if kind not in MESSAGE_IDS:
        raise KeyError(f"event kind {kind!r} has no MESSAGE_ID")
    pairs = tuple(
        (f"HENBACKUP_{name.upper()}", _text(value))
        for name, value in fields.items()
        if value is not None
    )
    return Event(kind, _utf8(message), pairs)


def _text(value: FieldValue) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return _utf8(str(value))


def _utf8(text: str) -> str:
    """`text` as valid UTF-8, for journald and JSON alike: a file name's bytes that are not
    UTF-8 (os.fsdecode's surrogate escapes) become `\\xNN`, as Python shows bytes."""
    try:
        text.encode()
    except UnicodeEncodeError:
        try:
            raw = text.encode(errors="surrogateescape")
        except UnicodeEncodeError:  # a surrogate that escapes no byte
            return text.encode(errors="backslashreplace").decode()
        return raw.decode(errors="backslashreplace")
    return text


def _journal_connected(stream: TextIO) -> bool:
    """True when `stream` is systemd's journal stream (systemd sets JOURNAL_STREAM=dev:inode)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def text_line(event: Event, moment: datetime, colour: bool = False) -> str:
    """One readable line: `2026-12-02 05:03:12 error   pictures→aws: backup failed: …`.

    The backup→repository the event is about leads the message unless it already does.
    Control characters (a file name's ESC, a restic error's newlines) cannot reach the terminal.
    """
    fields = dict(event.fields)
    backup, repository = fields.get("HENBACKUP_BACKUP"), fields.get("HENBACKUP_REPOSITORY")
    where = "→".join(name for name in (backup, repository) if name)
    message = event.message
    if where and not message.startswith(where):
        message = f"{where}: {message}"
    level = LEVEL_NAMES.get(event.priority, "info")
    padding = " " * (LEVEL_WIDTH - len(level))
    if colour and event.priority in LEVEL_COLOURS:
        level = f"\x1b[{LEVEL_COLOURS[event.priority]}m{level}\x1b[0m"
    return f"{moment:%Y-%m-%d %H:%M:%S} {level}{padding} {printable(message)}"


SINKS = ("json", "text", "journal")
SINK_VARIABLE = "HENBACKUP_EVENTS"  # `henbackup --events` sets it, so that children follow
OLD_SINK_NAMES = {"stderr": "json"}  # what HENBACKUP_EVENTS accepted before "text" existed


def wanted_sink() -> str | None:
    """The sink HENBACKUP_EVENTS forces, None when unset; raises ValueError if unknown."""
    wanted = os.environ.get(SINK_VARIABLE, "")
    if not wanted:
        return None
    wanted = OLD_SINK_NAMES.get(wanted, wanted)
    if wanted not in SINKS:
        raise ValueError(f"{SINK_VARIABLE}={wanted!r} is not one of {', '.join(SINKS)}")
    return wanted


def choose_sink(stream: TextIO) -> str:
    """HENBACKUP_EVENTS when it names a sink; else the journal when `stream` is systemd's
    journal stream, text on a terminal, JSON lines on a pipe or a file."""
    try:
        wanted = wanted_sink()
    except ValueError:  # the command line checks it; a child must not die of it
        wanted = None
    if wanted is not None:
        return wanted
    if _journal_connected(stream):
        return "journal"
    return "text" if _is_terminal(stream) else "json"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):  # closed
        return False


def colour_supported(stream: TextIO) -> bool:
    """Colour on a terminal only, unless NO_COLOR is set (no-color.org) or TERM is dumb."""
    term = os.environ.get("TERM", "")
    return _is_terminal(stream) and not os.environ.get("NO_COLOR") and term not in ("", "dumb")


class Emitter:
    """Sends events to journald when running under systemd, else lines to `stream`: readable
    text on a terminal, JSON lines otherwise (`choose_sink`; `use_journal` forces it)."""

    def __init__(self, stream: TextIO | None = None, use_journal: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        sink = choose_sink(self.stream)
        if use_journal is not None:  # what a test asks for
            sink = "journal" if use_journal else "json"
        self.use_journal = sink == "journal"
        if self.use_journal:  # imported where it is used: 14 ms of `henbackup backup`'s start
            from systemd import journal

            self._send = journal.send
        # Without a journal (or when it fails), text only where people read it.
        self.text = sink == "text" or (sink == "journal" and _is_terminal(self.stream))
        self.colour = self.text and colour_supported(self.stream)

    def __call__(self, kind: str, message: str, **fields: FieldValue) -> Event:
        event = make_event(kind, message, **fields)
        if not (self.use_journal and self._to_journal(event)):
            self._to_stream(event)
        return event

    def _to_journal(self, event: Event) -> bool:
        try:
            self._send(**event.journal_fields())
        # A stale socket (ConnectionRefusedError), a field journald refuses: fall back to the
        # stream, never drop the event, never crash the process.
        except (OSError, ValueError):
            return False
        return True

    def _to_stream(self, event: Event) -> None:
        if self.text:
            line = text_line(event, datetime.now().astimezone(), self.colour)
        else:  # the same shape as `journalctl -o json`: strings, the time in microseconds
            record = {"__REALTIME_TIMESTAMP": str(time.time_ns() // 1000)}
            record.update(event.journal_fields())
            line = json.dumps(record, ensure_ascii=False)
        # A full disk or a closed pipe under stderr loses the event, never the run it tells
        # of (nor a stop under way): there is nowhere left to say it.
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(line + "\n")
            self.stream.flush()


EmitFunction = Callable[..., Event]
