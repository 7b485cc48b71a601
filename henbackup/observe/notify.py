"""sd_notify: READY, RELOADING, STOPPING, STATUS and the watchdog (henbackup(8)).

Outside systemd (no NOTIFY_SOCKET) every call does nothing. The message goes out on a
non-blocking datagram socket of our own, not through libsystemd's sd_notify, whose sendmsg
blocks: a PID 1 that reads late (busy, or its queue filled by a local flood) would hang the
master's one loop. A state or STATUS= line that cannot be queued now rides on the next
message (with WatchdogSec=, a ping comes at least every half of it); a lost ping is not
sent again. The `sdnotify` package is not used either: it encodes messages as Latin-1 and
silently drops a STATUS= line such as "running: pictures→aws 42%". Sending never raises:
the master calls it from its loop, between signals. A NOTIFY_SOCKET of another shape than
a path or an @abstract name (vsock:…) turns notifications off; `Notifier.problem` says why,
and the master says it at start (a daemon.error event).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

SUN_PATH = 108  # the size of sockaddr_un's sun_path on Linux
FLAGS = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """How often to ping: half of WatchdogSec=, or None when the watchdog is off or not ours."""
    usec, pid = _count(env.get("WATCHDOG_USEC")), env.get("WATCHDOG_PID")
    if not usec or (pid and _count(pid) != os.getpid()):
        return None  # also when either is of the wrong shape, as sd_watchdog_enabled does
    return usec / 2_000_000


def _count(value: str | None) -> int | None:
    """A positive decimal integer such as systemd writes, else None."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 18:
        return None
    return int(value) or None


def notify_address(value: str) -> tuple[str | None, str | None]:
    """NOTIFY_SOCKET as sendto takes it (a path, or `@name`: the abstract name NUL name),
    and why notifications are off when it is of another shape (a vsock: address, a
    relative path, too long)."""
    address = "\0" + value[1:] if value.startswith("@") else value
    if not value.startswith(("/", "@")):
        return None, f"NOTIFY_SOCKET={value!r} is neither a path nor an @abstract name"
    if len(address) < 2 or len(os.fsencode(address)) > SUN_PATH:
        return None, f"NOTIFY_SOCKET={value!r} is not a unix socket address"
    return address, None


class Notifier:
    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        self._address: str | None = None
        self.problem: str | None = None  # why notifications are off though systemd asked
        if env.get("NOTIFY_SOCKET"):
            self._address, self.problem = notify_address(env["NOTIFY_SOCKET"])
        self._status: str | None = None
        # What could not be queued, by what it says (the state, STATUS): it rides on the
        # next message, so that a READY=1 lost at start reaches systemd with the next
        # watchdog ping, not never. A newer line of the same kind replaces it.
        self._unsent: dict[str, str] = {}
        self.watchdog_interval = watchdog_interval(env)

    def _send(self, line: str, kind: str = "") -> bool:
        """Returns whether the message went out. A socket of its own for each message, as
        sd_notify does: the forked workers inherit none. A full queue (EAGAIN, ENOBUFS) or
        a notify socket gone (ECONNREFUSED, ENOENT) costs that message only, never the
        caller; EINTR is retried (by Python itself, PEP 475)."""
        if self._address is None:
            return True  # outside systemd: nothing to tell
        if kind:
            self._unsent.pop(kind, None)
        message = "\n".join([*self._unsent.values(), line]).encode()  # UTF-8, whatever the locale
        try:
            with socket.socket(socket.AF_UNIX, FLAGS) as sock:
                sock.sendto(message, self._address)
        except OSError:
            if kind:
                self._unsent[kind] = line
            return False
        self._unsent.clear()
        return True

    def ready(self) -> None:
        self._send("READY=1", "state")

    def reloading(self) -> None:
        self._send("RELOADING=1", "state")

    def stopping(self) -> None:
        self._send("STOPPING=1", "state")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")  # a late ping is worth nothing: the next one comes

    def status(self, text: str) -> None:
        """Set STATUS=; repeated identical lines are not sent again (a lost one rides on
        the next message)."""
        if text != self._status:
            self._send(f"STATUS={text}", "status")
            self._status = text
