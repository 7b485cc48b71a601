"""`henbackupctl`: the client of the running daemon (SPEC "henbackupctl")."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from henbackup import __version__
from henbackup.humanize import relative

DEFAULT_SOCKET = "/run/henbackup/control.sock"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_DENIED = 0, 1, 2, 3, 4
EXIT_BY_CODE = {"failed": EXIT_FAILED, "usage": EXIT_USAGE, "permission": EXIT_DENIED}
TIMEOUT = 30.0

Reply = dict[str, Any]


class Unreachable(Exception):
    """The daemon's control socket does not answer."""


def get_parser() -> argparse.ArgumentParser:
    """The command line (also read by argparse-manpage to write henbackupctl(1))."""
    parser = argparse.ArgumentParser(
        prog="henbackupctl", description="Talk to the running henbackup daemon."
    )
    parser.add_argument(
        "--socket",
        default=os.environ.get("HENBACKUP_SOCKET", DEFAULT_SOCKET),
        help="control socket (default: $HENBACKUP_SOCKET or %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    parser.add_argument("--version", action="version", version=f"henbackupctl {__version__}")
    # --json is global (SPEC), and accepted after the command too, where people type it.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="as above")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "status", parents=[after], help="every backup and repository: state, current job"
    )
    backup = commands.add_parser(
        "backup", parents=[after], help="run a backup now (through the queue)"
    )
    backup.add_argument("backup", metavar="BACKUP")
    backup.add_argument(
        "--no-wait", action="store_true", help="return once the daemon has accepted the request"
    )
    return parser


def request(path: str, payload: dict[str, Any]) -> Reply:
    """Send one request, return the daemon's reply; raises Unreachable."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        try:
            sock.connect(path)
            sock.sendall(json.dumps(payload).encode() + b"\n")
            data = sock.makefile("rb").readline()
        except OSError as error:
            reason = error.strerror or str(error)
            raise Unreachable(f"cannot reach the daemon at {path}: {reason}") from None
    if not data:
        raise Unreachable(f"the daemon at {path} closed the connection without answering")
    return json.loads(data)


def show_status(reply: Reply) -> None:
    print(reply["status"])
    rows = [("NAME", "KIND", "WORKER", "JOB", "NEXT RUN")]
    rows += [
        (w["name"], w["kind"], w["state"], w["job"], _when(w.get("next_run")))
        for w in reply["workers"]
    ]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


def _when(epoch: float | None) -> str:
    """`2026-11-26 14:00 (in 3 h)`, or `-` when nothing is scheduled."""
    if epoch is None:
        return "-"
    moment = datetime.fromtimestamp(epoch).astimezone()
    return f"{moment:%Y-%m-%d %H:%M} ({relative(epoch - time.time())})"


def status(args: argparse.Namespace) -> Reply:
    return request(args.socket, {"command": "status"})


def backup(args: argparse.Namespace) -> Reply:
    if not args.no_wait:
        return {
            "ok": False,
            "code": "usage",
            "error": "waiting is not available yet: add --no-wait",
        }
    return request(args.socket, {"command": "backup", "backup": args.backup})


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], Reply], Callable[[Reply], None]]] = {
    "status": (status, show_status),
    "backup": (backup, lambda reply: print("backup requested")),
}


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    send, show = COMMANDS[args.command]
    try:
        reply = send(args)
    except Unreachable as error:
        print(f"henbackupctl: {error} (is henbackup.service running?)", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not reply.get("ok"):
        print(f"henbackupctl: {reply.get('error', 'the daemon refused')}", file=sys.stderr)
        return EXIT_BY_CODE.get(reply.get("code", ""), EXIT_FAILED)
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        show(reply)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
