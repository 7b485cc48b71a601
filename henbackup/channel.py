"""Channel messages (henbackup/protocol.py) between a parent and a child over a socketpair.

One message a line, as JSON. A socketpair's buffer holds far more than the parent and child
ever have in flight, so sending never blocks in practice, and a message that cannot be sent
(the peer is gone) is dropped: the pidfd tells the rest. A line of the wrong shape is handed
to the reader's `malformed` as a ProtocolError, and the lines around it are read on.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable

from henbackup.errors import ProtocolError
from henbackup.protocol import ChannelMessage, decode_message, encode_message

MAX_LINE = 1 << 20  # a peer that sends more without a newline is broken

Malformed = Callable[[ProtocolError], None]


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        """(parent's end, child's end)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(parent), cls(child)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: ChannelMessage) -> bool:
        """Send one message; returns False when the peer is gone."""
        try:
            self.sock.sendall(encode_message(message))
        except OSError:
            return False
        return True

    def receive(self, malformed: Malformed) -> list[ChannelMessage] | None:
        """Read what is available (call when readable); None at end of file."""
        data = self.sock.recv(65536)
        if not data:
            return None
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_LINE:
            raise ValueError("message too long")
        messages = []
        for line in filter(None, lines):
            try:
                messages.append(decode_message(line))
            except ProtocolError as error:
                malformed(error)
        return messages

    def drain(self, malformed: Malformed) -> list[ChannelMessage]:
        """Every message already sent by a peer that has exited (never waits for more: a
        grandchild may still hold the peer's end)."""
        self.sock.setblocking(False)
        messages: list[ChannelMessage] = []
        with contextlib.suppress(OSError, ValueError):  # EAGAIN: nothing more was sent
            while (received := self.receive(malformed)) is not None:
                messages += received
        return messages

    def close(self) -> None:
        self.sock.close()
