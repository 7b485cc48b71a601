"""Real storage backends on 127.0.0.1 for the engine's fault tests.

`RestServer` is restic's REST protocol served by `rclone serve restic` (Debian's rclone)
from a directory: a real HTTP server that a test can freeze (SIGSTOP), kill, and start
again on the same port. `rest_repository` gives a test one, serving an initialized
repository of its own (password daemon_helpers.PASSWORD).

Import it as `integration.backends` (tests/ is on sys.path through its conftest.py).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.daemon_helpers import restic_command

RCLONE = shutil.which("rclone") or "rclone"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def accepts(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class RestServer:
    """`rclone serve restic` serving `directory` as the repository at the server's root."""

    def __init__(self, directory: Path, log: Path) -> None:
        self.directory, self.log = directory, log
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def location(self) -> str:
        """The restic repository string."""
        return f"rest:http://127.0.0.1:{self.port}/"

    def start(self, after: float = 0.0, timeout: float = 30.0) -> RestServer:
        """Serve, on the same port as before; with `after`, only that many seconds from now
        (and return at once: the test goes on while the backend is away)."""
        command = [RCLONE, "serve", "restic", "--addr", f"127.0.0.1:{self.port}"]
        command.append(str(self.directory))
        if after:
            command = ["sh", "-c", f'sleep {after}; exec "$@"', "sh", *command]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        if not after:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not accepts(self.port):
            assert self.process is not None and self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"rclone did not listen:\n{self.log.read_text()}"
            time.sleep(0.05)

    def freeze(self) -> None:
        """SIGSTOP: connections are still accepted (by the kernel), nothing is answered."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """Gone: connections are refused until `start`."""
        if self.process is not None:
            self._signal(signal.SIGCONT)  # a frozen one dies too
            self._signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    def _signal(self, signum: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)


# One initialized repository per restic binary for the session: `restic init` takes seconds.
_templates: dict[str, Path] = {}


@pytest.fixture
def rest_repository(
    restic: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RestServer]:
    """A REST server serving a fresh initialized repository (password PASSWORD) of the
    test's own; killed at the end of the test. Import it into the test module."""
    template = _templates.get(restic)
    if template is None:
        template = tmp_path_factory.mktemp("rest-template") / "repository"
        restic_command(restic, template, "init")
        _templates[restic] = template
    directory = tmp_path / "rest-repository"
    shutil.copytree(template, directory)
    server = RestServer(directory, tmp_path / "rclone.log").start()
    try:
        yield server
    finally:
        server.kill()
