"""The notification recipes of etc/notifications.toml, run as written by `henbackup backup`.

Their URLs point at an HTTP server on 127.0.0.1 (standing in for healthchecks.io and
ntfy), and the system's sendmail (msmtp-mta) relays to an SMTP server on 127.0.0.1: both run
by this test, which checks exactly what each received from a failing and a succeeding run.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import socketserver
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "etc" / "notifications.toml"
SENDMAIL = Path("/usr/sbin/sendmail")
PASSWORD = "recipe password"
HC_UUID = "0f1e2d3c-uuid"
NTFY_TOPIC = "backups-topic"
HOST = "recipe-host"


class Recorder(ThreadingHTTPServer):
    """Answers 200 to every request and keeps it (method, path, headers, body)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Record)
        self.requests: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Record(BaseHTTPRequestHandler):
    server: Recorder

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        request = {"method": self.command, "path": self.path, "headers": self.headers, "body": body}
        self.server.requests.append(request)
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"OK\n")


class SmtpSink(socketserver.ThreadingTCPServer):
    """The least of an SMTP server (RFC 5321 without extensions): keeps each message."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Smtp)
        self.messages: list[tuple[list[str], bytes]] = []  # (recipients, message)


class _Smtp(socketserver.StreamRequestHandler):
    server: SmtpSink

    def say(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self.say("220 127.0.0.1 ESMTP sink")
        recipients: list[str] = []
        while line := self.rfile.readline():
            verb = line[:4].upper()
            if verb == b"QUIT":
                self.say("221 bye")
                return
            if verb == b"RCPT":
                recipients.append(line.decode().partition(":")[2].strip().strip("<>"))
            if verb == b"DATA":
                self.say("354 go on")
                self.server.messages.append((recipients, self._data()))
                recipients = []
            self.say("250 ok")

    def _data(self) -> bytes:
        lines = []
        while (line := self.rfile.readline()) not in (b".\r\n", b""):
            lines.append(line[1:] if line.startswith(b".") else line)  # dot-stuffing
        return b"".join(lines)


@pytest.fixture
def http_server():
    server = Recorder()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def smtp_server():
    server = SmtpSink()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def home(tmp_path, smtp_server):
    """A HOME whose ~/.msmtprc sends every mail to the SMTP sink (command hooks get HOME)."""
    assert SENDMAIL.resolve().name == "msmtp", "install msmtp-mta (make test-deps)"
    home = tmp_path / "home"
    home.mkdir()
    rc = home / ".msmtprc"
    port = smtp_server.server_address[1]
    rc.write_text(
        f"account default\nhost 127.0.0.1\nport {port}\nfrom henbackup@test.invalid\n"
        "auth off\ntls off\n"
    )
    rc.chmod(0o600)
    return home


def recipes_for(tmp_path: Path, restic: str, server_url: str, location: Path) -> Path:
    """etc/notifications.toml, with its services, repository and paths made local."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "a.txt").write_text("hello\n")
    secret = tmp_path / "nas-password"
    secret.write_text(PASSWORD)
    text = RECIPES.read_text()
    for old, new in {
        "https://hc-ping.com/": server_url + "/hc/",
        "https://ntfy.sh/": server_url + "/ntfy/",
        '"/srv/restic/nas"': f'"{location}"',
        '"/etc/henbackup/secrets/nas"': f'"{secret}"',
        'paths = ["/home"]': f'paths = ["{data}"]',
    }.items():
        assert old in text, old
        text = text.replace(old, new)
    config = tmp_path / "henbackup.toml"
    config.write_text(f'[daemon]\nrestic = "{restic}"\nhostname = "{HOST}"\n\n{text}')
    return config


def backup(config: Path, home: Path, tmp_path: Path) -> tuple[int, list[dict]]:
    env = {
        **os.environ,
        "HOME": str(home),
        "HC_UUID": HC_UUID,
        "NTFY_TOPIC": NTFY_TOPIC,
        "HENBACKUP_EVENTS": "stderr",
        "CACHE_DIRECTORY": str(tmp_path / "cache"),
        "STATE_DIRECTORY": str(tmp_path / "state"),  # not the host's
        "RUNTIME_DIRECTORY": str(tmp_path / "run"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "henbackup.cli.daemon", "--config", str(config), "backup", "home"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    for secret in (PASSWORD, HC_UUID, NTFY_TOPIC):  # the ping URL and the topic are secrets
        assert secret not in done.stdout + done.stderr
    return done.returncode, [json.loads(line) for line in done.stderr.splitlines()]


def test_a_failed_run_pings_healthchecks_posts_to_ntfy_and_mails_the_reason(
    restic, tmp_path, http_server, smtp_server, home
):
    wrong = tmp_path / "wrong-password"
    env = {**os.environ, "RESTIC_REPOSITORY": str(wrong), "RESTIC_PASSWORD": "another one"}
    subprocess.run([restic, "init"], env=env, capture_output=True, check=True)
    config = recipes_for(tmp_path, restic, http_server.url, wrong)

    status, events = backup(config, home, tmp_path)

    assert status == 1
    [failed] = [e for e in events if e["HENBACKUP_EVENT"] == "job.failed"]
    reason = f"nas: {failed['HENBACKUP_ERROR']}"
    assert "password" in reason
    hooks = [e for e in events if e["HENBACKUP_EVENT"].startswith("hook.")]
    assert {e["HENBACKUP_EVENT"] for e in hooks} == {"hook.started", "hook.succeeded"}
    run = {
        "backup": "home",
        "job": failed["HENBACKUP_JOB"],
        "trigger": "manual",
        "error": reason,
        "host": HOST,
    }

    start, fail, ntfy = http_server.requests
    assert (start["method"], start["path"], start["body"]) == ("POST", f"/hc/{HC_UUID}/start", "")
    assert (fail["method"], fail["path"]) == ("POST", f"/hc/{HC_UUID}/fail")
    assert fail["headers"]["Content-Type"] == "application/json"
    assert json.loads(fail["body"]) == {**run, "hook": "failure"}
    assert (ntfy["method"], ntfy["path"]) == ("POST", f"/ntfy/{NTFY_TOPIC}")
    assert json.loads(ntfy["body"]) == {**run, "hook": "failure"}
    assert {name: ntfy["headers"][name] for name in ("X-Template", "X-Title", "X-Message")} == {
        "X-Template": "yes",
        "X-Title": "henbackup: {{.backup}} failed",
        "X-Message": "{{.error}}",
    }

    [(recipients, raw)] = smtp_server.messages
    assert recipients == ["root"]
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    assert mail["To"] == "root"
    assert mail["Subject"] == f"henbackup: home failed on {HOST}"
    assert mail.get_content().replace("\r\n", "\n") == reason + "\n"  # CRLF on the wire


def test_a_run_that_succeeds_pings_start_and_success_and_sends_nothing_else(
    restic, tmp_path, http_server, smtp_server, home
):
    config = recipes_for(tmp_path, restic, http_server.url, tmp_path / "repository")

    status, events = backup(config, home, tmp_path)

    assert status == 0, [e["MESSAGE"] for e in events]
    requests = [(r["method"], r["path"], r["body"]) for r in http_server.requests]
    assert requests == [("POST", f"/hc/{HC_UUID}/start", ""), ("POST", f"/hc/{HC_UUID}", "")]
    assert smtp_server.messages == []
