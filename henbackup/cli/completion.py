"""Shell completion of henbackup and henbackupctl.

The scripts are generated from the argparse parsers by shtab at build time
(completion_scripts.py). Names are asked at TAB time from `henbackupctl --complete
KIND`, which answers from the running daemon when its socket answers within a second or
two, else from the configuration. It prints names, one a line, or nothing: never an error
on the user's command line, and it exits 0 either way.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from henbackup.cli import Parser
from henbackup.config.dirs import config_path
from henbackup.protocol import DEFAULT_SOCKET, build_request, frame

KINDS = ("backups", "repositories", "jobs", "snapshots")
QUICK = 1.0  # seconds for status and queue, which the daemon answers at once
SLOW = 3.0  # list-snapshots runs restic: what it lists by then, or nothing

# metavar -> what completes it: one of KINDS, or the shell's own files or directories.
BY_METAVAR = {
    "BACKUP": "backups",
    "REPOSITORY": "repositories",
    "JOB_ID": "jobs",
    "SNAPSHOT": "snapshots",
    "FILE": "file",
    "DIR": "directory",
    "SOCKET": "file",  # --socket, which has no metavar
}


def names(kind: str, socket_path: str, config: str | None, repository: str | None) -> list[str]:
    """The names of `kind`: from the daemon, else from the configuration (--config given:
    from it only, as `henbackup --config FILE backup` will read it)."""
    if config is None:
        found = _from_daemon(kind, socket_path, repository)
        if found is not None:
            return found
    return _from_config(kind, config)


def _from_daemon(kind: str, socket_path: str, repository: str | None) -> list[str] | None:
    """None when the daemon does not answer (or says no); snapshots: [] then, as the
    configuration knows none."""
    if kind in ("backups", "repositories"):
        return _strings(_ask(socket_path, build_request("status", {}), QUICK), kind, "name")
    if kind == "jobs":
        return _strings(_ask(socket_path, build_request("queue", {}), QUICK), "jobs", "job")
    request = build_request("list-snapshots", {"repository": repository})
    return _strings(_ask(socket_path, request, SLOW), "snapshots", "short_id") or []


def _strings(reply: dict[str, Any] | None, rows: str, key: str) -> list[str] | None:
    """reply[rows][*][key], those that are strings; None without such a list."""
    found = reply.get(rows) if reply else None
    if not isinstance(found, list):
        return None
    return [row[key] for row in found if isinstance(row, dict) and isinstance(row.get(key), str)]


def _ask(path: str, payload: dict[str, Any], budget: float) -> dict[str, Any] | None:
    """The daemon's reply, or None when it does not give one within `budget` seconds."""
    deadline = time.monotonic() + budget
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.settimeout(budget)
            sock.connect(path)
            sock.sendall(frame(payload))
            received = b""
            while True:
                lines = received.split(b"\n")
                for line in lines[:-1]:
                    message = json.loads(line)
                    if not {"event", "waiting"} & message.keys():  # they come before the reply
                        return message if message.get("ok") else None
                received = lines[-1]
                sock.settimeout(max(deadline - time.monotonic(), 0.01))
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                received += chunk
        except (OSError, ValueError, AttributeError):  # AttributeError: a line not an object
            return None


def _from_config(kind: str, config: str | None) -> list[str]:
    if kind not in ("backups", "repositories"):
        return []  # jobs and snapshots only the daemon knows
    from henbackup.config.load import load_config  # only when the daemon did not answer

    loaded = load_config(config_path(config))
    return sorted(loaded.backups if kind == "backups" else loaded.repositories)


def complete_main(argv: list[str]) -> int:
    """`henbackupctl --complete KIND [--socket S] [--config F] [--repository R]`."""
    parser = Parser(prog="henbackupctl --complete", add_help=False)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--socket", default=os.environ.get("HENBACKUP_SOCKET", DEFAULT_SOCKET))
    parser.add_argument("--config")
    parser.add_argument("--repository")
    try:
        args = parser.parse_args(argv)
        found = names(args.kind, args.socket, args.config, args.repository)
    except (Exception, SystemExit):  # a TAB press shows names or nothing
        return 0
    for name in found:
        if name.isprintable() and " " not in name:  # one a line, one word each
            print(name)
    return 0


# The shell functions the generated scripts call for dynamic names. They pass on what the
# line says: --socket (henbackupctl), --config (henbackup), the repository before SNAPSHOT.
