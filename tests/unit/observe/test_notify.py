import contextlib
import os
import signal
import socket

import pytest

from henbackup.observe.notify import Notifier, notify_address, watchdog_interval


@pytest.mark.parametrize(
    "env",
    [
        {"WATCHDOG_USEC": "abc"},  # once ValueError: the master never started
        {"WATCHDOG_USEC": "-5"},  # once a negative interval: a busy loop of pings
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "²"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"},
    ],
)
def test_a_watchdog_variable_of_the_wrong_shape_turns_the_watchdog_off(env):
    assert watchdog_interval(env) is None
    assert Notifier(env).watchdog_interval is None


def test_watchdog_interval_is_half_of_watchdogsec_for_this_process_only():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    mine = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 2.0


@pytest.fixture
def reader(tmp_path, monkeypatch):
    """NOTIFY_SOCKET bound by a reader that reads (within 5 s): the reader."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield server


def test_messages_reach_the_notify_socket(reader):
    notifier = Notifier()
    notifier.status("2 backups; idle")
    notifier.status("2 backups; idle")  # unchanged: not sent again
    notifier.ready()
    notifier.status("2 backups; running: demo→local 5%")
    notifier.stopping()
    received = [reader.recv(4096).decode() for _ in range(4)]
    assert received == [
        "STATUS=2 backups; idle",
        "READY=1",
        "STATUS=2 backups; running: demo→local 5%",
        "STOPPING=1",
    ]


def test_without_systemd_nothing_is_sent():
    Notifier({}).ready()  # no NOTIFY_SOCKET: a no-op, not an error


@pytest.fixture
def full(tmp_path, monkeypatch):
    """NOTIFY_SOCKET bound by a reader that has not read, its queue full: the reader."""
    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    senders = fill(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield server
    for sender in [*senders, server]:
        sender.close()


def fill(path: str) -> list[socket.socket]:
    """Datagrams to `path` until its queue is full (a systemd that reads late, or a local
    flood): then no sender can queue one more. Returns the senders, to close at the end."""
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


def drain(server: socket.socket) -> list[bytes]:
    server.setblocking(False)
    received = []
    with contextlib.suppress(BlockingIOError):
        while True:
            received.append(server.recv(4096))
    return received


def timeout(*_: object) -> None:
    raise TimeoutError("the notifier waited for a reader that never reads")


def test_a_reader_that_never_reads_costs_the_message_never_the_loop(full):
    """libsystemd's sd_notify waited here until systemd read: the master's loop hung."""
    server = full
    notifier = Notifier()
    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(30)  # a bound, not a timing goal: the call returns at once or never
    try:
        notifier.ready()
        notifier.status("1 backup; idle")
        notifier.watchdog()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert set(drain(server)) == {b"X=1"}  # the reader reads at last: none of ours got in
    notifier.watchdog()  # the next message carries what could not be queued, ping aside
    assert drain(server) == [b"READY=1\nSTATUS=1 backup; idle\nWATCHDOG=1"]
    notifier.status("1 backup; idle")  # went out: not again
    notifier.stopping()
    assert drain(server) == [b"STOPPING=1"]


def test_a_newer_state_replaces_the_one_that_could_not_be_queued(full):
    server = full
    notifier = Notifier()
    notifier.reloading()
    notifier.status("1 backup; idle")
    notifier.status("2 backups; idle")
    drain(server)
    notifier.ready()
    assert drain(server) == [b"STATUS=2 backups; idle\nREADY=1"]


def test_messages_arrive_byte_exact_in_utf8(reader):
    notifier = Notifier()
    notifier.ready()
    notifier.status("running: pictures→aws-ireland 42%; næste: musik")
    assert reader.recv(4096) == b"READY=1"
    line = "STATUS=running: pictures\u2192aws-ireland 42%; n\u00e6ste: musik"
    assert reader.recv(4096) == line.encode("utf-8")


def test_an_abstract_notify_socket_is_reached(monkeypatch):
    name = f"henbackup-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(f"\0{name}")
        server.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", f"@{name}")
        notifier = Notifier()
        assert notifier.problem is None
        notifier.ready()
        assert server.recv(4096) == b"READY=1"


def test_a_notify_socket_of_another_shape_turns_notifications_off_and_says_why():
    for value in ("vsock:2:1234", "run/systemd/notify", "@", "/" + "x" * 200):
        notifier = Notifier({"NOTIFY_SOCKET": value})
        assert notifier.problem is not None and repr(value) in notifier.problem
        notifier.ready()  # nothing sent, nothing raised
        notifier.status("1 backup; idle")
    assert notify_address("/run/systemd/notify") == ("/run/systemd/notify", None)
    assert notify_address("@hb") == ("\0hb", None)


def test_a_notify_socket_that_is_gone_costs_the_message_only(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))  # systemd went away
    notifier = Notifier()
    notifier.ready()
    notifier.status("2 backups; idle")
    path = str(tmp_path / "gone")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        notifier.watchdog()  # what was not sent before rides on it
        assert server.recv(100) == b"READY=1\nSTATUS=2 backups; idle\nWATCHDOG=1"
