import json
import os
import resource
import socket
from types import SimpleNamespace

import pytest

from henbackup.loop import Loop
from henbackup.master import control
from henbackup.master.control import ControlServer, bind
from henbackup.master.permissions import Peer, Privilege


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setattr(control, "REQUEST_TIMEOUT", 0.3)
    loop = Loop()
    path = tmp_path / "control.sock"
    echo = lambda request, _: {"ok": True, "echo": {"command": request.command, **request.fields}}  # noqa: E731
    served = ControlServer(bind(path), loop, echo)
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
        with connect(tmp_path / "control.sock") as sock:  # a claim is not even a field
            sock.sendall(b'{"command": "status", "uid": 0, "pid": 1, "groups": [0]}\n')
            assert reply_of(served, sock) == {
                "ok": False,
                "code": "usage",
                "error": "malformed request: status has no field 'uid'",
            }
        with connect(tmp_path / "control.sock") as sock:
            sock.sendall(b'{"command": "status"}\n')
            assert reply_of(served, sock) == {"ok": True}
    finally:
        served.close()
        loop.close()
    assert heard == [Peer(os.getpid(), os.getuid(), os.getgid(), frozenset(os.getgroups()))]


def test_a_final_reply_bigger_than_the_event_backlog_reaches_the_client_whole(waiting_server):
    """Only events are bounded (a client that does not read them is dropped); before, a
    reply past the backlog (a long snapshot list) dropped the client that waited for it."""
    served, path, kept = waiting_server
    sock = connect(path)
    sock.sendall(b'{"command": "backup", "backup": "pictures"}\n')
    serve_until(served, lambda: kept)
    reply = {"ok": True, "padding": "x" * (2 * control.MAX_BACKLOG)}
    kept[0].finish(reply)
    received = bytearray()
    sock.setblocking(False)

    def took_it_all() -> bool:
        try:
            while chunk := sock.recv(1 << 16):
                received.extend(chunk)
        except BlockingIOError:
            pass
        return received.endswith(b"\n")

    serve_until(served, took_it_all, rounds=10_000)
    assert json.loads(received) == reply
    sock.close()


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
        sock.sendall(b'{"command": "backup", "backup": "pictures"}\n')
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
        sock.sendall(b'{"command": "backup", "backup": "pictures"}\n')
        serve_until(served, lambda: kept)
        kept[0].on_close.append(lambda: closed.append(True))
    kept[0].send({"event": {"kind": "job.progress"}})  # EPIPE: the client is gone
    assert closed == [True]
    assert served.conversations == []


def test_a_waiting_client_that_never_reads_is_dropped_not_waited_for(waiting_server):
    served, path, kept = waiting_server
    sock = connect(path)
    sock.sendall(b'{"command": "backup", "backup": "pictures"}\n')
    serve_until(served, lambda: kept)
    event = {"event": {"padding": "x" * 60000}}
    for _ in range(control.MAX_BACKLOG // 60000 + 10):  # never blocks: queued, then dropped
        kept[0].send(event)
    assert kept[0].closed
    assert served.conversations == []
    sock.close()


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (b'{"command": "status", "x": ' + b"[" * 20000 + b"]" * 20000 + b"}\n", "expected one"),
        (b'{"command": "backup", "backup": ["pictures"]}\n', "'backup' of backup must be a"),
        (
            b'{"command": "restore-snapshot", "repository": "r", "snapshot": "ab", "target": 5}\n',
            "'target' of restore-snapshot must be a string, not a number",
        ),
    ],
)
def test_a_request_of_the_wrong_shape_never_reaches_the_handler(server, sent, error):
    served, path = server
    with connect(path) as sock:
        sock.sendall(sent)
        reply = reply_of(served, sock)
    assert (reply["ok"], reply["code"]) == (False, "usage")
    assert error in reply["error"]


def test_a_failing_handler_costs_its_request_a_failed_reply_only(tmp_path):
    reported = []
    loop = Loop(on_error=lambda source, error: reported.append((source, repr(error))))

    def handle(request, conversation):
        if request.command == "queue":
            raise KeyError("a bug")
        return {"ok": True}

    served = ControlServer(bind(tmp_path / "control.sock"), loop, handle)
    served.start()
    try:
        with connect(tmp_path / "control.sock") as sock:
            sock.sendall(b'{"command": "queue"}\n')
            assert reply_of(served, sock) == {
                "ok": False,
                "code": "failed",
                "error": "internal error (KeyError): see the logs",
            }
        assert reported == [("control request queue", "KeyError('a bug')")]
        with connect(tmp_path / "control.sock") as sock:
            sock.sendall(b'{"command": "status"}\n')
            assert reply_of(served, sock) == {"ok": True}
    finally:
        served.close()
        loop.close()


def test_beyond_max_connections_the_longest_silent_client_is_dropped(server, monkeypatch):
    served, path = server
    monkeypatch.setattr(control, "MAX_CONNECTIONS", 3)
    silent = [connect(path) for _ in range(3)]
    serve_until(served, lambda: len(served.conversations) == 3)
    with connect(path) as newcomer:
        newcomer.sendall(b'{"command": "status"}\n')
        assert reply_of(served, newcomer)["ok"] is True
    assert silent[0].recv(10) == b""  # the first to say nothing was dropped for it
    assert len(served.conversations) == 2
    for sock in silent:
        sock.close()


def test_when_every_client_waits_for_an_answer_a_newcomer_is_told_to_come_back(
    waiting_server, monkeypatch
):
    served, path, kept = waiting_server
    monkeypatch.setattr(control, "MAX_CONNECTIONS", 2)
    waiting = [connect(path) for _ in range(2)]
    for sock in waiting:
        sock.sendall(b'{"command": "backup", "backup": "pictures"}\n')
    serve_until(served, lambda: len(kept) == 2)
    with connect(path) as newcomer:
        assert reply_of(served, newcomer) == {"ok": False, "code": "failed", "error": control.BUSY}
    assert len(served.conversations) == 2 and not any(c.closed for c in kept)
    for sock in waiting:
        sock.close()


@pytest.fixture
def posing(monkeypatch):
    """The uid the next clients connect as (root: "OWN", else a member of henbackup)."""
    uid = [0]

    def peer_of(conn):
        privilege = Privilege.OWN if uid[0] == 0 else Privilege.OPERATE
        return SimpleNamespace(uid=uid[0], privilege=privilege)

    monkeypatch.setattr(control, "peer_of", peer_of)
    return uid


def waits(served, path, kept, count):
    """`count` clients more that wait for a job (none of them silent: none can be dropped)."""
    socks = [connect(path) for _ in range(count)]
    for sock in socks:
        sock.sendall(b'{"command": "backup", "backup": "pictures"}\n')
    expected = len(kept) + count
    serve_until(served, lambda: len(kept) == expected)
    return socks


def test_members_get_all_connections_but_root_s_last_ones(waiting_server, monkeypatch, posing):
    # Before, members waiting on every connection locked root out of its own daemon.
    served, path, kept = waiting_server
    monkeypatch.setattr(control, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(control, "KEPT_FOR_ROOT", 2)
    posing[0] = 1000
    socks = waits(served, path, kept, 1)
    posing[0] = 1001
    socks += waits(served, path, kept, 1)
    posing[0] = 1002
    with connect(path) as newcomer:
        assert reply_of(served, newcomer) == {"ok": False, "code": "failed", "error": control.BUSY}
    posing[0] = 0
    socks += waits(served, path, kept, 2)  # root's: the last two
    with connect(path) as newcomer:
        assert reply_of(served, newcomer) == {"ok": False, "code": "failed", "error": control.BUSY}
    assert len(served.conversations) == 4
    for sock in socks:
        sock.close()


def test_a_member_gets_at_most_its_share_of_connections(waiting_server, monkeypatch, posing):
    served, path, kept = waiting_server
    monkeypatch.setattr(control, "MAX_CONNECTIONS_OF_MEMBER", 2)
    posing[0] = 1000
    socks = waits(served, path, kept, 2)
    with connect(path) as newcomer:
        assert reply_of(served, newcomer) == {
            "ok": False,
            "code": "failed",
            "error": "henbackup serves 2 clients of this user at once, its most:"
            " try again in a moment",
        }
    posing[0] = 1001
    socks += waits(served, path, kept, 1)  # another member still gets in
    assert len(served.conversations) == 3
    for sock in socks:
        sock.close()


@pytest.fixture
def few_descriptors():
    """This process's limit of open files lowered so that `room` more can be opened (the
    limit is on descriptor numbers: a new one takes the lowest free)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def lower(room):
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        lowest_free = os.open("/dev/null", os.O_RDONLY)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free + room, hard))

    yield lower
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_out_of_descriptors_the_longest_silent_client_makes_room(server, few_descriptors):
    served, path = server
    silent = connect(path)
    serve_until(served, lambda: served.conversations)
    (first,) = served.conversations
    newcomer = connect(path)  # waits in the backlog: accepting it needs one more descriptor
    few_descriptors(0)
    serve_until(served, lambda: first.closed and len(served.conversations) == 1)
    assert silent.recv(10) == b""
    newcomer.sendall(b'{"command": "status"}\n')
    assert reply_of(served, newcomer)["ok"] is True
    newcomer.close()
    silent.close()


def test_out_of_descriptors_with_no_one_to_drop_accepting_pauses(server, few_descriptors):
    served, path = server
    client = connect(path)  # in the backlog
    few_descriptors(0)
    served.loop.run_once()  # accept fails: EMFILE
    assert not served.accepting and served.conversations == []
    few_descriptors(10)
    serve_until(served, lambda: served.conversations, rounds=5)  # within ACCEPT_PAUSE
    client.sendall(b'{"command": "status"}\n')
    assert reply_of(served, client)["ok"] is True
    client.close()
