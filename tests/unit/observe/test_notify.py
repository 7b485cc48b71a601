import contextlib
import os
import platform
import signal
import socket
import time
from pathlib import Path

from henbackup.observe.notify import Notifier, watchdog_interval


def test_watchdog_interval_is_half_of_watchdogsec_for_this_process_only():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    mine = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 2.0


def test_messages_reach_the_notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        notifier = Notifier()
        notifier.status("2 backups; idle")
        notifier.status("2 backups; idle")  # unchanged: not sent again
        notifier.ready()
        notifier.status("2 backups; running: demo→local 5%")
        notifier.stopping()
        received = [server.recv(4096).decode() for _ in range(4)]
    assert received == [
        "STATUS=2 backups; idle",
        "READY=1",
        "STATUS=2 backups; running: demo→local 5%",
        "STOPPING=1",
    ]


def test_without_systemd_nothing_is_sent():
    Notifier({}).ready()  # no NOTIFY_SOCKET: a no-op, not an error


SENDMSG = {"x86_64": "46", "aarch64": "211"}[platform.machine()]  # syscall numbers


def fill(path: str) -> list[socket.socket]:
    """Datagrams to `path` until its queue is full (a systemd that reads late): then a
    sender waits in sendmsg. Returns the senders, to keep until the test ends."""
    senders = []
    while True:
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.setblocking(False)
        senders.append(sender)
        sent = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                sender.sendto(b"X=1", path)
                sent += 1
        if sent == 0:  # a fresh sender refused at once: the receiver's queue is full
            return senders


def test_a_signal_while_sd_notify_waits_loses_neither_the_message_nor_the_caller(
    tmp_path, monkeypatch
):
    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    senders = fill(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier, me, got = Notifier(), os.getpid(), []
    previous = signal.signal(signal.SIGUSR1, lambda *_: got.append("usr1"))  # only records

    def waiting_in_sendmsg() -> bool:
        return Path(f"/proc/{me}/syscall").read_text().split()[0] == SENDMSG

    # sd_notify holds the GIL while it waits: the signal and the reader are another process.
    child = os.fork()
    if child == 0:
        code = 1
        try:
            deadline = time.monotonic() + 10
            while not waiting_in_sendmsg() and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(me, signal.SIGUSR1)  # EINTR
            time.sleep(0.2)  # it sends again, and waits again
            server.recv(100)  # systemd reads one at last: room for one more
            code = 0
        finally:
            os._exit(code)
    try:
        notifier.ready()  # before: InterruptedError out of the master's loop
    finally:
        _, status = os.waitpid(child, 0)
        signal.signal(signal.SIGUSR1, previous)
    assert os.waitstatus_to_exitcode(status) == 0
    assert got == ["usr1"]
    server.setblocking(False)
    received = []
    with contextlib.suppress(BlockingIOError):
        while True:
            received.append(server.recv(100))
    assert received[-1] == b"READY=1" and set(received[:-1]) == {b"X=1"}
    for sender in senders:
        sender.close()
    server.close()


def test_a_notify_socket_that_is_gone_costs_the_message_only(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))  # systemd went away
    notifier = Notifier()
    notifier.ready()
    notifier.status("2 backups; idle")
    path = str(tmp_path / "gone")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        notifier.status("2 backups; idle")  # not sent before: sent now
        assert server.recv(100) == b"STATUS=2 backups; idle"
