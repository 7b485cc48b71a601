"""sd_notify: READY, RELOADING, STOPPING, STATUS and the watchdog (henbackup(8)).

Outside systemd (no NOTIFY_SOCKET) every call does nothing. libsystemd's sd_notify (through
systemd-python) is used rather than the `sdnotify` package, which encodes messages as
Latin-1 and silently drops a STATUS= line such as "running: pictures→aws 42%". Sending
never raises: the master calls it from its loop, between signals.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from systemd import daemon


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """How often to ping: half of WatchdogSec=, or None when the watchdog is off or not ours."""
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


class Notifier:
    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        self._enabled = bool(env.get("NOTIFY_SOCKET"))
        self._status: str | None = None
        self.watchdog_interval = watchdog_interval(env)

    def _send(self, *lines: str) -> bool:
        """Returns whether the message went out. A signal arriving while it is sent (its
        handler only records it) does not lose it; a notify socket that refuses it (systemd
        gone) costs that message only, never the caller."""
        if not self._enabled:
            return True
        while True:
            try:
                daemon.notify("\n".join(lines))
                return True
            except InterruptedError:
                continue
            except OSError:
                return False

    def ready(self) -> None:
        self._send("READY=1")

    def reloading(self) -> None:
        self._send("RELOADING=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def status(self, text: str) -> None:
        """Set STATUS=; repeated identical lines are not sent again."""
        if text != self._status and self._send(f"STATUS={text}"):
            self._status = text
