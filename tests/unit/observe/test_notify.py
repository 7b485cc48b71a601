import os
import socket

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
