"""`henbackupctl`: the client of the running daemon (SPEC "henbackupctl").

The control protocol arrives with the daemon; until then this only finds the socket.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from henbackup import __version__

DEFAULT_SOCKET = "/run/henbackup/control.sock"
EXIT_UNREACHABLE = 3


def get_parser() -> argparse.ArgumentParser:
    """The command line (also read by argparse-manpage to write henbackupctl(1))."""
    parser = argparse.ArgumentParser(prog="henbackupctl", description="Talk to henbackup.")
    parser.add_argument(
        "--socket",
        default=os.environ.get("HENBACKUP_SOCKET", DEFAULT_SOCKET),
        help="control socket (default: $HENBACKUP_SOCKET or %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--version", action="version", version=f"henbackupctl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("status", help="every backup and repository: state, last and next run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(args.socket)
        except OSError as error:
            print(
                f"henbackupctl: cannot reach the daemon at {args.socket}: {error.strerror} "
                "(is henbackup.service running?)",
                file=sys.stderr,
            )
            return EXIT_UNREACHABLE
    print("henbackupctl: this daemon does not answer control requests yet", file=sys.stderr)
    return EXIT_UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
