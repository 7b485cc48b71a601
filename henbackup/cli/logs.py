"""`henbackupctl logs`: henbackup's events, read from the journal (henbackup(8), EVENTS).

The formatting functions (`format_line`, `format_json`) are pure: they take one entry as
`systemd.journal.Reader` returns it (`__REALTIME_TIMESTAMP` a datetime, `PRIORITY` an int,
other fields str). `show_logs` does the reading, filtering and following.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from datetime import tzinfo
from pathlib import Path
from typing import Any

from henbackup.cli import reader_left
from henbackup.printable import printable
from systemd import journal

IDENTIFIER = "henbackup"
PREFIX = "HENBACKUP_"
FOLLOW_LINES = 10  # what -f shows before following, like `journalctl -f`
KIND_WIDTH = 15  # the longest kind in henbackup(8) ("daemon.stopping"): messages line up
INFO = 6  # syslog's default level, for an entry without PRIORITY
FILTERS = {
    "backup": "HENBACKUP_BACKUP",
    "repository": "HENBACKUP_REPOSITORY",
    "job": "HENBACKUP_JOB",
}
JOURNAL_DIRS = (Path("/run/log/journal"), Path("/var/log/journal"))
HINT = "run as root or as a member of systemd-journal or adm"
NO_JOURNAL = (
    "no journal on this machine: no journal files in /run/log/journal or /var/log/journal "
    "(systemd-journald does not run here, as in many containers; henbackup then writes its "
    "events on its standard error)"
)
NO_ENTRIES = (
    "no henbackup events in the journal yet: is the daemon running? (systemctl status henbackup)"
)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Entry = Mapping[str, Any]


class JournalUnreadable(Exception):
    """The journal cannot be opened, or this user may not read henbackup's part of it; the
    message says which, and what to do."""


# -- formatting (pure) ----------------------------------------------------------------------


def format_line(entry: Entry, tz: tzinfo | None = None) -> str:
    """Return one line for people: `2026-11-26 14:03:12 job.failed      MESSAGE`.

    The time is local (or in `tz`); an entry without HENBACKUP_EVENT (e.g. a traceback the
    daemon wrote to stderr) shows `-` as its kind.
    """
    moment = entry["__REALTIME_TIMESTAMP"].astimezone(tz)
    kind = printable(_text(entry.get(f"{PREFIX}EVENT", "-")))
    # One line per event even if a MESSAGE spans several, so that -n and grep stay line-based;
    # any user may write to the journal, and a message may quote a file name: no control
    # character reaches the terminal.
    message = printable(_text(entry.get("MESSAGE", "")))
    return f"{moment:%Y-%m-%d %H:%M:%S} {kind:<{KIND_WIDTH}} {message}".rstrip()


def format_json(entry: Entry, tz: tzinfo | None = None) -> dict[str, Any]:
    """Return the JSON object for one entry.

    Keys: `time` (ISO 8601 with offset and microseconds, local or in `tz`), `event` (None
    without HENBACKUP_EVENT), `message`, `priority` (int), then every other HENBACKUP_* field
    in name order, lowercased without the prefix, its value the string journald stores.
    """
    fields = {
        key.removeprefix(PREFIX).lower(): _text(value)
        for key, value in sorted(entry.items())
        if key.startswith(PREFIX) and key != f"{PREFIX}EVENT"
    }
    event = entry.get(f"{PREFIX}EVENT")
    return {
        # Always with microseconds: isoformat() drops them when zero, a shape that would vary.
        "time": entry["__REALTIME_TIMESTAMP"].astimezone(tz).isoformat(timespec="microseconds"),
        "event": None if event is None else _text(event),
        "message": _text(entry.get("MESSAGE", "")),
        "priority": _priority(entry.get("PRIORITY")),
        **fields,
    }


def json_line(entry: Entry, tz: tzinfo | None = None) -> str:
    """Return `format_json(entry)` as one line of JSON (non-ASCII kept as is)."""
    return json.dumps(format_json(entry, tz), ensure_ascii=False)


def _text(value: Any) -> str:
    """Return a field's value as a string.

    The Reader leaves bytes that are not UTF-8 as bytes, and gives a list for a field an
    entry carries several times; neither may break the output.
    """
    if isinstance(value, list):
        return " ".join(_text(item) for item in value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _priority(value: Any) -> int:
    """Return the syslog level the Reader converted, or INFO when it is missing or invalid."""
    return value if isinstance(value, int) else INFO


# -- reading --------------------------------------------------------------------------------


def show_logs(args: argparse.Namespace) -> int:
    """Print henbackup's journal entries as `args` asks; return the exit code.

    `args` has backup, repository, job, lines, follow and json. Returns 0 (also for nothing
    matching, Ctrl-C and a closed stdout), 1 when the journal cannot be read, 2 for -n < 0.
    When henbackup has no entry at all, stderr says so.
    """
    lines = FOLLOW_LINES if args.follow and args.lines is None else args.lines
    if lines is not None and lines < 0:
        print("henbackupctl: -n must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    write = json_line if args.json else format_line
    try:
        if args.follow:
            _end_on_ctrl_c()
        reader = open_reader(args)
        # Watch before reading: an entry written while the backlog prints still wakes us.
        poller = _poller(reader) if args.follow else None
        shown = _print_all(_backlog(reader, lines), write)
        if not shown and lines != 0 and not _filtered(args):
            print(f"henbackupctl: {NO_ENTRIES}", file=sys.stderr)
        if poller is not None:
            _follow(reader, poller, write)
    except JournalUnreadable as error:
        print(f"henbackupctl: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # Ctrl-C is how -f ends: not an error
        pass
    except BrokenPipeError:  # `henbackupctl logs | head`: the reader has seen enough
        reader_left(sys.stdout)
    return EXIT_OK


def _filtered(args: argparse.Namespace) -> bool:
    return any(getattr(args, option) is not None for option in FILTERS)


def _end_on_ctrl_c() -> None:
    """Make SIGINT raise KeyboardInterrupt, whatever we inherited.

    A program started with SIGINT ignored (a background job of a shell script, some CI
    runners) keeps it ignored, and Python then installs no handler: -f would never end.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)


def open_reader(args: argparse.Namespace) -> journal.Reader:
    """Return a Reader matching henbackup's entries and the filters in `args`.

    Raises JournalUnreadable when the journal cannot be opened or is not readable by us.
    """
    try:
        reader = journal.Reader()
    except OSError as error:
        raise JournalUnreadable(f"cannot read the journal: {error.strerror or error}") from None
    _check_readable(reader)
    # Matches on distinct fields are ANDed by journald: -b X -r Y means both; values of one
    # field are ORed. Any user may write entries of henbackup's identifier and fields: only
    # those of root's processes (the daemon's) and the caller's own count (_UID is
    # journald's, not the writer's, to set).
    reader.add_match(SYSLOG_IDENTIFIER=IDENTIFIER)
    for uid in sorted({0, os.getuid()}):
        reader.add_match(_UID=str(uid))
    for option, field in FILTERS.items():
        if getattr(args, option) is not None:
            reader.add_match(**{field: getattr(args, option)})
    return reader


def _check_readable(reader: journal.Reader) -> None:
    """Raise JournalUnreadable if there is no journal, or one we may not read.

    sd_journal_open skips what it may not open without an error, so an unprivileged user
    would silently see nothing. The daemon, a system service, logs to system*.journal.
    Only a denied file blames permissions: without journal files there is no journal.
    """
    for top in JOURNAL_DIRS:
        try:
            machines = sorted(path for path in top.iterdir() if path.is_dir())
        except FileNotFoundError:
            continue
        except PermissionError:
            raise _denied(top) from None
        for machine in machines:
            for path in (machine, *sorted(machine.glob("system*.journal"))):
                if not os.access(path, os.R_OK):
                    raise _denied(path)
    if not (reader.has_runtime_files() or reader.has_persistent_files()):
        raise JournalUnreadable(NO_JOURNAL)


def _denied(path: Path) -> JournalUnreadable:
    return JournalUnreadable(f"cannot read the journal: permission denied: {path} ({HINT})")


def _backlog(reader: journal.Reader, lines: int | None) -> Iterator[Entry]:
    """Yield the entries to show before following, oldest first: all, or the last `lines`.

    Leaves the reader on the newest entry, so that following starts right after it.
    """
    if lines is None:
        yield from reader
        return
    reader.seek_tail()
    if lines == 0:
        reader.get_previous()  # stand on the newest entry without showing it
        return
    first = reader.get_previous(lines)  # stops at the oldest when there are fewer
    if first:
        yield first
        yield from reader


def _poller(reader: journal.Reader) -> select.poll:
    """Return a poll object that wakes up when journald changes the journal."""
    poller = select.poll()
    poller.register(reader, reader.get_events())
    return poller


def _follow(reader: journal.Reader, poller: select.poll, write: Callable[[Entry], str]) -> None:
    """Print new entries as journald appends them, forever (Ctrl-C ends it)."""
    while True:
        # Not Reader.wait(): sd_journal_wait retries on EINTR, so Ctrl-C would not get through;
        # select.poll lets Python run the SIGINT handler.
        poller.poll(reader.get_timeout_ms())
        reader.process()  # consume the wake-up; new entries, if any, follow the position
        _print_all(reader, write)


def _print_all(entries: Iterator[Entry] | journal.Reader, write: Callable[[Entry], str]) -> int:
    """Print each entry as `write` formats it, then flush: -f output must not sit in a buffer.

    Returns how many were printed."""
    count = 0
    for entry in entries:
        print(write(entry))
        count += 1
    sys.stdout.flush()
    return count
