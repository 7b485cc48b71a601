"""`henbackupctl`: the client of the running daemon (henbackupctl(1))."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable

from henbackup import __version__
from henbackup.cli import Parser, exit_now, reader_left
from henbackup.printable import printable
from henbackup.protocol import (
    DEFAULT_SOCKET,
    DENIED,
    ControlReply,
    build_request,
    frame,
    reply_error,
)

TYPE_CHECKING = False  # as typing.TYPE_CHECKING is, without importing typing (3 ms)
if TYPE_CHECKING:
    from typing import Any, NoReturn

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_DENIED = 0, 1, 2, 3, 4
MAX_REPLY_LINE = 256 << 20  # a status of thousands of backups is a few MiB
EXIT_BY_CODE = {"failed": EXIT_FAILED, "usage": EXIT_USAGE, "permission": EXIT_DENIED}
TIMEOUT = 30.0


class Unreachable(Exception):
    """The daemon's control socket does not answer."""


def get_parser() -> argparse.ArgumentParser:
    """The command line (also read by argparse-manpage to write henbackupctl(1))."""
    parser = Parser(prog="henbackupctl", description="Talk to the running henbackup daemon.")
    parser.add_argument(
        "--socket",
        default=os.environ.get("HENBACKUP_SOCKET", DEFAULT_SOCKET),
        help="control socket (default: $HENBACKUP_SOCKET or %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    parser.add_argument("--version", action="version", version=f"henbackupctl {__version__}")
    # --json is global (henbackupctl(1)), and accepted after the command too, where people type it.
    after = Parser(add_help=False)
    after.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="as above")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[after], help=help, description=help)

    command("status", "every backup and repository: state, last run, next run, queue")
    snapshots = command("list-snapshots", "snapshots, newest first")
    snapshots.add_argument("repository", metavar="REPOSITORY", nargs="?", help="default: all")
    snapshots.add_argument("-b", "--backup", metavar="BACKUP", help="only this backup's")
    restore = command("restore-snapshot", "restore a snapshot (through the queue; root only)")
    restore.add_argument("repository", metavar="REPOSITORY")
    restore.add_argument("snapshot", metavar="SNAPSHOT", help="a snapshot id, short or long")
    where = restore.add_mutually_exclusive_group()
    where.add_argument(
        "--target",
        metavar="DIR",
        help="restore into DIR, made now; if DIR exists, into a new directory inside it"
        " (default: a new directory inside the state directory)",
    )
    where.add_argument(
        "--in-place",
        action="store_true",
        help="restore over the original paths, if nobody but root can change them",
    )
    restore.add_argument(
        "--include",
        metavar="PATH",
        action="append",
        default=[],
        help="restore only PATH (repeatable)",
    )
    _queue_options(restore)
    backup = command("backup", "run a backup now (through the queue)")
    backup.add_argument("backup", metavar="BACKUP")
    backup.add_argument(
        "--repository", metavar="REPOSITORY", help="only to this one of its repositories"
    )
    _queue_options(backup)
    check = command("check", "check a repository's integrity (through the queue)")
    check.add_argument("repository", metavar="REPOSITORY")
    check.add_argument(
        "--read-data-subset",
        metavar="SUBSET",
        help="also read this part of the data: 5%%, 1/10, 100M",
    )
    _queue_options(check)
    prune = command(
        "prune", "apply every backup's retention, then prune (through the queue; root only)"
    )
    prune.add_argument("repository", metavar="REPOSITORY")
    _queue_options(prune)
    command("queue", "running and waiting jobs, in the order they will run")
    cancel = command("cancel", "cancel a waiting or running job (restic stops cleanly)")
    cancel.add_argument("job", metavar="JOB_ID", help="as shown by queue and status")
    logs = command("logs", "henbackup's events from the journal")
    logs.add_argument("-b", "--backup", metavar="BACKUP", help="only this backup's events")
    logs.add_argument(
        "-r", "--repository", metavar="REPOSITORY", help="only this repository's events"
    )
    logs.add_argument("--job", metavar="JOB_ID", help="only this job's events")
    logs.add_argument("-n", "--lines", metavar="N", type=int, help="only the last N events")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    return parser


def _queue_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--priority",
        metavar="P",
        help="immediate, next, superior, normal, inferior, on-idle or an integer",
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="return once the daemon has accepted the job"
    )


def request(
    path: str, payload: dict[str, Any], on_event: Callable[[ControlReply], None] | None = None
) -> tuple[ControlReply, bytes]:
    """Send one request; return the daemon's reply, and its line as it came, passing the
    events before it to `on_event`. Raises Unreachable. A request that waits for a job
    waits as long as it runs.

    A socket the caller may not open is the daemon saying no, as its own refusal is.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        try:
            _connect(sock, path)
        except PermissionError:
            refusal = reply_error("permission", DENIED)
            return refusal, frame(refusal)
        except OSError as error:
            raise _unreachable(path, error) from None
        # A refused caller is answered without being read: its reply is there to read even
        # when sending the request hits a closed socket.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(frame(payload))
        try:
            stream = sock.makefile("rb")
            while line := stream.readline(MAX_REPLY_LINE + 1):
                message = _message(line, path)
                if payload.get("wait"):  # it answered: the job's events may be hours apart
                    sock.settimeout(None)
                if "waiting" in message:  # the daemon's word that the request waits
                    continue
                if "event" not in message:
                    return message, line
                if on_event is not None and isinstance(message["event"], dict):
                    on_event(message["event"])
        except OSError as error:
            raise _unreachable(path, error) from None
    raise Unreachable(f"the daemon at {path} closed the connection without answering")


def _message(line: bytes, path: str) -> dict[str, Any]:
    """One line of the daemon's answer; Unreachable if it is not a whole JSON object (what
    answers on the socket is not the daemon, or not this version of it)."""
    try:
        if len(line) > MAX_REPLY_LINE or not line.endswith(b"\n"):
            raise ValueError("no end of line")
        message = json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        message = None
    if not isinstance(message, dict):
        raise Unreachable(f"the daemon at {path} sent a malformed answer")
    return message


def _connect(sock: socket.socket, path: str) -> None:
    """Connect, waiting up to TIMEOUT while the daemon's backlog is full (a busy daemon
    answers EAGAIN at once to a socket with a timeout, which is not unreachable)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _nearest_existing(path: str) -> dict[str, Any] | None:
    """The directory at or above `path` that exists, as this process sees it: the daemon
    checks it sees the same one (its unit may give it its own /tmp)."""
    while True:
        try:
            seen = os.lstat(path)
        except OSError:
            if path == os.path.dirname(path):
                return None
            path = os.path.dirname(path)
            continue
        return {"path": path, "device": seen.st_dev, "inode": seen.st_ino}


def _unreachable(path: str, error: OSError) -> Unreachable:
    return Unreachable(f"cannot reach the daemon at {path}: {error.strerror or error}")


def _payload(args: argparse.Namespace) -> dict[str, Any]:
    """The request for the parsed command line: the command's declared fields."""
    options = vars(args).copy()
    if getattr(args, "target", None):
        options["target"] = os.path.abspath(args.target)  # the daemon has another cwd
        options["target_base"] = _nearest_existing(options["target"])
    if hasattr(args, "no_wait"):
        options["wait"] = not args.no_wait
    return build_request(args.command, options)


PROGRESS = ("backup", "restore-snapshot", "check", "prune")  # long: their steps are shown


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Completion and logs (which reads the journal) are imported when asked for only: every
    # other command starts without them.
    if argv[:1] == ["--complete"]:  # what the shell completion asks (not in --help)
        from henbackup.cli.completion import complete_main

        return complete_main(argv[1:])
    args = get_parser().parse_args(argv)
    if args.command == "logs":
        from henbackup.cli.logs import show_logs

        return show_logs(args)
    progress = None
    if args.command in PROGRESS and not args.json:
        from henbackup.cli.progress import ProgressDisplay

        progress = ProgressDisplay(sys.stdout, sys.stdout.isatty())
    try:
        reply, line = request(args.socket, _payload(args), progress)
    except Unreachable as error:
        print(f"henbackupctl: {error} (is henbackup.service running?)", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        print("\nhenbackupctl: stopped waiting; the job goes on", file=sys.stderr)
        return 130
    finally:
        if progress is not None:
            progress.close()
    return _show(args, reply, line)


def _show(args: argparse.Namespace, reply: ControlReply, line: bytes) -> int:
    """Print the reply (data first, also when something failed); returns the exit code.
    `line` is the reply as the daemon sent it: JSON on one line, as --json gives a program."""
    try:
        if args.json and sys.stdout.isatty():  # indented for a person
            print(json.dumps(reply, indent=2))
        elif args.json and line.isascii() and b"\r" not in line:  # as the daemon sends it
            sys.stdout.buffer.write(line)  # encoding it again would cost 3 ms at 1,000 backups
        elif args.json:  # not from our daemon: in ASCII, whatever it holds
            print(json.dumps(reply))
        elif reply.get("ok") or reply.get("snapshots") or reply.get("jobs"):
            from henbackup.cli.views import SHOW  # not for --json: a quicker start

            for line in SHOW[args.command](reply, time.time()):
                print(printable(line))  # names, paths, messages: others may have written them
    except BrokenPipeError:  # `status | head -1`: the exit code still says the daemon's answer
        reader_left(sys.stdout)
    except (KeyError, TypeError, ValueError, AttributeError):  # not the shape this version knows
        print("henbackupctl: the daemon's answer is not of the shape expected", file=sys.stderr)
        return EXIT_FAILED
    if reply.get("ok"):
        return EXIT_OK
    error = printable(str(reply.get("error") or "the daemon refused"))
    print(f"henbackupctl: {error}", file=sys.stderr)
    code = reply.get("code")
    return EXIT_BY_CODE.get(code, EXIT_FAILED) if isinstance(code, str) else EXIT_FAILED


def command() -> NoReturn:
    """The `henbackupctl` program (its console script): main(), then exit at once."""
    exit_now(main())


if __name__ == "__main__":
    command()
