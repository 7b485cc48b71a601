"""Prometheus metrics (henbackup.toml(5)): the status model in text exposition format 0.0.4.

Served two ways, both optional ([metrics] in the configuration): a file for node_exporter's
textfile collector, and a tiny HTTP server on the master's loop answering `GET /metrics`.

The server has no threads and never blocks the loop: sockets are non-blocking, a request
head is read within REQUEST_TIMEOUT seconds and MAX_HEAD bytes, and a reply that does not
fit the socket at once is finished as the client reads it (Loop.add_writer). A silent,
slow or non-reading client is dropped at its deadline without delaying anyone else.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from henbackup.files import open_directory, write_in
from henbackup.loop import Loop, Timer
from henbackup.observe.status import RunHistory, RunKey, StatusModel

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_HEAD = 8 * 1024
REQUEST_TIMEOUT = 10.0  # the whole life of a connection: request in, reply out
# Clients at once: the master's descriptors are for backups. Beyond, the oldest one that has
# not asked yet makes room (a scraper asks at once: local users holding idle connections
# cannot lock it out); if all have asked, the newcomer is turned away.
MAX_CLIENTS = 32
ACCEPT_PAUSE = 1.0  # accept() failing for want of descriptors: try again after this long
TEXTFILE_MODE = 0o644
TEXTFILE_DIRECTORY_MODE = 0o755

Labels = tuple[str, ...]
Sample = tuple[Labels, float]


@dataclass(frozen=True)
class Family:
    """One metric family. For a counter, `name` is the sample name, `_total` included: that
    is how format 0.0.4 writes it (`# TYPE henbackup_runs_total counter`), how
    prometheus_client writes it, and what its parser reads back as family `henbackup_runs`
    with samples `henbackup_runs_total`. `# TYPE henbackup_runs counter` instead would leave
    the `_total` samples outside the family, untyped."""

    name: str
    kind: str  # gauge, counter
    help: str
    labels: Labels = ()


LAST_SUCCESS = Family(
    "henbackup_last_success_timestamp_seconds",
    "gauge",
    "When the last successful backup started, in seconds since the epoch.",
    ("backup", "repository"),
)
LAST_DURATION = Family(
    "henbackup_last_run_duration_seconds",
    "gauge",
    "How long the last run took, in seconds.",
    ("backup", "repository", "operation"),
)
LAST_SUCCEEDED = Family(
    "henbackup_last_run_success",
    "gauge",
    "1 when the last run succeeded, 0 when it failed or was cancelled.",
    ("backup", "repository", "operation"),
)
RUNS = Family(
    "henbackup_runs_total",
    "counter",
    "Finished runs, by result.",
    ("backup", "repository", "operation", "result"),
)
BYTES_ADDED = Family(
    "henbackup_bytes_added_total",
    "counter",
    "Bytes that backups added to the repository.",
    ("backup", "repository"),
)
SNAPSHOTS = Family(
    "henbackup_snapshots",
    "gauge",
    "How many snapshots the backup has in the repository.",
    ("backup", "repository"),
)
LAST_CPU = Family(
    "henbackup_last_run_cpu_seconds",
    "gauge",
    "CPU time the last run's programs used, for a backup or repository with resources.",
    ("backup", "repository", "operation"),
)
LAST_MEMORY_PEAK = Family(
    "henbackup_last_run_memory_peak_bytes",
    "gauge",
    "Peak memory of the last run's programs, for a backup or repository with resources.",
    ("backup", "repository", "operation"),
)
JOBS_RUNNING = Family("henbackup_jobs_running", "gauge", "Jobs running now.")
JOBS_WAITING = Family("henbackup_jobs_waiting", "gauge", "Jobs waiting in the queue.")
NEXT_RUN = Family(
    "henbackup_next_run_timestamp_seconds",
    "gauge",
    "When the next scheduled run of a backup (or a repository's check or prune) is due, in "
    "seconds since the epoch; absent while a run is in progress.",
    ("backup", "repository"),
)
JOB_STALLED = Family(
    "henbackup_job_stalled",
    "gauge",
    "For each running job: 1 when it was said to make no progress and has not moved since.",
    ("backup", "repository", "operation"),
)
JOB_PAUSED = Family(
    "henbackup_job_paused",
    "gauge",
    "For each running job: 1 while it is paused for a job of higher priority (preemption).",
    ("backup", "repository", "operation"),
)
UP = Family("henbackup_up", "gauge", "1 while the daemon runs.")

FAMILIES = (
    LAST_SUCCESS,
    LAST_DURATION,
    LAST_SUCCEEDED,
    LAST_CPU,
    LAST_MEMORY_PEAK,
    RUNS,
    BYTES_ADDED,
    SNAPSHOTS,
    JOBS_RUNNING,
    JOBS_WAITING,
    NEXT_RUN,
    JOB_STALLED,
    JOB_PAUSED,
    UP,
)


# the text


def render(model: StatusModel, up: bool = True) -> str:
    """Every family of FAMILIES in text format 0.0.4, samples sorted by their labels;
    `up` false for the last textfile of a daemon that stops."""
    samples = _samples(model, up)
    lines: list[str] = []
    for family in FAMILIES:
        lines += _family_lines(family, sorted(samples.get(family, [])))
    return "\n".join(lines) + "\n"


def _samples(model: StatusModel, up: bool) -> dict[Family, list[Sample]]:
    """The samples of every family that has some."""
    samples: dict[Family, list[Sample]] = {family: [] for family in FAMILIES}
    for key, record in model.items():
        for family, sample in _record_samples(key, record):
            samples[family].append(sample)
    samples[JOBS_RUNNING] = [((), len(model.running()))]
    samples[JOBS_WAITING] = [((), len(model.waiting()))]
    samples[NEXT_RUN] = list(_next_runs(model))
    samples[JOB_STALLED] = _stalls(model)
    samples[JOB_PAUSED] = _stalls(model, paused=True)
    samples[UP] = [((), int(up))]
    return samples


def _next_runs(model: StatusModel) -> Iterable[Sample]:
    """A worker's next scheduled run, while none is in progress: a time in the past is then
    a run that is late (a run in progress would show its own start, which is not late)."""
    for worker in model.workers.values():
        if worker.next_run is not None and not worker.running:
            names = (worker.name, "") if worker.kind == "backup" else ("", worker.name)
            yield names, worker.next_run


def _stalls(model: StatusModel, paused: bool = False) -> list[Sample]:
    """One sample per running job's key (two jobs of one key are stalled if either is);
    with `paused`, whether it is paused rather than stalled."""
    stalled: dict[Labels, int] = {}
    for job in model.running():
        labels = (job.key.backup, job.key.repository, job.key.operation)
        stalled[labels] = max(stalled.get(labels, 0), int(job.paused if paused else job.stalled))
    return list(stalled.items())


def _record_samples(key: RunKey, record: RunHistory) -> Iterable[tuple[Family, Sample]]:
    """What one record contributes, family by family."""
    pair = (key.backup, key.repository)
    triple = (*pair, key.operation)
    if record.last is not None:
        if record.last.duration is not None:
            yield LAST_DURATION, (triple, record.last.duration)
        yield LAST_SUCCEEDED, (triple, 1 if record.last.result == "succeeded" else 0)
        if record.last.cpu_sec is not None:
            yield LAST_CPU, (triple, record.last.cpu_sec)
        if record.last.memory_peak is not None:
            yield LAST_MEMORY_PEAK, (triple, record.last.memory_peak)
    for result, count in record.runs.items():
        yield RUNS, ((*triple, result), count)
    if key.operation != "backup":
        return
    if record.last_success is not None:
        yield LAST_SUCCESS, (pair, record.last_success)
    yield BYTES_ADDED, (pair, record.bytes_added)
    if record.snapshots is not None:
        yield SNAPSHOTS, (pair, record.snapshots)


def _family_lines(family: Family, samples: Iterable[Sample]) -> list[str]:
    """The HELP and TYPE lines of `family`, then one line per sample."""
    lines = [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.kind}"]
    for values, value in samples:
        lines.append(f"{family.name}{_labels(family.labels, values)} {_number(value)}")
    return lines


def _labels(names: Labels, values: Labels) -> str:
    """`{name="value",…}` with values escaped, or nothing without labels."""
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)) + "}"


def _escape(value: str) -> str:
    """A label value as format 0.0.4 writes it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """A sample value as Go's ParseFloat reads it: integers without a point, floats in full."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


# the textfile


def write_textfile(path: Path, text: str) -> None:
    """Replace `path` with `text`, atomically, readable by node_exporter; raises OSError.
    A missing directory is made 0755 whatever the umask (the unit's is 0077), so that
    node_exporter's user can enter it. The directory may be another user's (prometheus'):
    it is reached without following their links (`open_directory`)."""
    directory = open_directory(path.parent, TEXTFILE_DIRECTORY_MODE)
    try:
        write_in(directory, path.name, text.encode(), TEXTFILE_MODE)
    finally:
        os.close(directory)


# the server


def answer(head: bytes, render: Callable[[], str]) -> bytes:
    """The whole HTTP reply to one request head (request line and header lines)."""
    lines = head.lstrip(b"\r\n").split(b"\n")
    request = re.fullmatch(rb"(\S+) (\S+) HTTP/1\.\d\r?", lines[0])
    if request is None or any(b":" not in line for line in lines[1:]):
        return _reply("400 Bad Request", b"bad request\n")
    method, target = request.group(1).decode("latin-1"), request.group(2).decode("latin-1")
    head_only = method == "HEAD"
    try:
        path = urlsplit(target).path
    except ValueError:
        return _reply("400 Bad Request", b"bad request\n", head_only)
    if path != "/metrics":
        return _reply("404 Not Found", b"not found: try /metrics\n", head_only)
    if method not in ("GET", "HEAD"):
        allow = {"Allow": "GET, HEAD"}
        return _reply("405 Method Not Allowed", b"method not allowed\n", head_only, allow)
    return _reply("200 OK", render().encode(), head_only, {"Content-Type": CONTENT_TYPE})


def _reply(
    status: str, body: bytes, head_only: bool = False, headers: dict[str, str] | None = None
) -> bytes:
    """An HTTP/1.0 reply: status line, headers, and the body unless `head_only`."""
    fields = {
        "Content-Type": "text/plain; charset=utf-8",
        "Content-Length": str(len(body)),
        "Connection": "close",
        **(headers or {}),
    }
    lines = [f"HTTP/1.0 {status}", *(f"{name}: {value}" for name, value in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


_HEAD_END = re.compile(rb"\r?\n\r?\n")


def listen(address: tuple[str, int]) -> socket.socket:
    """A non-blocking listening TCP socket on (host, port), IPv6 when `host` has a colon.

    Raises OSError (address in use or not local, port below 1024 without the right to it):
    the caller reports "cannot listen on …".
    """
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class _Client:
    conn: socket.socket
    timer: Timer  # the connection's deadline
    buffer: bytes = b""
    reply: memoryview | None = None  # what is left to send, once the request is answered
    writing: bool = False  # watched by the loop for writing


@dataclass
class MetricsServer:
    """Answers `GET /metrics` with `render()`, one request per connection.

    Nothing is written with a blocking call: a reply larger than the socket takes at once is
    finished through Loop.add_writer as the client reads, so a client that never reads costs
    the loop nothing and is dropped at its deadline (a blocking sendall with a timeout would
    instead stall the master for that timeout, once per such client).
    """

    sock: socket.socket
    loop: Loop
    render: Callable[[], str]
    clients: dict[int, _Client] = field(default_factory=dict)
    paused: Timer | None = None

    @classmethod
    def open(cls, loop: Loop, address: tuple[str, int], render: Callable[[], str]) -> MetricsServer:
        """A server listening on `address` and served by `loop`; raises OSError."""
        server = cls(listen(address), loop, render)
        loop.add_reader(server.sock.fileno(), server._accept)
        return server

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) it listens on: the real port when opened on port 0."""
        host, port = self.sock.getsockname()[:2]
        return host, port

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        except OSError:  # out of descriptors: pause rather than spin on a readable socket
            self._pause()
            return
        if len(self.clients) >= MAX_CLIENTS:
            silent = next((fd for fd, c in self.clients.items() if c.reply is None), None)
            if silent is None:
                conn.close()
                return
            self._drop(silent)
        conn.setblocking(False)
        fd = conn.fileno()
        timer = self.loop.call_later(REQUEST_TIMEOUT, lambda: self._drop(fd))
        self.clients[fd] = _Client(conn, timer)
        self.loop.add_reader(fd, lambda: self._read(fd))

    def _pause(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.paused = self.loop.call_later(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        self.paused = None
        self.loop.add_reader(self.sock.fileno(), self._accept)

    def _read(self, fd: int) -> None:
        client = self.clients[fd]
        try:
            data = client.conn.recv(MAX_HEAD)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return
        client.buffer += data
        end = _HEAD_END.search(client.buffer)
        if end is not None and end.end() <= MAX_HEAD:
            self._respond(fd, answer(client.buffer[: end.start()], self.render))
        elif end is not None or len(client.buffer) > MAX_HEAD:
            self._respond(fd, _reply("431 Request Header Fields Too Large", b"too large\n"))

    def _respond(self, fd: int, reply: bytes) -> None:
        """Stop reading from `fd` and send it `reply`, now or as it becomes writable."""
        self.loop.remove_reader(fd)
        self.clients[fd].reply = memoryview(reply)
        self._send(fd)

    def _send(self, fd: int) -> None:
        client = self.clients[fd]
        assert client.reply is not None
        try:
            sent = client.conn.send(client.reply)
        except BlockingIOError:
            sent = 0
        except OSError:  # the client went away
            self._drop(fd)
            return
        client.reply = client.reply[sent:]
        if not client.reply:
            self._drop(fd)
        elif not client.writing:
            client.writing = True
            self.loop.add_writer(fd, lambda: self._send(fd))

    def _drop(self, fd: int) -> None:
        client = self.clients.pop(fd, None)
        if client is None:
            return
        client.timer.cancel()
        if client.reply is None or client.writing:
            self.loop.remove_reader(fd)  # removes a writer too
        client.conn.close()

    def close(self) -> None:
        """Drop every client and stop listening."""
        for fd in list(self.clients):
            self._drop(fd)
        if self.paused is not None:
            self.paused.cancel()
        else:
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
