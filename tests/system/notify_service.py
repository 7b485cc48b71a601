"""A tiny Type=notify service that proves the harness carries sd_notify and journal fields.

Usage: notify_service.py TOKEN. It logs `daemon.started`, then READY=1 with
STATUS=`status_text(0)`; each SIGHUP is a reload (RELOADING=1, `config.reloaded`, READY=1 with
the next generation); SIGTERM logs `daemon.stopping` and exits 0. Every journal entry carries
HENBACKUP_TEST_TOKEN=TOKEN, so a test finds its own entries and nobody else's.
"""

from __future__ import annotations

import signal
import sys

from systemd import daemon, journal

SIGNALS = {signal.SIGHUP, signal.SIGTERM}


def status_text(generation: int) -> str:
    """The one-line STATUS= for `generation`; non-ASCII on purpose (the spec's uses "→")."""
    return f"idle; pictures→aws-ireland ok; generation {generation}"


def log(event: str, token: str, generation: int) -> None:
    """One journal entry with the fields a henbackup event has, plus the test's token."""
    journal.send(
        f"test service: {event}, generation {generation}",
        SYSLOG_IDENTIFIER="henbackup-harness-test",
        HENBACKUP_EVENT=event,
        HENBACKUP_TEST_TOKEN=token,
        HENBACKUP_GENERATION=str(generation),
    )


def main(argv: list[str]) -> int:
    """Serve until SIGTERM; returns the exit status."""
    token = argv[0]
    # Blocked signals taken with sigwait: no handler can interleave with a notify call.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    generation = 0
    log("daemon.started", token, generation)
    daemon.notify(f"READY=1\nSTATUS={status_text(generation)}")
    while signal.sigwait(SIGNALS) == signal.SIGHUP:
        daemon.notify("RELOADING=1\nSTATUS=reloading")
        generation += 1
        log("config.reloaded", token, generation)
        daemon.notify(f"READY=1\nSTATUS={status_text(generation)}")
    daemon.notify("STOPPING=1\nSTATUS=stopping")
    log("daemon.stopping", token, generation)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
