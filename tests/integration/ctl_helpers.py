"""What the henbackupctl tests share: restic and repositories, source trees, the config, the
client, metrics. One daemon per story lives in each test file (test_ctl_verbs, test_ctl_queue,
test_ctl_restore)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Daemon
from prometheus_client.parser import text_string_to_metric_families

ONE_RESTIC = pytest.mark.parametrize("restic", ["restic-0.14"], indirect=True)

PASSWORD = "ctl-verbs Zq9#local-SECRET-7731"  # the repositories' real password
WRONG_PASSWORD = "ctl-verbs Wr0ng#SECRET-4410"  # what the config says for `wrong`
HOST = "testhost"
WRONG_PASSWORD_ERROR = "wrong password for repository wrong: check its password setting"
CLIENT_TIMEOUT = 120
FRESH_INSTEAD = "restore into a fresh directory with --target DIR instead"
JOB_TIMEOUT = 60.0

Completed = subprocess.CompletedProcess[str]


# --- set-up ---------------------------------------------------------------------------------


def restic_run(restic: str, repository: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "RESTIC_REPOSITORY": str(repository), "RESTIC_PASSWORD": PASSWORD}
    return subprocess.run(
        [restic, "--no-cache", *args], env=env, capture_output=True, check=True, timeout=120
    )


def restic_time(text: str) -> datetime:
    """restic's RFC 3339 time, nanoseconds cut to what datetime holds."""
    return datetime.fromisoformat(re.sub(r"(\.[0-9]{6})[0-9]+", r"\1", text))


def restic_snapshots(restic: str, repository: Path) -> list[dict[str, Any]]:
    """restic's own list, newest first."""
    found = json.loads(restic_run(restic, repository, "snapshots", "--json").stdout)
    return sorted(found, key=lambda s: restic_time(s["time"]), reverse=True)


def new_repository(
    restic: str, where: Path, templates: dict[str, Path], factory: pytest.TempPathFactory
) -> Path:
    """A fresh repository at `where` whose password is PASSWORD."""
    template = templates.get(restic)
    if template is None:
        template = factory.mktemp("ctl-template") / "repository"
        restic_run(restic, template, "init")
        templates[restic] = template
    shutil.copytree(template, where)
    return where


def make_tree(root: Path, big: int = 0) -> Path:
    """Files of every kind and mode a backup meets; with `big`, also big.bin of that many
    random bytes."""
    (root / "album" / "2024").mkdir(parents=True)
    (root / "notes.txt").write_text("first line\nsecond line\n")
    (root / "album" / "cat.jpg").write_bytes(os.urandom(30_000))
    (root / "album" / "2024" / "beach.jpg").write_bytes(os.urandom(70_000))
    (root / "album" / "2024" / "été à Nîmes.txt").write_text("non-ASCII name\n")
    (root / "empty").touch()
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o750)
    private = root / "private"
    private.mkdir()
    (private / "id.key").write_bytes(os.urandom(300))
    (private / "id.key").chmod(0o600)
    private.chmod(0o700)
    (root / "album" / "2024").chmod(0o755)
    (root / "latest.jpg").symlink_to("album/cat.jpg")
    if big:
        (root / "big.bin").write_bytes(os.urandom(big))
    return root


Entry = tuple[str, int, bytes | str | None]


def tree_state(root: Path) -> dict[str, Entry]:
    """Every entry under `root` (itself as "."): kind, permission bits, content (a file's
    bytes, a link's target)."""
    entries: dict[str, Entry] = {".": ("dir", stat.S_IMODE(root.lstat().st_mode), None)}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        name = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            entries[name] = ("link", 0, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            entries[name] = ("dir", stat.S_IMODE(st.st_mode), None)
        else:
            entries[name] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return entries


def regular_files(root: Path) -> tuple[int, int]:
    """How many regular files are under `root`, and their bytes."""
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    return len(files), sum(p.stat().st_size for p in files)


def restored(target: str | Path, source: Path) -> Path:
    """Where restic put `source` under `target` (it keeps absolute paths)."""
    return Path(target) / source.relative_to(source.anchor)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def toml(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return json.dumps(value)


def write_config(
    base: Path,
    restic: str,
    repositories: dict[str, tuple[Path, str]],
    backups: dict[str, dict[str, object]],
    metrics: dict[str, str] | None = None,
) -> Path:
    lines = ["[daemon]", f"restic = {toml(restic)}", f"hostname = {toml(HOST)}"]
    if metrics:
        lines += ["", "[metrics]", *(f"{k} = {toml(v)}" for k, v in metrics.items())]
    for name, (location, password) in repositories.items():
        lines += ["", f"[repositories.{name}]", f"location = {toml(str(location))}"]
        lines.append(f"password = {toml(password)}")
    for name, settings in backups.items():
        lines += ["", f"[backups.{name}]", *(f"{k} = {toml(v)}" for k, v in settings.items())]
    config = base / "henbackup.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


# --- the client -----------------------------------------------------------------------------


def client_argv(daemon_socket: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "henbackup.cli.ctl", "--socket", str(daemon_socket), *args]


def henbackupctl(daemon_socket: Path, *args: str) -> Completed:
    """Run the real client where no daemon runs (nothing to read meanwhile)."""
    return subprocess.run(
        client_argv(daemon_socket, *args),
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


class Client:
    """The real client, started now; its stdin is not a terminal, so it prints its job's
    steps, not progress bars. Output goes to files: no pipe to fill up."""

    def __init__(
        self, daemon_socket: Path, *args: str, cwd: Path | None = None, stdout: int | None = None
    ) -> None:
        """`stdout`: a descriptor to print on instead of a file (then stdout reads empty)."""
        self.args = list(args)
        # closed by result(): the client outlives this call
        self.out = tempfile.TemporaryFile()  # noqa: SIM115
        self.err = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            client_argv(daemon_socket, *args),
            stdin=subprocess.DEVNULL,
            stdout=self.out if stdout is None else stdout,
            stderr=self.err,
            cwd=cwd,
        )

    def running(self) -> bool:
        return self.process.poll() is None

    def result(self, daemon: Daemon, timeout: float = CLIENT_TIMEOUT) -> Completed:
        """Wait for the client to exit, reading the daemon's events meanwhile (the daemon
        must never block on a full stderr pipe), and all it said before the answer."""
        daemon.pump_until(lambda: not self.running(), timeout, step=0.05)
        if self.running():
            self.process.kill()
        code = self.process.wait()
        daemon.pump(0)
        texts = []
        for file in (self.out, self.err):
            file.seek(0)
            texts.append(file.read().decode())
            file.close()
        return subprocess.CompletedProcess(self.args, code, texts[0], texts[1])


def ctl(daemon: Daemon, *args: str, cwd: Path | None = None) -> Completed:
    """Run the real client against the running daemon, until it exits."""
    return Client(daemon.socket, *args, cwd=cwd).result(daemon)


def said(call: Completed) -> str:
    """A client call, for assertion messages."""
    return f"exit {call.returncode}\nstdout:\n{call.stdout}\nstderr:\n{call.stderr}"


def lines(text: str) -> list[str]:
    return text.splitlines()


def reply(call: Completed) -> Any:
    """The --json document on stdout (exactly one)."""
    return json.loads(call.stdout)


def columns(line: str) -> list[str]:
    """A table row's cells (views.table: two spaces or more between columns)."""
    return re.split(r" {2,}", line.strip())


AGO = r"(just now|[0-9]+ (s|min) ago)"
TOOK = r"[0-9]+\.[0-9] s|[0-9]+ s|[0-9]+ min [0-9]+ s"


def cells_match(row: list[str], patterns: list[str]) -> bool:
    return len(row) == len(patterns) and all(
        re.fullmatch(p, c) for p, c in zip(patterns, row, strict=True)
    )


def unreachable_message(daemon_socket: Path) -> str:
    where = re.escape(str(daemon_socket))
    return (
        rf"henbackupctl: cannot reach the daemon at {where}: [^\n]+ "
        r"\(is henbackup\.service running\?\)\n"
    )


# --- metrics --------------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, sorted labels), and every family's type, as Prometheus reads
    them."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def get_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return answer.read().decode()


def status_row(status: dict[str, Any], backup: str, repository: str) -> dict[str, Any]:
    """One backup→repository row of a `status --json` reply."""
    (entry,) = [b for b in status["backups"] if b["name"] == backup]
    (row,) = [r for r in entry["repositories"] if r["repository"] == repository]
    return row
