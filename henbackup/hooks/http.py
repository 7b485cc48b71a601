"""HTTP hooks through urllib: one request, retried with exponential backoff, 2xx = success.

`timeout` bounds each attempt as a whole (connection, headers and body): every read on the
attempt's sockets only gets the time left, so a server trickling its body cannot stretch it.

Every hook's request runs in a child of its own (`run_http_apart`): urllib cannot be woken
from a wait on its socket, and a stop must end the hook at once, not at its timeout. The
parent also kills the child once every attempt's timeout and backoff have passed: http.client
reads status and header lines with the socket's timeout per read, so a dribbling server could
otherwise keep it forever.
"""

from __future__ import annotations

import base64
import functools
import http.client
import json
import math
import os
import pickle
import select
import signal
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import replace
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from henbackup.config.model import HttpHook
from henbackup.hooks.outcome import Attempt, HookContext
from henbackup.hooks.output import Tail
from henbackup.process import (
    SafePoint,
    block_signals,
    describe_exit,
    fork_child,
    reap,
    reset_signals,
)
from henbackup.redact import redact_url

BACKOFF = 1.0  # seconds before the first retry, doubled before each next one
MAX_BACKOFF = 60.0
DOUBLINGS = 64  # past these, every wait is MAX_BACKOFF (2**1024 overflows a float)
LONGEST_POLL = 86_400.0  # seconds of one poll(2), which takes at most 2**31 - 1 ms
SLACK = 5.0  # seconds for a request's child to start and report, beyond its attempts
RETRYABLE_STATUSES = frozenset({408, 429})  # and every 5xx: the server may recover
UNSENDABLE = "cannot send: the URL or a header has a character HTTP does not allow"
JSON_BODY = "json"  # body = "json": the run's fields (HookContext.document) as a JSON object


def describe(hook: HttpHook) -> str:
    """How events name the hook: method and URL, its secrets redacted."""
    return f"{hook.method} {redact_url(hook.url)}"


def for_run(hook: HttpHook, context: HookContext) -> HttpHook:
    """`hook` as its run sends it: `body = "json"` becomes the run's fields as JSON, with a
    JSON Content-Type unless the hook gives one."""
    if hook.body != JSON_BODY:
        return hook
    headers = hook.headers
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers += (("Content-Type", "application/json"),)
    return replace(hook, body=json.dumps(context.document()), headers=headers)


def run_http(hook: HttpHook, backoff: float = BACKOFF) -> Attempt:
    """Send the request, retrying up to `hook.retries` times; returns the last attempt.

    Network errors, timeouts, 5xx, 408 and 429 are retried; other statuses are final.
    """
    attempts = 1
    attempt, retryable = _once(hook)
    while attempt.status != "succeeded" and retryable and attempts <= hook.retries:
        time.sleep(_wait_before(attempts - 1, backoff))
        attempts += 1
        attempt, retryable = _once(hook)
    return replace(attempt, fields={**attempt.fields, "attempts": attempts})


def run_http_apart(hook: HttpHook, backoff: float, safe_point: SafePoint) -> Attempt:
    """`run_http` in a child process, killed (SIGKILL) when `safe_point` raises meanwhile."""
    read_fd, write_fd = os.pipe()
    mask = block_signals()  # until the child is under watch, and its handlers reset

    def child() -> int:
        reset_signals(mask)  # a stop meant for us is not its to record
        data = pickle.dumps(run_http(hook, backoff))
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view) :]
        return 0

    try:
        forked = fork_child("henbackup-http", child, close_in_child=(read_fd,))
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(write_fd)
    try:
        data = _read_all(read_fd, safe_point, time.monotonic() + _budget(hook, backoff))
    except BaseException:
        os.kill(forked.pid, signal.SIGKILL)
        reap(forked)
        raise
    finally:
        os.close(read_fd)
    if data is None:  # a server dribbling bytes can stretch a socket's timeout, not this
        os.kill(forked.pid, signal.SIGKILL)
        reap(forked)
        return Attempt("failed", f"timed out after {hook.timeout:g}s")
    status = reap(forked)
    attempt = pickle.loads(data) if data else None  # from our own child, through a pipe
    if not isinstance(attempt, Attempt):
        how = describe_exit(os.waitstatus_to_exitcode(status))
        return Attempt("failed", f"the request's process {how}")
    return attempt


def _wait_before(retry: int, backoff: float) -> float:
    """The wait before retry number `retry` (from 0): `backoff`, doubled each time."""
    return min(backoff * 2 ** min(retry, DOUBLINGS), MAX_BACKOFF)


def _budget(hook: HttpHook, backoff: float) -> float:
    """The longest `run_http` may take: every attempt's timeout, the waits between them.
    Any count of retries gives a number (maybe inf), never an OverflowError."""
    retries = min(hook.retries, 2**53)  # exact as a float, and beyond any deadline
    doubling = min(retries, DOUBLINGS)
    waits = sum(_wait_before(n, backoff) for n in range(doubling))
    waits += (retries - doubling) * _wait_before(DOUBLINGS, backoff)
    return hook.timeout * (retries + 1) + waits + SLACK


def _read_all(fd: int, safe_point: SafePoint, deadline: float) -> bytes | None:
    """Read `fd` to its end, or None at `deadline`; what `safe_point` raises as a signal
    comes ends the wait."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if safe_point.fd is not None:
        poller.register(safe_point.fd, select.POLLIN)
    chunks = []
    while True:
        safe_point.check()
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        for ready, _ in poller.poll(math.ceil(min(left, LONGEST_POLL) * 1000)):
            if ready == safe_point.fd:
                safe_point.drain()
            elif chunk := os.read(fd, 65536):
                chunks.append(chunk)
            else:
                return b"".join(chunks)


def make_request(hook: HttpHook) -> urllib.request.Request:
    """The request of `hook`; raises ValueError when its URL is not http(s).

    Credentials in the URL (`https://user:password@host/`) become HTTP Basic
    authentication, as with curl, unless an Authorization header is given.
    """
    parts = urlsplit(hook.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http:// or https:// URL")
    headers = dict(hook.headers)
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        if not any(name.lower() == "authorization" for name in headers):
            headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    return urllib.request.Request(
        urlunsplit(parts),
        data=None if hook.body is None else hook.body.encode(),
        headers=headers,
        method=hook.method,
    )


def _once(hook: HttpHook) -> tuple[Attempt, bool]:
    """One attempt; returns it and whether trying again may help."""
    try:
        request = make_request(hook)
    except ValueError as error:
        return Attempt("failed", f"cannot send: {error}"), False
    session = _Session(time.monotonic() + hook.timeout)
    opener = urllib.request.build_opener(
        _HTTPHandler(session), _HTTPSHandler(session), _NoRedirect()
    )
    tail = Tail()
    try:
        status = _exchange(opener, request, hook.timeout, session, tail)
    except TimeoutError:
        return Attempt("failed", f"timed out after {hook.timeout:g}s", *_output(tail)), True
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            return Attempt("failed", f"timed out after {hook.timeout:g}s"), True
        return Attempt("failed", f"cannot reach {_host(hook)}: {_reason(error.reason)}"), True
    except (ValueError, http.client.InvalidURL):  # their message quotes what may be a secret
        return Attempt("failed", UNSENDABLE), False
    except (OSError, http.client.HTTPException) as error:
        return Attempt("failed", f"request failed: {_reason(error)}", *_output(tail)), True
    fields: dict[str, Any] = {"http_status": status}
    if 200 <= status < 300:
        return Attempt("succeeded", None, *_output(tail), fields), False
    if 300 <= status < 400:
        reason = f"answered {status} (redirects are not followed)"
        return Attempt("failed", reason, *_output(tail), fields), False
    retryable = status >= 500 or status in RETRYABLE_STATUSES
    return Attempt("failed", _status_text(status), *_output(tail), fields), retryable


def _exchange(
    opener: urllib.request.OpenerDirector,
    request: urllib.request.Request,
    timeout: float,
    session: _Session,
    tail: Tail,
) -> int:
    """Send `request`, read the whole body into `tail`; returns the HTTP status."""
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as error:  # a non-2xx status: its body is output too
        response = error
    with response:
        while True:
            session.tighten()
            chunk = response.read1(65536)
            if not chunk:
                return int(response.status or 0)
            tail.add(chunk)


class _Session:
    """The sockets of one attempt and its deadline."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.sockets: list[socket.socket] = []

    def remaining(self) -> float:
        """Seconds left; raises TimeoutError when none are."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    def adopt(self, sock: socket.socket) -> None:
        self.sockets.append(sock)
        sock.settimeout(self.remaining())

    def tighten(self) -> bool:
        """Give every socket only the time left before the next read; returns True."""
        left = self.remaining()
        for sock in self.sockets:
            sock.settimeout(left)
        return True


class _Adopted:
    """A connection whose socket, once connected, is handed to the session (its deadline)."""

    def __init__(self, *args: Any, session: _Session, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._session = session

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._session.adopt(self.sock)  # type: ignore[attr-defined]


class _HTTPConnection(_Adopted, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Adopted, http.client.HTTPSConnection):
    pass


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is the answer: following it would send the hook's headers and the URL's
    credentials to wherever the server says."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, session: _Session) -> None:
        super().__init__()
        self._session = session

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPConnection, session=self._session), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, session: _Session) -> None:
        self._ssl = ssl.create_default_context()
        super().__init__(context=self._ssl)
        self._session = session

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = functools.partial(_HTTPSConnection, session=self._session)
        return self.do_open(connection, req, context=self._ssl)


def _output(tail: Tail) -> tuple[bytes, bool]:
    return bytes(tail.data), tail.truncated


def _host(hook: HttpHook) -> str:
    return urlsplit(hook.url).hostname or "the server"


def _status_text(status: int) -> str:
    try:
        return f"HTTP {status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _reason(reason: object) -> str:
    """A one-line reason without the URL (which may carry a secret)."""
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason).splitlines()[0] if str(reason) else type(reason).__name__
