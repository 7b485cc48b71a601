"""Newline-delimited JSON messages between a parent and a child over a socketpair.

Messages are small dicts with a "type"; a socketpair's buffer holds far more than the
parent and child ever have in flight, so sending never blocks in practice, and a message
that cannot be sent (the peer is gone) is dropped: the pidfd tells the rest.
"""

from __future__ import annotations

import contextlib
import json
import socket
from typing import Any

Message = dict[str, Any]
MAX_LINE = 1 << 20  # a peer that sends more without a newline is broken


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

    def send(self, message: Message) -> bool:
        """Send one message; returns False when the peer is gone."""
        try:
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            return False
        return True

    def receive(self) -> list[Message] | None:
        """Read what is available (call when readable); None at end of file."""
        data = self.sock.recv(65536)
        if not data:
            return None
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_LINE:
            raise ValueError("message too long")
        return [json.loads(line) for line in lines if line]

    def drain(self) -> list[Message]:
        """Every message already sent by a peer that has exited (never waits for more: a
        grandchild may still hold the peer's end)."""
        self.sock.setblocking(False)
        messages: list[Message] = []
        with contextlib.suppress(OSError, ValueError):  # EAGAIN: nothing more was sent
            while (received := self.receive()) is not None:
                messages += received
        return messages

    def close(self) -> None:
        self.sock.close()
