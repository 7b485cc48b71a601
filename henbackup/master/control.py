"""The control socket: henbackupctl's way in (SPEC "henbackupctl").

A unix stream socket in the runtime directory (or handed over by systemd socket activation),
mode 0660, group `henbackup` when that group exists. One request per connection: a JSON
object on one line, at most MAX_REQUEST bytes, within REQUEST_TIMEOUT seconds; one JSON
reply line. Callers are identified with SO_PEERCRED: root and members of `henbackup` only.
A slow, silent, huge or malformed client is dropped without delaying anyone else.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from henbackup.loop import Loop, Timer

MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT = 10.0
GROUP = "henbackup"
SD_LISTEN_FDS_START = 3

Request = dict[str, Any]
Reply = dict[str, Any]
Handler = Callable[[Request], Reply]


def reply_error(code: str, message: str) -> Reply:
    """A failed reply; `code` is one of usage, failed, permission (henbackupctl's exit codes)."""
    return {"ok": False, "code": code, "error": message}


def socket_from_systemd(env: Mapping[str, str] = os.environ) -> socket.socket | None:
    """The listening socket systemd passed (LISTEN_FDS), if it is for this process."""
    if env.get("LISTEN_PID") != str(os.getpid()) or int(env.get("LISTEN_FDS", "0")) < 1:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for our children
    return socket.socket(fileno=SD_LISTEN_FDS_START)


def bind(path: Path) -> socket.socket:
    """A listening socket at `path`, replacing a stale one, mode 0660 and group henbackup."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.bind(str(path))
    os.chmod(path, 0o660)
    with contextlib.suppress(KeyError):  # no such group: root only
        os.chown(path, -1, grp.getgrnam(GROUP).gr_gid)
    sock.listen(16)
    return sock


def peer_allowed(conn: socket.socket) -> bool:
    """Root, or a member of group `henbackup` (primary or supplementary)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    if uid == 0:
        return True
    try:
        group = grp.getgrnam(GROUP)
    except KeyError:
        return False
    return gid == group.gr_gid or _in_group(pid, group.gr_gid)


def _in_group(pid: int, gid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("Groups:"):
            return str(gid) in line.split()[1:]
    return False


@dataclass
class _Client:
    conn: socket.socket
    timer: Timer
    buffer: bytes = b""


@dataclass
class ControlServer:
    sock: socket.socket
    loop: Loop
    handle: Handler
    clients: dict[int, _Client] = field(default_factory=dict)

    def start(self) -> None:
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        if not peer_allowed(conn):
            message = f"permission denied: run as root or as a member of group {GROUP}"
            self._reply(conn, reply_error("permission", message))
            conn.close()
            return
        fd = conn.fileno()
        timer = self.loop.call_later(REQUEST_TIMEOUT, lambda: self._drop(fd))
        self.clients[fd] = _Client(conn, timer)
        self.loop.add_reader(fd, lambda: self._read(fd))

    def _read(self, fd: int) -> None:
        client = self.clients[fd]
        try:
            data = client.conn.recv(MAX_REQUEST)
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return
        client.buffer += data
        line, newline, _ = client.buffer.partition(b"\n")
        if len(line) > MAX_REQUEST:
            self._finish(fd, reply_error("usage", f"request larger than {MAX_REQUEST} bytes"))
        elif newline:
            self._finish(fd, self._answer(line))

    def _answer(self, line: bytes) -> Reply:
        try:
            request = json.loads(line)
        except ValueError:
            return reply_error("usage", "malformed request: expected one JSON object")
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return reply_error("usage", "malformed request: no command")
        return self.handle(request)

    def _finish(self, fd: int, reply: Reply) -> None:
        self._reply(self.clients[fd].conn, reply)
        self._drop(fd)

    @staticmethod
    def _reply(conn: socket.socket, reply: Reply) -> None:
        # Replies are small; a client that does not read one loses it, and nobody waits.
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(reply).encode() + b"\n")

    def _drop(self, fd: int) -> None:
        client = self.clients.pop(fd, None)
        if client is not None:
            client.timer.cancel()
            self.loop.remove_reader(fd)
            client.conn.close()

    def close(self) -> None:
        for fd in list(self.clients):
            self._drop(fd)
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
