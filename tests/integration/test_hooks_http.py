"""HTTP hooks against a real HTTP server on 127.0.0.1, run by this test in a thread."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil
import pytest

from henbackup.config.model import HttpHook
from henbackup.errors import StopRequested
from henbackup.hooks import HookContext, run_hook
from henbackup.process import SafePoint

CONTEXT = HookContext("grafana", "before", job="j1", trigger="manual")
GENEROUS = 15.0  # an upper bound for slow machines, not a performance assertion


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits: Counter[str] = Counter()
        self.requests: list[dict] = []
        self.done = threading.Event()  # set at teardown: hanging handlers give up

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.handle_any()

    def do_POST(self) -> None:
        self.handle_any()

    def handle_any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        path = self.path.split("?")[0]
        self.server.hits[path] += 1
        self.server.requests.append(
            {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
        )
        getattr(self, "route_" + path.strip("/").replace("-", "_"))()

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def route_ok(self) -> None:
        self.reply(200, b"dumped\n")

    def route_flaky(self) -> None:  # 500 twice, then 200
        ok = self.server.hits["/flaky"] > 2
        self.reply(200 if ok else 500, b"fine\n" if ok else b"not yet\n")

    def route_missing(self) -> None:
        self.reply(404, b"no such dump\n")

    def route_hang(self) -> None:  # never answers (until teardown)
        self.server.done.wait(GENEROUS * 2)

    def route_slow_body(self) -> None:  # headers at once, then one byte every 100 ms
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        for _ in range(1000):
            if self.server.done.wait(0.1):
                return
            self.wfile.write(b".")
            self.wfile.flush()

    def route_echo(self) -> None:
        self.reply(200, json.dumps(self.server.requests[-1]).encode())

    def route_big(self) -> None:
        self.reply(200, b"".join(b"line %05d\n" % n for n in range(10000)))

    def route_redirect(self) -> None:  # to where the query says (another server)
        self.send_response(302)
        self.send_header("Location", self.path.partition("?to=")[2])
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def server():
    yield from serve()


@pytest.fixture
def elsewhere():
    yield from serve()


def serve():
    httpd = Server()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.done.set()
    httpd.shutdown()
    httpd.server_close()


def fields(event):
    return dict(event.fields)


def test_body_json_sends_the_runs_fields_as_a_json_object(server, events):
    context = HookContext("grafana", "failure", "j1", "manual", "nas: no space", "rpi01")
    outcome = run_hook(HttpHook(server.url + "/echo", body="json"), context, events)
    assert outcome.status == "succeeded"
    request = server.requests[-1]
    assert request["headers"]["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == {
        "backup": "grafana",
        "hook": "failure",
        "job": "j1",
        "trigger": "manual",
        "error": "nas: no space",
        "host": "rpi01",
    }


def test_body_json_keeps_a_content_type_given_and_says_null_for_what_is_unknown(server, events):
    hook = HttpHook(server.url + "/echo", body="json", headers=(("content-type", "text/plain"),))
    run_hook(hook, HookContext("grafana", "before"), events)
    request = server.requests[-1]
    content_types = [v for k, v in request["headers"].items() if k.lower() == "content-type"]
    assert content_types == ["text/plain"]
    assert json.loads(request["body"]) == {
        "backup": "grafana",
        "hook": "before",
        "job": None,
        "trigger": None,
        "error": None,
        "host": None,
    }


def test_a_2xx_answer_succeeds_with_method_headers_and_body(server, events):
    hook = HttpHook(server.url + "/echo", method="POST", headers=(("X-Run", "1"),), body="{}")
    outcome = run_hook(hook, CONTEXT, events)
    assert outcome.status == "succeeded"
    request = server.requests[-1]
    assert request["method"] == "POST" and request["body"] == "{}"
    assert request["headers"]["X-Run"] == "1"
    kinds = [e.kind for e in events.recorded]
    assert kinds == ["hook.started", "hook.succeeded"]
    done = fields(events.recorded[-1])
    assert done["HENBACKUP_HTTP_STATUS"] == "200" and done["HENBACKUP_ATTEMPTS"] == "1"
    assert done["HENBACKUP_HOOK"] == "before" and done["HENBACKUP_BACKUP"] == "grafana"


def test_500_then_200_succeeds_with_retries(server, events):
    hook = HttpHook(server.url + "/flaky", retries=3, timeout=5)
    outcome = run_hook(hook, CONTEXT, events, backoff=0.01)
    assert outcome.status == "succeeded"
    assert server.hits["/flaky"] == 3
    assert fields(events.recorded[-1])["HENBACKUP_ATTEMPTS"] == "3"


def test_without_enough_retries_a_500_fails_and_says_so(server, events):
    hook = HttpHook(server.url + "/flaky", retries=1, timeout=5, on_failure="continue")
    outcome = run_hook(hook, CONTEXT, events, backoff=0.01)
    assert outcome.status == "failed" and outcome.error == "HTTP 500 Internal Server Error"
    assert outcome.output == "not yet"
    failed = events.recorded[-1]
    assert failed.kind == "hook.failed" and "the run goes on, marked failed" in failed.message


def test_a_4xx_is_final_and_not_retried(server, events):
    outcome = run_hook(HttpHook(server.url + "/missing", retries=3), CONTEXT, events, backoff=0.01)
    assert outcome.status == "failed" and server.hits["/missing"] == 1


def test_a_server_that_never_answers_times_out(server, events):
    started = time.monotonic()
    outcome = run_hook(HttpHook(server.url + "/hang", timeout=0.5), CONTEXT, events)
    assert outcome.status == "failed" and outcome.error == "timed out after 0.5s"
    assert time.monotonic() - started < GENEROUS


def test_a_slow_body_cannot_stretch_the_timeout(server, events):
    started = time.monotonic()
    outcome = run_hook(HttpHook(server.url + "/slow-body", timeout=1), CONTEXT, events)
    assert outcome.status == "failed" and outcome.error == "timed out after 1s"
    assert time.monotonic() - started < GENEROUS  # the body alone would take 100 s


def test_timeouts_are_retried_too(server, events):
    outcome = run_hook(
        HttpHook(server.url + "/hang", timeout=0.2, retries=1), CONTEXT, events, 0.01
    )
    assert outcome.status == "failed" and server.hits["/hang"] == 2


def test_an_unreachable_server_fails_with_a_short_reason(events):
    with socket.socket() as unused:  # bound, never listening: connections are refused
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}/ok"
        outcome = run_hook(HttpHook(url), CONTEXT, events)
    assert outcome.status == "failed"
    assert outcome.error == "cannot reach 127.0.0.1: Connection refused"


def test_output_is_truncated_to_its_end(server, events):
    outcome = run_hook(HttpHook(server.url + "/big", method="GET"), CONTEXT, events)
    assert outcome.output.startswith("[…output truncated…]\n")
    assert outcome.output.endswith("line 09999")
    assert len(outcome.output.encode()) <= 4096 + 64


def test_secrets_never_reach_the_events(server, events):
    hook = HttpHook(
        server.url + "/echo?password=hunter2pw&db=main",
        headers=(("Authorization", "Bearer t0ken-s3cret"),),
    )
    outcome = run_hook(hook, CONTEXT, events)
    assert outcome.status == "succeeded"
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer t0ken-s3cret"
    assert "<redacted>" in outcome.output  # the server echoed both secrets back
    everything = json.dumps([e.journal_fields() for e in events.recorded])
    assert "hunter2pw" not in everything and "t0ken-s3cret" not in everything
    assert "password=<redacted>&db=main" in events.recorded[0].message


def test_credentials_in_the_url_become_basic_auth_and_stay_secret(server, events):
    url = server.url.replace("http://", "http://backup:pa%24%24word@") + "/echo"
    outcome = run_hook(HttpHook(url), CONTEXT, events)
    assert outcome.status == "succeeded"
    sent = server.requests[-1]["headers"]["Authorization"]
    assert sent == "Basic " + base64.b64encode(b"backup:pa$$word").decode()
    everything = json.dumps([e.journal_fields() for e in events.recorded])
    assert "pa$$word" not in everything and sent.split()[1] not in everything
    assert "pa%24%24word" not in everything


def test_a_redirect_is_not_followed_and_the_credentials_stay_home(server, elsewhere, events):
    url = server.url.replace("http://", "http://backup:pa%24%24word@")
    hook = HttpHook(
        f"{url}/redirect?to={elsewhere.url}/echo",
        headers=(("X-Api-Token", "t0ken-s3cret"),),
        retries=2,
    )
    outcome = run_hook(hook, CONTEXT, events, backoff=0.01)
    assert outcome.error == "answered 302 (redirects are not followed)"
    assert elsewhere.requests == [] and server.hits["/redirect"] == 1
    done = fields(events.recorded[-1])
    assert done["HENBACKUP_HTTP_STATUS"] == "302" and done["HENBACKUP_ATTEMPTS"] == "1"


@pytest.mark.parametrize(
    ("path", "header"),
    [
        ("/echo", "Bearer s3cr3t-token\n"),
        ("/echo", "Bearer s3cr3t-t\u20acken"),
        ("/s3cr3t-\u00e9", "t"),
    ],
)
def test_a_character_http_cannot_send_fails_the_hook_without_showing_it(
    server, events, path, header
):
    hook = HttpHook(server.url + path, headers=(("Authorization", header),), retries=2)
    outcome = run_hook(hook, CONTEXT, events, backoff=0.01)
    assert outcome.error == "cannot send: the URL or a header has a character HTTP does not allow"
    assert dict(events.recorded[-1].fields)["HENBACKUP_ATTEMPTS"] == "1"
    assert server.requests == []


@pytest.fixture
def dribbler():
    """A server answering every request with `100 Continue` after `100 Continue`, one
    every 50 ms, for up to GENEROUS * 2 s: each read gets a byte well within its timeout."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            stop = time.monotonic() + GENEROUS * 2
            while not done.wait(0.05) and time.monotonic() < stop:
                try:
                    connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                except OSError:
                    return

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    done.set()
    listener.close()


@pytest.mark.parametrize("job_process", [True, False], ids=["job-process", "one-shot"])
def test_a_server_dribbling_forever_cannot_stretch_the_timeout_of_a_request(
    dribbler, events, job_process
):
    """Also without a safe point (`henbackup backup` from a shell): the request ran in the
    caller then, bounded by nothing but the server."""
    before = {child.pid for child in psutil.Process().children()}
    started = time.monotonic()
    point = SafePoint() if job_process else None
    outcome = run_hook(HttpHook(dribbler, timeout=0.5), CONTEXT, events, safe_point=point)
    assert outcome.status == "failed" and outcome.error == "timed out after 0.5s"
    assert time.monotonic() - started < GENEROUS
    assert [child for child in psutil.Process().children() if child.pid not in before] == []


def test_a_url_that_is_not_http_fails_without_retrying(events):
    outcome = run_hook(HttpHook("ftp://example.org/x", retries=3), CONTEXT, events, backoff=0.01)
    assert outcome.error == "cannot send: not an http:// or https:// URL"
    assert dict(events.recorded[-1].fields)["HENBACKUP_ATTEMPTS"] == "1"


def test_a_request_run_apart_answers_the_same_and_a_stop_ends_it_at_once(server, events):
    """In a job process the request runs in a child (urllib cannot be woken): it answers as
    in-process, and a stop (a byte on the wakeup fd, then the safe point raises) ends a
    request the server never answers, within seconds, its child gone."""
    before = {child.pid for child in psutil.Process().children()}  # other tests' are theirs
    hook = HttpHook(server.url + "/echo", method="POST", body="{}")
    outcome = run_hook(hook, CONTEXT, events, safe_point=SafePoint())
    assert (outcome.status, json.loads(outcome.output)["body"]) == ("succeeded", "{}")

    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def check() -> None:
        if server.hits["/hang"]:
            raise StopRequested("stopped by SIGTERM")

    def stop_once_asked() -> None:  # as a SIGTERM's handler would, through the wakeup fd
        while not server.hits["/hang"]:
            time.sleep(0.01)
        os.write(write_fd, b"\x0f")

    threading.Thread(target=stop_once_asked, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(StopRequested):
            hang = HttpHook(server.url + "/hang", timeout=600)
            run_hook(hang, CONTEXT, events, safe_point=SafePoint(check, read_fd))
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert time.monotonic() - started < GENEROUS
    assert [child for child in psutil.Process().children() if child.pid not in before] == []
    assert fields(events.recorded[-1])["HENBACKUP_ERROR"] == "cancelled"
