import os
import socket
import stat
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from henbackup.loop import Loop
from henbackup.observe import metrics
from henbackup.observe.metrics import MetricsServer, answer, render, write_textfile
from henbackup.observe.status import StatusModel, WorkerView

FAMILY_NAMES = [
    "henbackup_last_success_timestamp_seconds",
    "henbackup_last_run_duration_seconds",
    "henbackup_last_run_success",
    "henbackup_last_run_cpu_seconds",
    "henbackup_last_run_memory_peak_bytes",
    "henbackup_runs",  # the parser names a counter family without its samples' _total
    "henbackup_bytes_added",
    "henbackup_snapshots",
    "henbackup_jobs_running",
    "henbackup_jobs_waiting",
    "henbackup_next_run_timestamp_seconds",
    "henbackup_job_stalled",
    "henbackup_job_paused",
    "henbackup_up",
]


def parse(text):
    """{family name: (type, [(sample name, labels, value), …])}"""
    return {
        family.name: (family.type, [(s.name, s.labels, s.value) for s in family.samples])
        for family in text_string_to_metric_families(text)
    }


def backup(model, job, kind, **fields):
    fields = {"job": job, "operation": "backup", "backup": "pictures", **fields}
    model.apply(kind, {"repository": "aws-ireland", **fields}, "worker:pictures")


@pytest.fixture
def model(monkeypatch):
    """pictures→aws-ireland succeeded then failed, aws-ireland checked, one queued, one running."""
    now = [1_700_000_000.0]
    with monkeypatch.context() as patch:  # the clock of the status model, while it is fed
        patch.setattr(time, "time", lambda: now[0])
        model = StatusModel(None)
        backup(model, "j1", "job.queued", trigger="schedule", priority=10)
        backup(model, "j1", "job.started")
        succeeded = {"duration_sec": 12.5, "snapshot": "1a2b", "bytes_added": 1000, "snapshots": 7}
        backup(model, "j1", "job.succeeded", **succeeded)
        now[0] += 3600
        backup(model, "j2", "job.started")
        used = {"limits": "memory_max=8M", "cpu_sec": 1.5, "memory_peak": 8388608}
        backup(model, "j2", "job.failed", duration_sec=3.25, error="repository locked", **used)
        check = {"job": "j3", "operation": "check", "repository": "aws-ireland", "duration_sec": 40}
        model.apply("job.succeeded", check, "worker:aws-ireland")
        backup(model, "j4", "job.queued", backup="documents", trigger="watch")
        backup(model, "j5", "job.started", backup="mail")
    return model


def test_the_families_and_samples_of_a_busy_model(model):
    got = parse(render(model))
    assert list(got) == FAMILY_NAMES
    pictures = {"backup": "pictures", "repository": "aws-ireland"}
    check = {"backup": "", "repository": "aws-ireland", "operation": "check"}
    pictures_backup = {**pictures, "operation": "backup"}
    assert got["henbackup_last_success_timestamp_seconds"] == (
        "gauge",
        [("henbackup_last_success_timestamp_seconds", pictures, 1_700_000_000.0)],
    )
    assert got["henbackup_last_run_duration_seconds"] == (
        "gauge",
        [
            ("henbackup_last_run_duration_seconds", check, 40.0),
            ("henbackup_last_run_duration_seconds", pictures_backup, 3.25),
        ],
    )
    assert got["henbackup_last_run_success"] == (
        "gauge",
        [
            ("henbackup_last_run_success", check, 1.0),
            ("henbackup_last_run_success", pictures_backup, 0.0),
        ],
    )
    assert got["henbackup_last_run_cpu_seconds"] == (
        "gauge",
        [("henbackup_last_run_cpu_seconds", pictures_backup, 1.5)],
    )
    assert got["henbackup_last_run_memory_peak_bytes"] == (
        "gauge",
        [("henbackup_last_run_memory_peak_bytes", pictures_backup, 8388608.0)],
    )
    assert got["henbackup_runs"] == (
        "counter",
        [
            ("henbackup_runs_total", {**check, "result": "succeeded"}, 1.0),
            ("henbackup_runs_total", {**pictures_backup, "result": "failed"}, 1.0),
            ("henbackup_runs_total", {**pictures_backup, "result": "succeeded"}, 1.0),
        ],
    )
    assert got["henbackup_bytes_added"] == (
        "counter",
        [("henbackup_bytes_added_total", pictures, 1000.0)],
    )
    assert got["henbackup_snapshots"] == ("gauge", [("henbackup_snapshots", pictures, 7.0)])
    assert got["henbackup_jobs_running"] == ("gauge", [("henbackup_jobs_running", {}, 1.0)])
    assert got["henbackup_jobs_waiting"] == ("gauge", [("henbackup_jobs_waiting", {}, 1.0)])
    assert got["henbackup_up"] == ("gauge", [("henbackup_up", {}, 1.0)])


def test_every_family_has_help_and_type_and_the_text_is_deterministic(model):
    text = render(model)
    assert text == render(model)
    assert text.endswith("\n")
    for name in FAMILY_NAMES:
        sample = name + "_total" if name in ("henbackup_runs", "henbackup_bytes_added") else name
        assert f"# HELP {sample} " in text
        assert f"# TYPE {sample} " in text
    assert (
        "henbackup_last_success_timestamp_seconds"
        + ('{backup="pictures",repository="aws-ireland"} 1700000000.0\n')
        in text
    )
    assert 'henbackup_runs_total{backup="",repository="aws-ireland",' in text


def test_an_empty_model_is_up_with_no_jobs():
    got = parse(render(StatusModel(None)))
    assert list(got) == FAMILY_NAMES
    samples = {name: values for name, (_, values) in got.items() if values}
    assert samples == {
        "henbackup_jobs_running": [("henbackup_jobs_running", {}, 0.0)],
        "henbackup_jobs_waiting": [("henbackup_jobs_waiting", {}, 0.0)],
        "henbackup_up": [("henbackup_up", {}, 1.0)],
    }


def test_next_runs_of_idle_workers_and_the_stall_of_running_jobs(model):
    workers = [
        ("backup:pictures", WorkerView("pictures", "backup", "running", False, 1_700_007_200.0)),
        ("backup:mail", WorkerView("mail", "backup", "running", True, 1_700_003_600.0)),
        ("backup:manual", WorkerView("manual", "backup", "running", False, None)),
        ("repository:aws", WorkerView("aws", "repository", "running", False, 1_700_086_400.0)),
    ]
    model.daemon_changed(workers, stopping=False)
    backup(model, "j6", "job.started", backup="music", operation="forget")
    backup(model, "j6", "job.stalled", backup="music", operation="forget", stalled_sec=600)
    got = parse(render(model))
    next_run = "henbackup_next_run_timestamp_seconds"
    assert got[next_run] == (  # mail runs now: its next run is not late, it is absent
        "gauge",
        [
            (next_run, {"backup": "", "repository": "aws"}, 1_700_086_400.0),
            (next_run, {"backup": "pictures", "repository": ""}, 1_700_007_200.0),
        ],
    )
    mail = {"backup": "mail", "repository": "aws-ireland", "operation": "backup"}
    music = {"backup": "music", "repository": "aws-ireland", "operation": "forget"}
    stalled = "henbackup_job_stalled"
    assert got[stalled] == ("gauge", [(stalled, mail, 0.0), (stalled, music, 1.0)])
    backup(model, "j6", "job.progress", backup="music", operation="forget", bytes_done=10)
    assert parse(render(model))[stalled][1][1] == (stalled, music, 0.0)
    paused = "henbackup_job_paused"
    assert got[paused] == ("gauge", [(paused, mail, 0.0), (paused, music, 0.0)])
    backup(model, "j6", "job.paused", backup="music", operation="forget", paused_for="j9")
    assert parse(render(model))[paused][1][1] == (paused, music, 1.0)
    backup(model, "j6", "job.resumed", backup="music", operation="forget", paused_sec=3)
    assert parse(render(model))[paused][1][1] == (paused, music, 0.0)


def test_label_values_are_escaped_and_read_back_whole():
    model = StatusModel(None)
    name = 'my "odd"\\ back\nup'
    fields = {"job": "j", "operation": "backup", "backup": name, "repository": "r\\"}
    model.apply("job.succeeded", {**fields, "snapshots": 2}, "w")
    text = render(model)
    assert 'backup="my \\"odd\\"\\\\ back\\nup",repository="r\\\\"' in text
    (sample,) = parse(text)["henbackup_snapshots"][1]
    assert sample == ("henbackup_snapshots", {"backup": name, "repository": "r\\"}, 2.0)


def test_a_record_without_duration_or_snapshots_leaves_those_out():
    model = StatusModel(None)
    fields = {"job": "j", "operation": "backup", "backup": "b", "repository": "r"}
    model.apply("job.cancelled", fields, "w")
    got = parse(render(model))
    assert got["henbackup_last_run_duration_seconds"][1] == []
    assert got["henbackup_snapshots"][1] == []
    assert got["henbackup_last_success_timestamp_seconds"][1] == []
    assert got["henbackup_last_run_success"][1][0][2] == 0.0
    assert got["henbackup_bytes_added"][1] == [
        ("henbackup_bytes_added_total", {"backup": "b", "repository": "r"}, 0.0)
    ]


# the textfile


def test_the_textfile_is_whole_readable_by_all_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "node-exporter" / "henbackup.prom"
    old_umask = os.umask(0o077)
    try:
        write_textfile(path, "henbackup_up 1\n")
        write_textfile(path, "# TYPE henbackup_up gauge\nhenbackup_up 1\n")
    finally:
        os.umask(old_umask)
    assert path.read_text() == "# TYPE henbackup_up gauge\nhenbackup_up 1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == ["henbackup.prom"]


def test_a_missing_textfile_directory_is_made_for_node_exporter_to_enter(tmp_path):
    path = tmp_path / "prometheus" / "node-exporter" / "henbackup.prom"
    old_umask = os.umask(0o077)  # the unit's
    try:
        write_textfile(path, "henbackup_up 1\n")
    finally:
        os.umask(old_umask)
    modes = [stat.S_IMODE(d.stat().st_mode) for d in (path.parent.parent, path.parent)]
    assert modes == [0o755, 0o755]


def test_a_textfile_that_cannot_be_written_leaks_no_descriptor(tmp_path, monkeypatch):
    def refused(fd, mode):
        raise PermissionError(1, "Operation not permitted")  # vfat, CIFS with a mask

    monkeypatch.setattr(os, "fchmod", refused)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(PermissionError):
            write_textfile(tmp_path / "henbackup.prom", "henbackup_up 1\n")
    assert len(os.listdir("/proc/self/fd")) == before
    assert os.listdir(tmp_path) == []


def test_a_textfile_that_cannot_be_written_raises_and_leaves_nothing(tmp_path):
    directory = tmp_path / "textfiles"
    directory.mkdir()
    (directory / "henbackup.prom").mkdir()  # a directory in the way: the rename fails
    with pytest.raises(OSError):
        write_textfile(directory / "henbackup.prom", "henbackup_up 1\n")
    assert os.listdir(directory) == ["henbackup.prom"]


# answering requests (no sockets)


def reply_parts(reply):
    head, _, body = reply.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    return status, dict(line.split(": ", 1) for line in lines), body


def test_get_metrics_answers_the_text():
    status, headers, body = reply_parts(answer(b"GET /metrics HTTP/1.1\r\nHost: x", lambda: "é\n"))
    assert status == "HTTP/1.0 200 OK"
    assert headers == {
        "Content-Type": "text/plain; version=0.0.4; charset=utf-8",
        "Content-Length": "3",
        "Connection": "close",
    }
    assert body == "é\n".encode()


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /metrics?name[]=up HTTP/1.0", "HTTP/1.0 200 OK"),
        (b"\r\nGET /metrics HTTP/1.0\nAccept: */*", "HTTP/1.0 200 OK"),
        (b"GET / HTTP/1.1", "HTTP/1.0 404 Not Found"),
        (b"GET /metrics/ HTTP/1.1", "HTTP/1.0 404 Not Found"),
        (b"POST /metrics HTTP/1.1", "HTTP/1.0 405 Method Not Allowed"),
        (b"get /metrics HTTP/1.1", "HTTP/1.0 405 Method Not Allowed"),
        (b"GET /metrics", "HTTP/1.0 400 Bad Request"),
        (b"GET /metrics HTTP/2.0", "HTTP/1.0 400 Bad Request"),
        (b"GET  /metrics HTTP/1.1", "HTTP/1.0 400 Bad Request"),
        (b"GET /metrics HTTP/1.1\r\nno colon here", "HTTP/1.0 400 Bad Request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "HTTP/1.0 400 Bad Request"),
    ],
)
def test_requests_and_their_status(head, status):
    assert reply_parts(answer(head, lambda: "up 1\n"))[0] == status


def test_405_says_what_is_allowed_and_head_has_no_body():
    _, headers, _ = reply_parts(answer(b"PUT /metrics HTTP/1.1", lambda: ""))
    assert headers["Allow"] == "GET, HEAD"
    status, headers, body = reply_parts(answer(b"HEAD /metrics HTTP/1.1", lambda: "up 1\n"))
    assert (status, headers["Content-Length"], body) == ("HTTP/1.0 200 OK", "5", b"")


# the server, on a real loop


@pytest.fixture
def served(model, monkeypatch):
    monkeypatch.setattr(metrics, "REQUEST_TIMEOUT", 1.0)
    loop = Loop()
    server = MetricsServer.open(loop, ("127.0.0.1", 0), lambda: render(model))
    yield server
    server.close()
    loop.close()


def serve_until(server, done, seconds=10.0):
    """Run the server's loop in this thread until done(); each round waits 50 ms at most."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "the server did not get there"
        server.loop.call_later(0.05, lambda: None)
        server.loop.run_once()


def in_thread(call):
    """Run `call` in a thread; returns the thread and a list that gets its result or error."""
    outcome = []

    def run():
        try:
            outcome.append(call())
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def fetch(server, path="/metrics", method="GET"):
    """(status, headers, body) of one request through urllib, served by the loop."""
    host, port = server.address
    request = urllib.request.Request(f"http://{host}:{port}{path}", method=method)

    def call():
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    thread, outcome = in_thread(call)
    serve_until(server, lambda: not thread.is_alive())
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]


def connect(server):
    return socket.create_connection(server.address, timeout=5)


def test_the_server_listens_on_the_port_it_got(served):
    host, port = served.address
    assert host == "127.0.0.1"
    assert port > 0


def test_get_metrics_over_http(served, model):
    status, headers, body = fetch(served)
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert headers["Connection"] == "close"
    assert int(headers["Content-Length"]) == len(body)
    assert body.decode() == render(model)
    assert parse(body.decode())["henbackup_up"] == ("gauge", [("henbackup_up", {}, 1.0)])


def test_head_not_found_and_not_allowed_over_http(served):
    status, headers, body = fetch(served, method="HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) > 0
    assert fetch(served, "/")[0] == 404
    status, headers, _ = fetch(served, method="DELETE")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")


def test_a_silent_client_delays_nobody_and_is_dropped_at_its_deadline(served):
    with connect(served) as silent:
        serve_until(served, lambda: len(served.clients) == 1)
        started = time.monotonic()
        assert fetch(served)[0] == 200
        assert time.monotonic() - started < 0.5
        assert len(served.clients) == 1  # still waiting for the silent one
        serve_until(served, lambda: not served.clients)
        assert time.monotonic() - started >= 0.5
        assert silent.recv(100) == b""  # dropped without a word


def test_a_head_too_large_is_refused(served):
    with connect(served) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"x" * metrics.MAX_HEAD)
        serve_until(served, lambda: served.clients)
        serve_until(served, lambda: not served.clients)
        assert sock.recv(100).startswith(b"HTTP/1.0 431 ")


def test_a_half_request_then_goodbye_is_dropped(served):
    with connect(served) as sock:
        sock.sendall(b"GET /metr")
        sock.shutdown(socket.SHUT_WR)
        serve_until(served, lambda: served.clients)
        started = time.monotonic()
        serve_until(served, lambda: not served.clients)
        assert time.monotonic() - started < 0.5  # at its goodbye, not at its deadline
        assert sock.recv(100) == b""


def test_a_large_reply_reaches_a_reader_whole_without_blocking_the_loop(served):
    text = "".join(f'henbackup_up{{n="{n}"}} 1\n' for n in range(200_000))  # ~5 MB
    served.render = lambda: text
    status, _, body = fetch(served)
    assert (status, body.decode()) == (200, text)


def test_a_client_that_never_reads_blocks_nobody(served):
    text = "x" * 20_000_000  # far more than any socket buffer holds
    served.render = lambda: text
    with connect(served) as lazy:
        lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lazy.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        started = time.monotonic()
        serve_until(served, lambda: any(c.writing for c in served.clients.values()))
        assert time.monotonic() - started < 0.5
        served.render = lambda: "up 1\n"
        assert fetch(served)[2] == b"up 1\n"
        assert time.monotonic() - started < 0.5
        serve_until(served, lambda: not served.clients)  # dropped at its deadline
        assert time.monotonic() - started >= 0.5


def test_the_port_cannot_be_taken_twice_and_is_free_after_close(model):
    loop = Loop()
    server = MetricsServer.open(loop, ("127.0.0.1", 0), lambda: "")
    address = server.address
    with pytest.raises(OSError):
        MetricsServer.open(loop, address, lambda: "")
    with connect(server):
        serve_until(server, lambda: server.clients)
        server.close()  # closing first leaves the server's side in TIME_WAIT
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5)
    again = MetricsServer.open(loop, address, lambda: "")  # SO_REUSEADDR: at once
    again.close()
    loop.close()


def test_beyond_the_limit_a_newcomer_takes_the_place_of_the_oldest_silent_client(
    served, monkeypatch
):
    """Any local user may connect: idle connections held open by the limit's count turned
    the scraper away. Now the oldest that has not asked makes room for the newcomer."""
    monkeypatch.setattr(metrics, "MAX_CLIENTS", 2)
    idle = [connect(served) for _ in range(2)]
    try:
        serve_until(served, lambda: len(served.clients) == 2)
        status, _, body = fetch(served)
        assert status == 200 and b"henbackup_up" in body
        assert idle[0].recv(100) == b""  # the oldest silent one made room
        assert len(served.clients) <= 2
    finally:
        for sock in idle:
            sock.close()


def test_beyond_the_limit_a_newcomer_is_turned_away_when_every_client_has_asked(
    served, monkeypatch
):
    monkeypatch.setattr(metrics, "MAX_CLIENTS", 2)
    text = "x" * 20_000_000  # far more than any socket buffer holds: the replies stay
    served.render = lambda: text
    asked = [connect(served) for _ in range(2)]
    try:
        for sock in asked:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        serve_until(served, lambda: sum(c.writing for c in served.clients.values()) == 2)
        with connect(served) as newcomer:
            served.loop.call_later(0.1, lambda: None)
            served.loop.run_once()
            assert newcomer.recv(100) == b""
        assert len(served.clients) == 2
    finally:
        for sock in asked:
            sock.close()


def swapped_link(tmp_path):
    """A root-only directory, and prometheus' directory where node-exporter links to it."""
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    theirs = tmp_path / "prometheus"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    (theirs / "node-exporter").symlink_to(victim)
    return victim, theirs


def test_a_link_another_user_could_have_placed_is_not_followed(tmp_path):
    """prometheus' directory on the way: swapping a part for a link to a root-only directory
    would have root chmod it, or drop a file there."""
    victim, theirs = swapped_link(tmp_path)
    with pytest.raises(OSError, match="node-exporter is a link another user may have made"):
        write_textfile(theirs / "node-exporter" / "henbackup.prom", "henbackup_up 1\n")
    assert os.listdir(victim) == []
    assert stat.S_IMODE(victim.stat().st_mode) == 0o700


def test_a_link_of_roots_is_followed(tmp_path):
    real = tmp_path / "srv" / "node-exporter"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    write_textfile(tmp_path / "link" / "henbackup.prom", "henbackup_up 1\n")
    assert (real / "henbackup.prom").read_text() == "henbackup_up 1\n"


def test_a_link_of_roots_is_walked_by_the_same_rule(tmp_path):
    """/var/lib/node_exporter → /var/lib/prometheus/node-exporter: root's link, into
    prometheus' directory, where prometheus may have swapped a part for a link."""
    victim, theirs = swapped_link(tmp_path)
    (tmp_path / "node_exporter").symlink_to(theirs / "node-exporter")
    with pytest.raises(OSError, match="node-exporter is a link another user may have made"):
        write_textfile(tmp_path / "node_exporter" / "henbackup.prom", "henbackup_up 1\n")
    assert os.listdir(victim) == []


def test_a_relative_link_of_roots_is_followed(tmp_path):
    (tmp_path / "srv" / "metrics").mkdir(parents=True)
    (tmp_path / "link").symlink_to("srv/../srv/metrics")
    write_textfile(tmp_path / "link" / "henbackup.prom", "henbackup_up 1\n")
    assert (tmp_path / "srv" / "metrics" / "henbackup.prom").exists()


def test_a_loop_of_links_is_an_error_not_a_hang(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(OSError):
        write_textfile(tmp_path / "a" / "henbackup.prom", "henbackup_up 1\n")
