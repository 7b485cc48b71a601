import json
import os
import socket

import pytest

from henbackup.loop import Loop
from henbackup.master import control
from henbackup.master.control import ControlServer, bind
from henbackup.master.permissions import Peer


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setattr(control, "REQUEST_TIMEOUT", 0.3)
    loop = Loop()
    path = tmp_path / "control.sock"
    served = ControlServer(bind(path), loop, lambda request, _: {"ok": True, "echo": request})
    served.start()
    yield served, path
    served.close()
    loop.close()


def connect(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    sock.settimeout(5)
    return sock


def serve_until(server, done, rounds=200):
    for _ in range(rounds):
        if done():
            return
        server.loop.run_once()
    raise AssertionError("the server did not get there")


def reply_of(server, sock):
    replies = []

    def read():
        sock.setblocking(False)
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return False
        replies.append(data)
        return True

    serve_until(server, read)
    return json.loads(replies[0]) if replies[0] else None


def test_the_socket_is_for_root_and_group_henbackup_only(server):
    _, path = server
    assert path.stat().st_mode & 0o777 == 0o660


def test_one_request_one_reply(server):
    served, path = server
    with connect(path) as sock:
        sock.sendall(b'{"command": "status"}\n')
        assert reply_of(served, sock) == {"ok": True, "echo": {"command": "status"}}


def test_the_handler_hears_who_connected_from_the_kernel_not_the_request(tmp_path):
    """SO_PEERCRED and SO_PEERGROUPS: a request claiming another uid changes nothing."""
    loop, heard = Loop(), []

    def handle(request, conversation):
        heard.append(conversation.peer)
        return {"ok": True}

    served = ControlServer(bind(tmp_path / "control.sock"), loop, handle)
    served.start()
    try:
        with connect(tmp_path / "control.sock") as sock:
            sock.sendall(b'{"command": "status", "uid": 4321, "pid": 1, "groups": [0]}\n')
            assert reply_of(served, sock) == {"ok": True}
    finally:
        served.close()
        loop.close()
    assert heard == [Peer(os.getpid(), os.getuid(), os.getgid(), frozenset(os.getgroups()))]


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (b"not json\n", "malformed request: expected one JSON object"),
        (b"[1, 2]\n", "malformed request: no command"),
        (b'{"command": 3}\n', "malformed request: no command"),
    ],
)
def test_malformed_requests_get_a_usage_error(server, sent, error):
    served, path = server
    with connect(path) as sock:
        sock.sendall(sent)
        assert reply_of(served, sock) == {"ok": False, "code": "usage", "error": error}


def test_a_huge_request_is_refused_without_reading_it_all(server):
    served, path = server
    with connect(path) as sock:
        sock.setblocking(False)
        sent = 0
        while sent < 3 * control.MAX_REQUEST:
            try:
                sent += sock.send(b"x" * 65536)
            except BlockingIOError:
                served.loop.run_once()
        reply = reply_of(served, sock)
    assert reply == {"ok": False, "code": "usage", "error": "request larger than 65536 bytes"}


def test_a_silent_client_neither_blocks_others_nor_stays_forever(server):
    served, path = server
    silent = connect(path)
    slow = connect(path)
    slow.sendall(b'{"command": ')  # half a request, then nothing for a while
    with connect(path) as quick:
        quick.sendall(b'{"command": "status"}\n')
        assert reply_of(served, quick)["ok"] is True
    serve_until(served, lambda: not served.conversations)  # both dropped at their timeout
    assert silent.recv(10) == b""
    assert slow.recv(10) == b""
    silent.close()
    slow.close()


@pytest.fixture
def waiting_server(tmp_path):
    """A server whose handler keeps every conversation, to answer it later."""
    loop = Loop()
    kept = []

    def handle(request, conversation):
        kept.append(conversation)

    served = ControlServer(bind(tmp_path / "control.sock"), loop, handle)
    served.start()
    yield served, tmp_path / "control.sock", kept
    served.close()
    loop.close()


def test_a_waiting_client_gets_events_then_the_reply(waiting_server):
    served, path, kept = waiting_server
    with connect(path) as sock:
        sock.sendall(b'{"command": "backup"}\n')
        serve_until(served, lambda: kept)
        kept[0].send({"event": {"kind": "job.started"}})
        kept[0].finish({"ok": True})
        serve_until(served, lambda: not served.conversations)
        lines = sock.makefile("rb").read().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"event": {"kind": "job.started"}},
        {"ok": True},
    ]


def test_a_waiting_client_that_hangs_up_is_forgotten(waiting_server):
    served, path, kept = waiting_server
    closed = []
    with connect(path) as sock:
        sock.sendall(b'{"command": "backup"}\n')
        serve_until(served, lambda: kept)
        kept[0].on_close.append(lambda: closed.append(True))
    kept[0].send({"event": {"kind": "job.progress"}})  # EPIPE: the client is gone
    assert closed == [True]
    assert served.conversations == []


def test_a_waiting_client_that_never_reads_is_dropped_not_waited_for(waiting_server):
    served, path, kept = waiting_server
    sock = connect(path)
    sock.sendall(b'{"command": "backup"}\n')
    serve_until(served, lambda: kept)
    event = {"event": {"padding": "x" * 60000}}
    for _ in range(control.MAX_BACKLOG // 60000 + 10):  # never blocks: queued, then dropped
        kept[0].send(event)
    assert kept[0].closed
    assert served.conversations == []
    sock.close()
