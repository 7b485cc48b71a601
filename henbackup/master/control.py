"""The control socket: henbackupctl's way in (henbackupctl(1)).

A unix stream socket in the runtime directory (or handed over by systemd socket activation),
mode 0660, group `henbackup` when that group exists. One request per connection: a JSON
object on one line, at most MAX_REQUEST bytes, within REQUEST_TIMEOUT seconds. The answer is
JSON lines: for a client that waits for a job, `{"event": ...}` lines as the job goes, then
always one reply line, an object with "ok". Callers are identified with SO_PEERCRED: root
and members of `henbackup` only (what each may ask: permissions.py). A slow, silent, huge or
malformed client is dropped without delaying anyone else: nothing is ever written to a client
with a blocking call. Each request
is checked against its declared shape (henbackup/protocol.py) before a handler sees it, and
a handler's own failure costs that request a failed reply, never the daemon. At most
MAX_CONNECTIONS clients are served at once: beyond, the longest-silent one is dropped (or,
when every one waits for a job, the newcomer is told to come back). Members of `henbackup`
get all but the last KEPT_FOR_ROOT of them, and MAX_CONNECTIONS_OF_MEMBER each, so that no
member can lock root or the other members out.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from henbackup.errors import ConfigError, Problem, UsageError
from henbackup.loop import Loop, Timer
from henbackup.master.permissions import Peer, Privilege, operators_gid, peer_of
from henbackup.protocol import (
    DENIED,
    ControlReply,
    ControlRequest,
    decode,
    frame,
    reply_error,
)
from systemd import daemon

MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT = 10.0
# A waiting client that lets this much of its job's events pile up is dropped (256 clients
# could otherwise hold a GiB of the master's memory); a final reply is queued whatever its
# size (a long snapshot list), the client waits for that.
MAX_BACKLOG = 256 << 10
FLUSH_TIMEOUT = 30.0  # to take the last reply once the answer is complete
MAX_CONNECTIONS = 256  # far below LimitNOFILE= (systemd/henbackup.service)
ACCEPT_PAUSE = 1.0  # out of descriptors with no client to drop: accept again after this
# Root's own, whatever members hold: root can always ask for status and cancel.
KEPT_FOR_ROOT = 16
# One henbackupctl command is one connection: 32 at once is beyond any person or script.
MAX_CONNECTIONS_OF_MEMBER = 32
BUSY = "henbackup serves too many clients at once: try again in a moment"
BUSY_MEMBER = "henbackup serves {} clients of this user at once, its most: try again in a moment"

Handler = Callable[[ControlRequest, "Conversation"], ControlReply | None]


def socket_from_systemd() -> socket.socket | None:
    """The control socket systemd passed (socket activation), if one was passed to us.

    `listen_fds` checks LISTEN_PID (a socket passed to our parent is not ours) and takes the
    LISTEN_* variables out of the environment: they are not for our children. Raises
    ConfigError when the socket is not a listening unix stream socket.
    """
    fds = daemon.listen_fds()
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # listen_fds unset them in libc's copy only
    if not fds:
        return None
    if not daemon.is_socket_unix(fds[0], socket.SOCK_STREAM, listening=1):
        message = (
            "the socket systemd passed is not a listening unix stream socket:"
            " give the .socket unit a ListenStream= path"
        )
        raise ConfigError([Problem("LISTEN_FDS", "", message)])
    return socket.socket(fileno=fds[0])


def bind(path: Path) -> socket.socket:
    """A listening socket at `path`, replacing a stale one, mode 0660 and group henbackup."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.bind(str(path))
    os.chmod(path, 0o660)
    operators = operators_gid()
    if operators is not None:  # else no such group: root only
        os.chown(path, -1, operators)
    sock.listen(socket.SOMAXCONN)
    return sock


@dataclass
class Conversation:
    """One client's connection, from its request to the last line of the answer.

    A handler that answers at once returns its reply. One that answers later returns None
    and keeps the Conversation: `send` events while the client waits, then `finish`. If the
    client goes away first, `closed` becomes true and every `on_close` callback is called.
    """

    conn: socket.socket
    loop: Loop
    peer: Peer  # who connected (SO_PEERCRED): what it may do is decided from this only
    timer: Timer | None = None
    buffer: bytes = b""  # the request as it arrives
    output: bytearray = field(default_factory=bytearray)  # lines the client has not taken
    on_close: list[Callable[[], None]] = field(default_factory=list)
    closed: bool = False
    finishing: bool = False
    writing: bool = False

    def send(self, message: ControlReply) -> None:
        """Queue one event line for the client; a client that stopped reading is dropped."""
        if self.closed:
            return
        if len(self.output) > MAX_BACKLOG:
            self.close()
            return
        self._queue(message)

    def _queue(self, message: ControlReply) -> None:
        self.output += frame(message)
        self._flush()

    def finish(self, reply: ControlReply) -> None:
        """Send the final reply, then close once the client has taken it."""
        if self.closed or self.finishing:
            return
        self.finishing = True
        self._set_timer(FLUSH_TIMEOUT)
        self._queue(reply)

    def _flush(self) -> None:
        try:
            sent = self.conn.send(self.output)
        except BlockingIOError:
            sent = 0
        except OSError:  # the client hung up
            self.close()
            return
        del self.output[:sent]
        if self.output and not self.writing:
            self.writing = True
            self.loop.add_writer(self.conn.fileno(), self._flush)
        elif not self.output:
            if self.writing:
                self.writing = False
                self.loop.remove_reader(self.conn.fileno())
            if self.finishing:
                self.close()

    def _set_timer(self, delay: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(delay, self.close)

    def close(self) -> None:
        """Drop the connection (idempotent); `on_close` hears of it."""
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if self.writing:
            self.loop.remove_reader(self.conn.fileno())
        self.conn.close()
        for callback in self.on_close:
            callback()


@dataclass
class ControlServer:
    sock: socket.socket
    loop: Loop
    handle: Handler
    reading: dict[int, Conversation] = field(default_factory=dict)  # requests not yet read
    conversations: list[Conversation] = field(default_factory=list)
    accepting: bool = False

    def start(self) -> None:
        self.sock.setblocking(False)
        self._resume()

    def _resume(self) -> None:
        if not self.accepting and self.sock.fileno() >= 0:
            self.accepting = True
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _pause(self) -> None:
        if self.accepting:
            self.accepting = False
            self.loop.remove_reader(self.sock.fileno())

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        except OSError:  # EMFILE, ENFILE, ENOBUFS: the next accept may work once one is freed
            if not self._drop_longest_silent():
                self._pause()
                self.loop.call_later(ACCEPT_PAUSE, self._resume)
            return
        conn.setblocking(False)
        conversation = Conversation(conn, self.loop, peer_of(conn))
        if conversation.peer.privilege is Privilege.NONE:
            conversation.finish(reply_error("permission", DENIED))
            return
        busy = self._busy_for(conversation.peer)
        if busy is not None:
            conversation.finish(reply_error("failed", busy))
            return
        fd = conn.fileno()
        conversation._set_timer(REQUEST_TIMEOUT)
        conversation.on_close.append(lambda: self._forget(fd, conversation))
        self.reading[fd] = conversation
        self.conversations.append(conversation)
        self.loop.add_reader(fd, lambda: self._read(fd))

    def _read(self, fd: int) -> None:
        conversation = self.reading[fd]
        try:
            data = conversation.conn.recv(MAX_REQUEST)
        except OSError:
            data = b""
        if not data:
            conversation.close()
            return
        conversation.buffer += data
        line, newline, _ = conversation.buffer.partition(b"\n")
        if len(line) > MAX_REQUEST:
            self._answer_with(fd, reply_error("usage", f"request larger than {MAX_REQUEST} bytes"))
        elif newline:
            self._answer_with(fd, self._answer(line, conversation))

    def _busy_for(self, peer: Peer) -> str | None:
        """Why a newcomer from `peer` is not served, if it is not (a full server drops its
        longest-silent client first, to make room)."""
        limit = MAX_CONNECTIONS
        if peer.privilege is not Privilege.OWN:
            if sum(c.peer.uid == peer.uid for c in self.conversations) >= MAX_CONNECTIONS_OF_MEMBER:
                return BUSY_MEMBER.format(MAX_CONNECTIONS_OF_MEMBER)
            limit -= KEPT_FOR_ROOT
        if len(self.conversations) >= limit and not self._drop_longest_silent():
            return BUSY
        return None

    def _drop_longest_silent(self) -> bool:
        """Close the connection that has not finished its request for the longest time;
        returns False when there is none (every client waits for an answer)."""
        oldest = next(iter(self.reading.values()), None)
        if oldest is not None:
            oldest.close()
        return oldest is not None

    def _answer(self, line: bytes, conversation: Conversation) -> ControlReply | None:
        try:
            request = decode(line)
        except UsageError as error:
            return reply_error("usage", str(error))
        try:
            return self.handle(request, conversation)
        except Exception as error:  # a bug costs this request, not the daemon
            self.loop.report_error(f"control request {request.command}", error)
            return reply_error("failed", f"internal error ({type(error).__name__}): see the logs")

    def _answer_with(self, fd: int, reply: ControlReply | None) -> None:
        # The request is read: from now on the connection is only written to.
        conversation = self.reading.pop(fd)
        self.loop.remove_reader(fd)
        if reply is not None:
            conversation.finish(reply)
        elif conversation.timer is not None:
            conversation.timer.cancel()  # the handler answers when its job is done

    def _forget(self, fd: int, conversation: Conversation) -> None:
        if self.reading.pop(fd, None) is not None:
            self.loop.remove_reader(fd)
        self.conversations.remove(conversation)

    def close(self) -> None:
        for conversation in list(self.conversations):
            conversation.close()
        self._pause()
        self.sock.close()
