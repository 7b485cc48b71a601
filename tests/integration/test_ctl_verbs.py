"""henbackupctl's verbs end to end (SPEC "henbackupctl", "Metrics"): the real client
(`python -m henbackup.cli.ctl`) against `henbackup run` as a subprocess, real restic, local
repositories, real files.

Three daemons are shared by several tests each (module-scoped scenarios), so that each
behaviour is asserted on its own while restic runs as little as a 2-core machine allows:

- `two_repositories`: backups pictures → [wrong, local] and docs → [local], where `wrong` is
  a real repository configured with a password that is not its own; status, backup,
  list-snapshots, check, prune, metrics (textfile and HTTP), --json schemas, secrets.
- `busy`: one slow backup (a big random file, upload_limit) holding the only slot while
  others wait: queue, status while running, cancel of a waiting and of a running job.
- restore (one daemon per restic version): every way to restore, compared byte for byte
  and mode for mode with the source tree.

Everything waits on the daemon's events with deadlines (daemon_helpers.Daemon); nothing
sleeps a fixed time to synchronise. Which restic: only restore depends on restic's own
behaviour (what it writes back), so it runs on 0.14 and 0.18; the rest runs on 0.14.
"""

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
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import ctl_schemas
import pytest
from daemon_helpers import Daemon, describe, matches, when
from prometheus_client.parser import text_string_to_metric_families

from henbackup.humanize import size

pytestmark = [pytest.mark.integration, pytest.mark.slow]

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


@pytest.fixture(scope="session")
def _templates() -> dict[str, Path]:
    """One initialised empty repository per restic binary (`init` takes seconds; a copy,
    milliseconds)."""
    return {}


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

    def __init__(self, daemon_socket: Path, *args: str, cwd: Path | None = None) -> None:
        self.args = list(args)
        # closed by result(): the client outlives this call
        self.out = tempfile.TemporaryFile()  # noqa: SIM115
        self.err = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            client_argv(daemon_socket, *args),
            stdin=subprocess.DEVNULL,
            stdout=self.out,
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


# --- scenario: two repositories, one with the wrong password ---------------------------------


@dataclass
class Scenario:
    daemon: Daemon
    restic: str
    base: Path
    config: Path
    repositories: dict[str, Path]
    data: dict[str, Path]
    port: int = 0
    textfile: Path | None = None
    calls: dict[str, Completed] = field(default_factory=dict)
    marks: dict[str, int] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    stop_code: int | None = None

    def ctl(self, name: str, *args: str) -> Completed:
        if self.daemon.process is None:  # stopped
            self.calls[name] = henbackupctl(self.daemon.socket, *args)
        else:
            self.calls[name] = ctl(self.daemon, *args)
        return self.calls[name]

    def mark(self, name: str) -> None:
        self.daemon.pump(0)
        self.marks[name] = len(self.daemon.events)

    def since(self, mark: str, kind: str | None = None, **fields: str) -> list[dict[str, str]]:
        """The events from `mark` to the next mark (or to the end)."""
        names = list(self.marks)
        later = names[names.index(mark) + 1 :]
        end = self.marks[later[0]] if later else len(self.daemon.events)
        window = self.daemon.events[self.marks[mark] : end]
        return [event for event in window if matches(event, kind, **fields)]

    def wait_count(self, mark: str, count: int, kind: str, **fields: str) -> None:
        if not self.daemon.pump_until(
            lambda: len(self.since(mark, kind, **fields)) >= count, JOB_TIMEOUT
        ):
            raise AssertionError(f"not {count} x {kind} {fields}\n{self.daemon.report()}")


def restic_wrapper(base: Path, restic: str) -> tuple[Path, Path]:
    """A restic that first writes its arguments down (passwords must never be there)."""
    log = base / "restic-argv.log"
    wrapper = base / "restic-wrapper"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {restic} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, log


@pytest.fixture(scope="module")
def two_repositories(
    restic: str, tmp_path_factory: pytest.TempPathFactory, _templates: dict[str, Path]
) -> Scenario:
    base = tmp_path_factory.mktemp("ctl-two-repositories")
    local = new_repository(restic, base / "local", _templates, tmp_path_factory)
    wrong = new_repository(restic, base / "wrong", _templates, tmp_path_factory)
    data = {"pictures": make_tree(base / "pictures"), "docs": base / "docs"}
    (data["docs"] / "letters").mkdir(parents=True)
    (data["docs"] / "letters" / "a.txt").write_text("Dear reader,\n")
    wrapper, argv_log = restic_wrapper(base, restic)
    port = free_port()
    textfile = base / "metrics" / "henbackup.prom"
    textfile.parent.mkdir()
    config = write_config(
        base,
        str(wrapper),
        {"local": (local, PASSWORD), "wrong": (wrong, WRONG_PASSWORD)},
        {
            "pictures": {"paths": [str(data["pictures"])], "repositories": ["wrong", "local"]},
            "docs": {"paths": [str(data["docs"])], "repositories": ["local"]},
        },
        {"textfile": str(textfile), "listen": f"127.0.0.1:{port}"},
    )
    daemon = Daemon(config, base)
    scenario = Scenario(
        daemon, restic, base, config, {"local": local, "wrong": wrong}, data, port, textfile
    )
    scenario.notes["argv_log"] = argv_log
    daemon.start()
    scenario.notes["pid"] = daemon.pid
    try:
        _play(scenario)
    finally:
        scenario.stop_code = daemon.stop()
    scenario.notes["textfile_after_stop"] = textfile.read_text() if textfile.exists() else None
    scenario.ctl("status-after-stop", "status")
    scenario.ctl("backup-after-stop", "backup", "pictures")
    scenario.notes["restic"] = restic_snapshots(restic, local)
    return scenario


def _play(s: Scenario) -> None:
    """Everything the tests of this scenario look at, in order, while the daemon runs."""
    daemon = s.daemon
    daemon.wait_for("daemon.started")
    s.ctl("status-before", "status")
    s.ctl("status-before-json", "--json", "status")
    s.ctl("queue-empty", "queue")
    s.ctl("queue-empty-json", "--json", "queue")

    s.mark("backup")
    s.ctl("backup", "backup", "pictures")
    s.ctl("status", "status")
    s.ctl("status-json", "--json", "status")

    s.mark("backup-local")
    s.ctl("backup-local-json", "--json", "backup", "pictures", "--repository", "local")

    s.mark("no-wait")
    s.ctl("no-wait", "backup", "docs", "--no-wait")
    s.ctl("no-wait-json", "--json", "backup", "docs", "--no-wait")
    s.wait_count("no-wait", 2, "job.succeeded", operation="backup", backup="docs")
    daemon.wait_worker("docs", lambda w: w["run"] == "idle")

    s.mark("usage")
    s.ctl("unknown-backup", "backup", "music")
    s.ctl("not-its-repository", "backup", "docs", "--repository", "wrong")
    s.ctl("unknown-repository", "backup", "pictures", "--repository", "nowhere")
    s.ctl("bad-priority", "backup", "pictures", "--priority", "sometimes")
    s.ctl("bad-priority-json", "--json", "backup", "pictures", "--priority", "sometimes")
    daemon.collect(0.3)  # anything they started would have fired by now
    s.notes["usage-events"] = s.since("usage", "trigger.fired") + s.since("usage", "job.queued")

    s.ctl("list-all", "list-snapshots")
    s.ctl("list-all-json", "--json", "list-snapshots")
    s.ctl("list-local", "list-snapshots", "local")
    s.ctl("list-local-json", "--json", "list-snapshots", "local")
    s.ctl("list-docs", "list-snapshots", "-b", "docs")
    s.ctl("list-docs-json", "--json", "list-snapshots", "-b", "docs")
    s.ctl("list-local-pictures-json", "--json", "list-snapshots", "local", "-b", "pictures")
    s.ctl("list-unknown-repository", "list-snapshots", "nowhere")
    s.ctl("list-unknown-backup", "list-snapshots", "-b", "music")

    s.mark("check")
    s.ctl("check", "check", "local", "--read-data-subset", "10%", "--priority", "next")
    s.ctl("prune-json", "--json", "prune", "local")
    s.ctl("check-wrong", "check", "wrong")
    s.ctl("subset-too-large", "check", "local", "--read-data-subset", "110%")
    s.ctl("subset-nonsense", "check", "local", "--read-data-subset", "lots")

    # restore-snapshot's own checks (the restores themselves: test_restore_*)
    local_ids = [snap["id"] for snap in restic_snapshots(s.restic, s.repositories["local"])]
    s.notes["local_ids"] = local_ids
    s.ctl("restore-unknown", "restore-snapshot", "local", "0000000000")
    s.ctl("restore-short", "restore-snapshot", "local", local_ids[0][:3])
    s.mark("restore-twice")
    # Two restores of one snapshot asked at the same moment, each "into a new directory".
    both = [
        Client(s.daemon.socket, "restore-snapshot", "local", local_ids[0][:8], "--no-wait")
        for _ in range(2)
    ]
    s.notes["restore-twice"] = [p.result(s.daemon) for p in both]
    s.wait_count("restore-twice", 2, "job.succeeded", operation="restore")

    s.ctl("status-end", "status")
    s.ctl("status-end-json", "--json", "status")
    s.notes["http"] = get_metrics(s.port)
    assert s.textfile is not None
    s.notes["textfile"] = s.textfile.read_text()


def _event(s: Scenario, mark: str, kind: str, **fields: str) -> dict[str, str]:
    found = s.since(mark, kind, **fields)
    assert len(found) == 1, f"{kind} {fields}:\n{describe(s.daemon.events[s.marks[mark] :])}"
    return found[0]


def _row(status: dict[str, Any], backup: str, repository: str) -> dict[str, Any]:
    (entry,) = [b for b in status["backups"] if b["name"] == backup]
    (row,) = [r for r in entry["repositories"] if r["repository"] == repository]
    return row


@ONE_RESTIC
def test_the_daemon_stopped_cleanly(two_repositories: Scenario) -> None:
    s = two_repositories
    assert s.stop_code == 0, s.daemon.report()
    assert s.daemon.leftovers == []
    assert s.daemon.noise == [], s.daemon.report()


@ONE_RESTIC
def test_status_before_any_run(two_repositories: Scenario) -> None:
    s = two_repositories
    human, js = s.calls["status-before"], s.calls["status-before-json"]
    assert (human.returncode, human.stderr, js.returncode, js.stderr) == (0, "", 0, ""), said(human)
    assert lines(human.stdout) == [
        "2 backups; idle",
        "",
        "BACKUP    REPOSITORY  STATE  LAST RUN  TOOK  LAST SUCCESS  NEXT RUN  RESULT",
        "docs      local       idle   -         -     -             -         -",
        "pictures  wrong       idle   -         -     -             -         -",
        "pictures  local       idle   -         -     -             -         -",
    ]
    status = reply(js)
    ctl_schemas.validate(status, ctl_schemas.STATUS)
    assert status["daemon"] == {"pid": s.notes["pid"], "config": str(s.config)}
    idle = {
        "state": "idle",
        "job": None,
        "position": None,
        "percent": None,
        "last_attempt": None,
        "last_success": None,
        "result": None,
        "duration": None,
        "error": None,
        "snapshot": None,
        "snapshots": None,
    }
    assert [(b["name"], b["worker"], b["run"], b["next_run"]) for b in status["backups"]] == [
        ("docs", "running", "idle", None),
        ("pictures", "running", "idle", None),
    ]
    assert _row(status, "pictures", "wrong") == {"repository": "wrong", **idle}
    assert _row(status, "pictures", "local") == {"repository": "local", **idle}
    assert status["repositories"] == [
        {"name": n, "worker": None, "run": "idle", "next_run": None, "operations": []}
        for n in ("local", "wrong")
    ]


@ONE_RESTIC
def test_backup_waits_shows_its_steps_and_a_failing_repository_does_not_stop_the_other(
    two_repositories: Scenario,
) -> None:
    s = two_repositories
    call = s.calls["backup"]
    done = _event(s, "backup", "job.succeeded", backup="pictures", repository="local")
    snapshot = done["HENBACKUP_SNAPSHOT"]
    assert call.returncode == 1, said(call)
    assert lines(call.stdout) == [
        "pictures→wrong: backup started",
        f"pictures→wrong: backup failed: {WRONG_PASSWORD_ERROR}",
        "pictures→local: backup started",
        f"pictures→local: backup succeeded: snapshot {snapshot}",
    ]
    assert call.stderr == f"henbackupctl: pictures→wrong: {WRONG_PASSWORD_ERROR}\n"
    failed = _event(s, "backup", "job.failed", backup="pictures")
    assert (failed["HENBACKUP_REPOSITORY"], failed["HENBACKUP_ERROR"]) == (
        "wrong",
        WRONG_PASSWORD_ERROR,
    )
    assert failed["HENBACKUP_TRIGGER"] == done["HENBACKUP_TRIGGER"] == "manual"


@ONE_RESTIC
def test_status_after_a_success_and_a_failure(two_repositories: Scenario) -> None:
    s = two_repositories
    human, js = s.calls["status"], s.calls["status-json"]
    assert (human.returncode, human.stderr, js.returncode, js.stderr) == (0, "", 0, ""), said(human)
    status = reply(js)
    ctl_schemas.validate(status, ctl_schemas.STATUS)
    started = _event(s, "backup", "job.started", backup="pictures", repository="local")
    failed_start = _event(s, "backup", "job.started", backup="pictures", repository="wrong")
    done = _event(s, "backup", "job.succeeded", backup="pictures", repository="local")

    good = _row(status, "pictures", "local")
    assert {k: good[k] for k in ("state", "job", "position", "percent", "result", "error")} == {
        "state": "idle",
        "job": None,
        "position": None,
        "percent": None,
        "result": "succeeded",
        "error": None,
    }
    assert good["last_success"] == good["last_attempt"]
    assert abs(good["last_success"] - when(started)) < 2.0
    assert 0 < good["duration"] < when(done) - when(started) + 1.0
    assert good["snapshot"] == done["HENBACKUP_SNAPSHOT"]
    oldest_pictures = [x for x in s.notes["restic"] if x["tags"] == ["backup-pictures"]][-1]
    assert oldest_pictures["id"].startswith(good["snapshot"])
    assert good["snapshots"] == 1

    bad = _row(status, "pictures", "wrong")
    assert {k: bad[k] for k in ("state", "result", "error", "last_success", "snapshot")} == {
        "state": "idle",
        "result": "failed",
        "error": WRONG_PASSWORD_ERROR,
        "last_success": None,
        "snapshot": None,
    }
    assert bad["snapshots"] is None
    assert abs(bad["last_attempt"] - when(failed_start)) < 2.0
    assert bad["duration"] > 0

    assert lines(human.stdout)[:2] == ["2 backups; idle", ""]
    assert columns(lines(human.stdout)[2]) == [
        "BACKUP", "REPOSITORY", "STATE", "LAST RUN", "TOOK", "LAST SUCCESS", "NEXT RUN", "RESULT"
    ]  # fmt: skip
    rows = [columns(line) for line in lines(human.stdout)[3:]]
    assert rows[0] == ["docs", "local", "idle", "-", "-", "-", "-", "-"]
    assert cells_match(
        rows[1],
        ["pictures", "wrong", "idle", AGO, TOOK, "-", "-", f"failed: {WRONG_PASSWORD_ERROR}"],
    ), human.stdout
    assert cells_match(rows[2], ["pictures", "local", "idle", AGO, TOOK, AGO, "-", "succeeded"]), (
        human.stdout
    )
    assert len(rows) == 3


@ONE_RESTIC
def test_status_lists_the_repositories_checked_and_pruned_by_hand(
    two_repositories: Scenario,
) -> None:
    s = two_repositories
    status = reply(s.calls["status-end-json"])
    ctl_schemas.validate(status, ctl_schemas.STATUS)
    operations = {
        (r["name"], o["operation"]): (o["result"], o["error"])
        for r in status["repositories"]
        for o in r["operations"]
    }
    assert operations == {
        ("local", "check"): ("succeeded", None),
        ("local", "prune"): ("succeeded", None),
        ("wrong", "check"): ("failed", WRONG_PASSWORD_ERROR),
    }
    rows = [columns(line) for line in lines(s.calls["status-end"].stdout)[3:]]
    assert [row[:3] for row in rows[3:]] == [
        ["(check)", "local", "idle"],
        ["(prune)", "local", "idle"],
        ["(check)", "wrong", "idle"],
    ]
    assert rows[5][-1] == f"failed: {WRONG_PASSWORD_ERROR}"
    assert _row(status, "docs", "local")["snapshots"] == 2
    assert _row(status, "pictures", "local")["snapshots"] == 2


@ONE_RESTIC
def test_backup_to_one_repository_only(two_repositories: Scenario) -> None:
    s = two_repositories
    call = s.calls["backup-local-json"]
    assert (call.returncode, call.stderr) == (0, ""), said(call)
    answer = reply(call)
    ctl_schemas.validate(answer, ctl_schemas.WAITED)
    done = _event(s, "backup-local", "job.succeeded", operation="backup")
    assert answer == {
        "ok": True,
        "jobs": [
            {
                "result": "succeeded",
                "job": done["HENBACKUP_JOB"],
                "operation": "backup",
                "backup": "pictures",
                "repository": "local",
                "snapshot": done["HENBACKUP_SNAPSHOT"],
                "duration_sec": pytest.approx(float(done["HENBACKUP_DURATION_SEC"]), abs=1e-3),
                "error": None,
            }
        ],
    }
    started = s.since("backup-local", "job.started", operation="backup")
    assert [e["HENBACKUP_REPOSITORY"] for e in started] == ["local"]
    pictures = [x for x in s.notes["restic"] if x["tags"] == ["backup-pictures"]]
    assert pictures[0]["id"].startswith(done["HENBACKUP_SNAPSHOT"])
    assert len(pictures) == 2  # the first run's and this one's: none in `wrong`


@ONE_RESTIC
def test_backup_no_wait_returns_at_once(two_repositories: Scenario) -> None:
    s = two_repositories
    human, js = s.calls["no-wait"], s.calls["no-wait-json"]
    assert (human.returncode, human.stdout, human.stderr) == (0, "backup requested\n", "")
    assert (js.returncode, js.stderr) == (0, "")
    ctl_schemas.validate(reply(js), ctl_schemas.BACKUP_ACCEPTED)
    fired = s.since("no-wait", "trigger.fired", backup="docs")
    assert [e["HENBACKUP_TRIGGER"] for e in fired] == ["manual", "manual"]
    assert len(s.since("no-wait", "job.succeeded", backup="docs")) == 2


@ONE_RESTIC
def test_backup_usage_errors_exit_2_with_one_line(two_repositories: Scenario) -> None:
    s = two_repositories
    expected = {
        "unknown-backup": "no backup named 'music' (defined: docs, pictures)",
        "not-its-repository": "backup docs does not go to 'wrong' (it goes to local)",
        "unknown-repository": "backup pictures does not go to 'nowhere' (it goes to wrong, local)",
        "bad-priority": "--priority 'sometimes': not a priority: use immediate, next, "
        "superior, normal, inferior, on-idle or an integer",
    }
    for name, message in expected.items():
        call = s.calls[name]
        assert (call.returncode, call.stdout, call.stderr) == (2, "", f"henbackupctl: {message}\n")
    js = s.calls["bad-priority-json"]
    assert js.returncode == 2
    ctl_schemas.validate(reply(js), ctl_schemas.USAGE_ERROR)
    assert reply(js)["error"] == expected["bad-priority"]
    assert s.notes["usage-events"] == []


@ONE_RESTIC
def test_an_unreachable_daemon_is_exit_3(two_repositories: Scenario, tmp_path: Path) -> None:
    s = two_repositories
    nowhere = tmp_path / "no-daemon.sock"
    for call in (henbackupctl(nowhere, "status"), henbackupctl(nowhere, "backup", "pictures")):
        assert (call.returncode, call.stdout) == (3, "")
        assert re.fullmatch(unreachable_message(nowhere), call.stderr), call.stderr
        assert "No such file or directory" in call.stderr
    for name in ("status-after-stop", "backup-after-stop"):
        call = s.calls[name]
        assert (call.returncode, call.stdout) == (3, ""), said(call)
        assert re.fullmatch(unreachable_message(s.daemon.socket), call.stderr), call.stderr


@ONE_RESTIC
def test_list_snapshots_of_one_repository_newest_first(two_repositories: Scenario) -> None:
    s = two_repositories
    js, human = s.calls["list-local-json"], s.calls["list-local"]
    assert (js.returncode, js.stderr, human.returncode, human.stderr) == (0, "", 0, ""), said(human)
    answer = reply(js)
    ctl_schemas.validate(answer, ctl_schemas.LIST_SNAPSHOTS)
    theirs = s.notes["restic"]
    assert len(theirs) == 4
    assert [row["id"] for row in answer["snapshots"]] == [x["id"] for x in theirs]
    for row, snapshot in zip(answer["snapshots"], theirs, strict=True):
        backup = snapshot["tags"][0].removeprefix("backup-")
        assert row == {
            "id": snapshot["id"],
            "short_id": snapshot["short_id"],
            "time": row["time"],
            "backup": backup,
            "repository": "local",
            "host": HOST,
            "paths": [str(s.data[backup])],
            "tags": [f"backup-{backup}"],
            "bytes_added": (snapshot.get("summary") or {}).get("data_added"),
        }
    times = [row["time"] for row in answer["snapshots"]]
    assert times == sorted(times, reverse=True)
    (job,) = answer["jobs"]
    assert (job["operation"], job["repository"], job["result"]) == (
        "snapshots",
        "local",
        "succeeded",
    )
    assert answer["errors"] == []

    table = lines(human.stdout)
    assert columns(table[0]) == ["ID", "TIME", "BACKUP", "REPOSITORY", "HOST", "ADDED", "PATHS"]
    assert len(table) == 5
    for line, snapshot in zip(table[1:], theirs, strict=True):
        backup = snapshot["tags"][0].removeprefix("backup-")
        cells = columns(line)
        assert cells[0] == snapshot["short_id"]
        assert re.fullmatch(rf"\d{{4}}-\d\d-\d\d \d\d:\d\d \({AGO}\)", cells[1]), line
        assert cells[2:5] == [backup, "local", HOST]
        added = (snapshot.get("summary") or {}).get("data_added")
        assert cells[5] == ("-" if added is None else size(added))
        assert cells[6] == str(s.data[backup])


@ONE_RESTIC
def test_list_snapshots_of_every_repository_reports_the_one_that_fails(
    two_repositories: Scenario,
) -> None:
    s = two_repositories
    js, human = s.calls["list-all-json"], s.calls["list-all"]
    assert js.returncode == human.returncode == 1, said(human)
    message = f"wrong: {WRONG_PASSWORD_ERROR}"
    assert human.stderr == js.stderr == f"henbackupctl: {message}\n"
    answer = reply(js)
    ctl_schemas.validate(answer, ctl_schemas.LIST_SNAPSHOTS)
    assert (answer["ok"], answer["code"], answer["error"], answer["errors"]) == (
        False,
        "failed",
        message,
        [message],
    )
    assert [row["id"] for row in answer["snapshots"]] == [x["id"] for x in s.notes["restic"]]
    assert [columns(line)[0] for line in lines(human.stdout)[1:]] == [
        x["short_id"] for x in s.notes["restic"]
    ]


@ONE_RESTIC
def test_list_snapshots_of_one_backup(two_repositories: Scenario) -> None:
    s = two_repositories
    docs = [x for x in s.notes["restic"] if x["tags"] == ["backup-docs"]]
    pictures = [x for x in s.notes["restic"] if x["tags"] == ["backup-pictures"]]
    js, human = s.calls["list-docs-json"], s.calls["list-docs"]
    assert (js.returncode, human.returncode, human.stderr) == (0, 0, ""), said(human)
    ctl_schemas.validate(reply(js), ctl_schemas.LIST_SNAPSHOTS)
    assert [row["id"] for row in reply(js)["snapshots"]] == [x["id"] for x in docs]
    table = [columns(line) for line in lines(human.stdout)[1:]]
    assert [(row[0], row[2]) for row in table] == [(x["short_id"], "docs") for x in docs]
    both = s.calls["list-local-pictures-json"]
    assert both.returncode == 0, said(both)
    assert [row["id"] for row in reply(both)["snapshots"]] == [x["id"] for x in pictures]


@ONE_RESTIC
def test_list_snapshots_of_unknown_names_is_exit_2(two_repositories: Scenario) -> None:
    s = two_repositories
    repository, backup = s.calls["list-unknown-repository"], s.calls["list-unknown-backup"]
    assert (repository.returncode, repository.stdout, repository.stderr) == (
        2,
        "",
        "henbackupctl: no repository named 'nowhere' (defined: local, wrong)\n",
    )
    assert (backup.returncode, backup.stdout, backup.stderr) == (
        2,
        "",
        "henbackupctl: no backup named 'music' (defined: docs, pictures)\n",
    )


@ONE_RESTIC
def test_check_and_prune(two_repositories: Scenario) -> None:
    s = two_repositories
    check = s.calls["check"]
    assert (check.returncode, check.stderr) == (0, ""), said(check)
    assert lines(check.stdout) == ["local: check started", "local: check succeeded"]
    started = _event(s, "check", "job.started", operation="check", repository="local")
    assert started["HENBACKUP_PRIORITY"] == str(2**31 - 2)  # next
    assert started["HENBACKUP_TRIGGER"] == "manual"
    argv = s.notes["argv_log"].read_text().splitlines()
    checks = [line for line in argv if line.startswith("check ")]
    assert len(checks) == 2, argv  # local's, with the subset; wrong's, without
    assert re.search(r"(^| )--read-data-subset 10%( |$)", checks[0]), checks
    assert "--read-data-subset" not in checks[1]

    prune = s.calls["prune-json"]
    assert (prune.returncode, prune.stderr) == (0, ""), said(prune)
    answer = reply(prune)
    ctl_schemas.validate(answer, ctl_schemas.WAITED)
    pruned = _event(s, "check", "job.succeeded", operation="prune")
    assert answer == {
        "ok": True,
        "jobs": [
            {
                "result": "succeeded",
                "job": pruned["HENBACKUP_JOB"],
                "operation": "prune",
                "backup": None,
                "repository": "local",
                "snapshot": None,
                "duration_sec": pytest.approx(float(pruned["HENBACKUP_DURATION_SEC"]), abs=1e-3),
                "error": None,
            }
        ],
    }
    assert any(line.startswith("prune ") for line in argv)

    wrong = s.calls["check-wrong"]
    assert wrong.returncode == 1, said(wrong)
    assert lines(wrong.stdout) == [
        "wrong: check started",
        f"wrong: check failed: {WRONG_PASSWORD_ERROR}",
    ]
    assert wrong.stderr == f"henbackupctl: wrong: {WRONG_PASSWORD_ERROR}\n"

    large, nonsense = s.calls["subset-too-large"], s.calls["subset-nonsense"]
    assert (large.returncode, large.stdout, large.stderr) == (
        2,
        "",
        "henbackupctl: --read-data-subset '110%': too large: use at most 100%\n",
    )
    assert (nonsense.returncode, nonsense.stdout) == (2, "")
    assert re.fullmatch(
        r"henbackupctl: --read-data-subset 'lots': not a data subset[^\n]*\n", nonsense.stderr
    )
    assert len(s.since("check", "job.started", operation="check")) == 2  # none for the refused


@ONE_RESTIC
def test_restore_of_an_unknown_snapshot_is_exit_2(two_repositories: Scenario) -> None:
    call = two_repositories.calls["restore-unknown"]
    assert (call.returncode, call.stdout) == (2, ""), said(call)
    assert call.stderr == (
        "henbackupctl: no snapshot with id '0000000000' in local: "
        "see henbackupctl list-snapshots local\n"
    )


@ONE_RESTIC
def test_restore_of_a_too_short_id_says_why(two_repositories: Scenario) -> None:
    """Three characters name exactly one snapshot here: it is refused (fine: at least 4),
    but the reason given must not be that several snapshots match."""
    s = two_repositories
    prefix = s.notes["local_ids"][0][:3]
    matching = [i for i in s.notes["local_ids"] if i.startswith(prefix)]
    call = s.calls["restore-short"]
    assert (call.returncode, call.stdout) == (2, ""), said(call)
    assert len(lines(call.stderr)) == 1
    if len(matching) == 1:
        assert "more than one snapshot" not in call.stderr, call.stderr


@ONE_RESTIC
def test_restores_without_target_each_get_a_new_directory(two_repositories: Scenario) -> None:
    s = two_repositories
    targets = []
    for call in s.notes["restore-twice"]:
        assert (call.returncode, call.stderr) == (0, ""), said(call)
        match = re.fullmatch(r"restore-snapshot requested, into (/\S+)\n", call.stdout)
        assert match, said(call)
        targets.append(match[1])
    assert all(t.startswith(str(s.daemon.state / "restores") + "/") for t in targets)
    assert targets[0] != targets[1], "two restores were sent into one directory"


@ONE_RESTIC
def test_metrics_textfile_and_http_tell_the_runs(two_repositories: Scenario) -> None:
    s = two_repositories
    http, http_types = parse_metrics(s.notes["http"])
    textfile, _ = parse_metrics(s.notes["textfile"])
    assert textfile == http  # nothing ran between the two reads
    assert {
        name: http_types[name]
        for name in ("henbackup_runs", "henbackup_last_run_success", "henbackup_up")
    } == {
        "henbackup_runs": "counter",
        "henbackup_last_run_success": "gauge",
        "henbackup_up": "gauge",
    }

    def runs(backup: str, repository: str, operation: str, result: str) -> float | None:
        return value(
            http,
            "henbackup_runs_total",
            backup=backup,
            repository=repository,
            operation=operation,
            result=result,
        )

    assert runs("pictures", "local", "backup", "succeeded") == 2
    assert runs("pictures", "local", "backup", "failed") is None
    assert runs("pictures", "wrong", "backup", "failed") == 1
    assert runs("pictures", "wrong", "backup", "succeeded") is None
    assert runs("docs", "local", "backup", "succeeded") == 2
    assert runs("", "local", "check", "succeeded") == 1
    assert runs("", "local", "prune", "succeeded") == 1
    assert runs("", "wrong", "check", "failed") == 1

    def last(backup: str, repository: str, operation: str = "backup") -> float | None:
        labels = {"backup": backup, "repository": repository, "operation": operation}
        return value(http, "henbackup_last_run_success", **labels)

    assert (last("pictures", "local"), last("pictures", "wrong"), last("docs", "local")) == (
        1,
        0,
        1,
    )
    assert (last("", "local", "check"), last("", "wrong", "check")) == (1, 0)

    latest = _event(s, "backup-local", "job.started", backup="pictures", repository="local")
    stamp = value(
        http, "henbackup_last_success_timestamp_seconds", backup="pictures", repository="local"
    )
    assert stamp is not None and abs(stamp - when(latest)) < 2.0
    assert stamp == _row(reply(s.calls["status-end-json"]), "pictures", "local")["last_success"]
    assert (
        value(
            http, "henbackup_last_success_timestamp_seconds", backup="pictures", repository="wrong"
        )
        is None
    )

    theirs = s.notes["restic"]
    for backup in ("pictures", "docs"):
        count = sum(1 for x in theirs if x["tags"] == [f"backup-{backup}"])
        assert value(http, "henbackup_snapshots", backup=backup, repository="local") == count
    assert value(http, "henbackup_snapshots", backup="pictures", repository="wrong") is None
    duration = value(
        http,
        "henbackup_last_run_duration_seconds",
        backup="pictures",
        repository="local",
        operation="backup",
    )
    assert duration is not None and duration > 0
    assert value(http, "henbackup_up") == 1
    assert (value(http, "henbackup_jobs_running"), value(http, "henbackup_jobs_waiting")) == (0, 0)
    added = value(http, "henbackup_bytes_added_total", backup="pictures", repository="local")
    assert added is not None and added > 70_000  # at least the first run's random bytes


@ONE_RESTIC
def test_metrics_textfile_does_not_say_up_once_the_daemon_stopped(
    two_repositories: Scenario,
) -> None:
    """node_exporter serves the textfile as it is: after a clean stop it must not keep
    saying henbackup_up 1 (either henbackup_up 0, or no file)."""
    text = two_repositories.notes["textfile_after_stop"]
    if text is not None:
        samples, _ = parse_metrics(text)
        assert value(samples, "henbackup_up") == 0, "the textfile says up after the stop"


@ONE_RESTIC
def test_json_outputs_follow_their_schemas(two_repositories: Scenario) -> None:
    s = two_repositories
    schemas = {
        "status-before-json": ctl_schemas.STATUS,
        "status-json": ctl_schemas.STATUS,
        "status-end-json": ctl_schemas.STATUS,
        "queue-empty-json": ctl_schemas.QUEUE,
        "backup-local-json": ctl_schemas.WAITED,
        "no-wait-json": ctl_schemas.BACKUP_ACCEPTED,
        "bad-priority-json": ctl_schemas.USAGE_ERROR,
        "list-all-json": ctl_schemas.LIST_SNAPSHOTS,
        "list-local-json": ctl_schemas.LIST_SNAPSHOTS,
        "list-docs-json": ctl_schemas.LIST_SNAPSHOTS,
        "list-local-pictures-json": ctl_schemas.LIST_SNAPSHOTS,
        "prune-json": ctl_schemas.WAITED,
    }
    for name, schema in schemas.items():
        ctl_schemas.validate(reply(s.calls[name]), schema)
    assert reply(s.calls["queue-empty-json"]) == {"ok": True, "jobs": []}
    assert s.calls["queue-empty"].stdout == "no job is waiting or running\n"


@ONE_RESTIC
def test_no_password_anywhere(two_repositories: Scenario) -> None:
    """Neither the real password nor the configured wrong one, nor a recognisable part of
    either, in anything henbackup wrote or said."""
    s = two_repositories
    said_anywhere: dict[str, str] = {}
    for name, call in s.calls.items():
        said_anywhere[f"{name} stdout"] = call.stdout
        said_anywhere[f"{name} stderr"] = call.stderr
    for index, call in enumerate(s.notes["restore-twice"]):
        said_anywhere[f"restore {index}"] = call.stdout + call.stderr
    said_anywhere["events"] = "\n".join(json.dumps(e, ensure_ascii=False) for e in s.daemon.events)
    said_anywhere["daemon stderr noise"] = "\n".join(s.daemon.noise)
    said_anywhere["daemon stdout"] = s.daemon.stdout_path.read_text(errors="replace")
    said_anywhere["metrics http"] = s.notes["http"]
    said_anywhere["restic argv"] = s.notes["argv_log"].read_text()
    for directory in (s.daemon.state, s.daemon.runtime, s.textfile.parent if s.textfile else None):
        if directory is None:
            continue
        for path in directory.rglob("*"):
            if "restores" in path.relative_to(directory).parts:
                continue  # restored backup data
            if path.is_file() and not path.is_symlink():
                said_anywhere[str(path)] = path.read_text(errors="replace")
    assert "status.json" in " ".join(said_anywhere)
    for secret in (PASSWORD, WRONG_PASSWORD, "SECRET-7731", "SECRET-4410"):
        leaks = [where for where, text in said_anywhere.items() if secret in text]
        assert leaks == [], f"{secret!r} in {leaks}"


# --- scenario: one slow backup holding the only slot, others waiting --------------------------


@dataclass
class Busy:
    daemon: Daemon
    repository: Path
    port: int
    textfile: Path
    calls: dict[str, Completed] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    stop_code: int | None = None

    def ctl(self, name: str, *args: str) -> Completed:
        self.calls[name] = ctl(self.daemon, *args)
        return self.calls[name]


def _gauges(text: str) -> tuple[float | None, float | None]:
    samples, _ = parse_metrics(text)
    return value(samples, "henbackup_jobs_running"), value(samples, "henbackup_jobs_waiting")


@pytest.fixture(scope="module")
def busy(
    restic: str, tmp_path_factory: pytest.TempPathFactory, _templates: dict[str, Path]
) -> Busy:
    base = tmp_path_factory.mktemp("ctl-busy")
    repository = new_repository(restic, base / "local", _templates, tmp_path_factory)
    # ~12 s at 2 MiB/s: time enough to look at the queue and cancel; restic, interrupted,
    # still finishes the pack uploads in flight (a few seconds at this rate)
    pictures = make_tree(base / "pictures", big=24 << 20)
    docs = make_tree(base / "docs")
    port = free_port()
    textfile = base / "henbackup.prom"
    config = write_config(
        base,
        restic,
        {"local": (repository, PASSWORD)},
        {
            "pictures": {
                "paths": [str(pictures)],
                "repositories": ["local"],
                "upload_limit": "2M",
            },
            "docs": {"paths": [str(docs)], "repositories": ["local"]},
        },
        {"textfile": str(textfile), "listen": f"127.0.0.1:{port}"},
    )
    busy = Busy(Daemon(config, base), repository, port, textfile)
    busy.daemon.start()
    try:
        _play_busy(busy, repository)
    finally:
        busy.stop_code = busy.daemon.stop()
    busy.notes["locks"] = restic_run(restic, repository, "list", "locks", "--no-lock").stdout
    return busy


def _play_busy(b: Busy, repository: Path) -> None:
    daemon = b.daemon
    daemon.wait_for("daemon.started")
    slow = Client(daemon.socket, "backup", "pictures")
    clients = [slow]
    try:
        started = daemon.wait_for("job.started", operation="backup", backup="pictures")
        b.notes["pictures_job"] = job = started["HENBACKUP_JOB"]
        # restic is at work once its lock is in the repository
        assert daemon.pump_until(lambda: any((repository / "locks").iterdir()), 20, step=0.05)
        queued = Client(daemon.socket, "backup", "docs")
        clients.append(queued)
        daemon.wait_for("job.queued", backup="docs")
        b.ctl("check-no-wait-json", "--json", "check", "local", "--priority", "next", "--no-wait")
        check = daemon.wait_for("job.queued", operation="check")
        b.notes["check_job"] = check["HENBACKUP_JOB"]

        b.ctl("queue", "queue")
        b.ctl("queue-json", "--json", "queue")
        b.ctl("status-json", "--json", "status")
        # the HTTP metrics are rendered live; the textfile gets a moment to follow them
        daemon.pump_until(lambda: _gauges(get_metrics(b.port)) == (1, 2), 5, step=0.1)
        b.notes["http_busy"] = get_metrics(b.port)
        daemon.pump_until(lambda: _gauges(b.textfile.read_text()) == (1, 2), 2, step=0.1)
        b.notes["textfile_busy"] = b.textfile.read_text()

        b.ctl("cancel-waiting", "cancel", b.notes["check_job"])
        daemon.wait_for("job.cancelled", job=b.notes["check_job"])
        b.notes["still_running"] = slow.running() and not daemon.find("job.succeeded", job=job)
        b.ctl("cancel-running-json", "--json", "cancel", job)
        b.notes["cancelled"] = daemon.wait_for("job.cancelled", timeout=45, job=job)
        b.notes["slow"] = slow.result(daemon)
        b.notes["queued"] = queued.result(daemon)
        b.notes["docs_done"] = daemon.wait_for("job.succeeded", backup="docs")
        b.ctl("cancel-again", "cancel", job)
        b.ctl("cancel-unknown", "cancel", "deadbeef")
        b.ctl("queue-after", "queue")
    finally:
        for client in clients:
            if client.running():
                client.process.kill()


@ONE_RESTIC
def test_queue_lists_the_running_job_then_the_waiting_ones_in_order(busy: Busy) -> None:
    call = busy.calls["queue-json"]
    assert (call.returncode, call.stderr) == (0, ""), said(call)
    answer = reply(call)
    ctl_schemas.validate(answer, ctl_schemas.QUEUE)
    picked = [
        {
            k: job[k]
            for k in ("job", "state", "position", "operation", "backup", "repository", "priority")
        }
        for job in answer["jobs"]
    ]
    docs_job = busy.daemon.wait_for("job.queued", backup="docs")["HENBACKUP_JOB"]
    assert picked == [
        {
            "job": busy.notes["pictures_job"],
            "state": "running",
            "position": None,
            "operation": "backup",
            "backup": "pictures",
            "repository": "local",
            "priority": "normal",
        },
        {
            "job": busy.notes["check_job"],
            "state": "waiting",
            "position": 1,
            "operation": "check",
            "backup": None,
            "repository": "local",
            "priority": "next",
        },
        {
            "job": docs_job,
            "state": "waiting",
            "position": 2,
            "operation": "backup",
            "backup": "docs",
            "repository": "local",
            "priority": "normal",
        },
    ]
    human = lines(busy.calls["queue"].stdout)
    assert columns(human[0]) == [
        "POS", "JOB", "STATE", "OPERATION", "BACKUP", "REPOSITORY", "PRIORITY", "SINCE"
    ]  # fmt: skip
    rows = [columns(line) for line in human[1:]]
    assert cells_match(
        rows[0],
        ["-", busy.notes["pictures_job"], r"running( [0-9.]+%)?", "backup", "pictures", "local",
         "normal", AGO],
    ), human  # fmt: skip
    assert cells_match(
        rows[1], ["1", busy.notes["check_job"], "waiting", "check", "-", "local", "next", AGO]
    ), human
    assert cells_match(
        rows[2], ["2", docs_job, "waiting", "backup", "docs", "local", "normal", AGO]
    ), human
    after = busy.calls["queue-after"]
    assert (after.returncode, after.stdout) == (0, "no job is waiting or running\n")


@ONE_RESTIC
def test_status_shows_the_running_and_the_queued_job(busy: Busy) -> None:
    status = reply(busy.calls["status-json"])
    ctl_schemas.validate(status, ctl_schemas.STATUS)
    running = _row(status, "pictures", "local")
    assert (running["state"], running["job"], running["position"]) == (
        "running",
        busy.notes["pictures_job"],
        None,
    )
    queued = _row(status, "docs", "local")
    assert (queued["state"], queued["position"]) == ("queued", 2)
    assert status["status"].startswith("2 backups; running: pictures→local")
    assert status["status"].endswith("; queued: 2")


@ONE_RESTIC
def test_status_shows_a_waiting_check_of_a_repository(busy: Busy) -> None:
    """`local` has no check schedule and was never checked: its check, asked by hand and
    waiting in the queue, is still one of the repository's operations in status."""
    status = reply(busy.calls["status-json"])
    (local,) = [r for r in status["repositories"] if r["name"] == "local"]
    waiting = [(o["operation"], o["state"], o["job"]) for o in local["operations"]]
    assert waiting == [("check", "queued", busy.notes["check_job"])], local


@ONE_RESTIC
def test_cancel_a_waiting_job(busy: Busy) -> None:
    call = busy.calls["cancel-waiting"]
    job = busy.notes["check_job"]
    assert (call.returncode, call.stderr) == (0, ""), said(call)
    assert call.stdout == f"job {job}: cancel requested (it was waiting)\n"
    ctl_schemas.validate(reply(busy.calls["check-no-wait-json"]), ctl_schemas.ONE_OFF_ACCEPTED)
    assert busy.daemon.find("job.started", job=job) == []


@ONE_RESTIC
def test_cancel_the_running_job(busy: Busy) -> None:
    """Exit 0 and a job.cancelled event for that job; restic is stopped cleanly (no lock
    left); the client that waited for the backup exits 1 and says it was cancelled; the
    next job in the queue then runs."""
    job = busy.notes["pictures_job"]
    assert busy.notes["still_running"], "the slow backup ended before it could be cancelled"
    call = busy.calls["cancel-running-json"]
    assert (call.returncode, call.stderr) == (0, ""), said(call)
    answer = reply(call)
    ctl_schemas.validate(answer, ctl_schemas.CANCEL)
    assert answer == {"ok": True, "job": job, "was": "running"}
    cancelled = busy.notes["cancelled"]
    assert (cancelled["HENBACKUP_BACKUP"], cancelled["HENBACKUP_REPOSITORY"]) == (
        "pictures",
        "local",
    )
    assert busy.daemon.find("job.succeeded", job=job) == []
    assert busy.daemon.find("job.failed", job=job) == []
    assert busy.notes["locks"] == b""
    assert busy.stop_code == 0, busy.daemon.report()
    assert busy.daemon.noise == [], busy.daemon.report()

    slow = busy.notes["slow"]
    assert slow.returncode == 1, said(slow)
    assert lines(slow.stdout) == [
        "pictures→local: backup started",
        "pictures→local: backup cancelled",
    ]
    assert slow.stderr == "henbackupctl: pictures→local: cancelled\n"


@ONE_RESTIC
def test_a_waiting_backup_shows_it_was_queued(busy: Busy) -> None:
    queued = busy.notes["queued"]
    assert (queued.returncode, queued.stderr) == (0, ""), said(queued)
    snapshot = busy.notes["docs_done"]["HENBACKUP_SNAPSHOT"]
    assert lines(queued.stdout) == [
        "docs→local: backup queued, position 1",
        "docs→local: backup started",
        f"docs→local: backup succeeded: snapshot {snapshot}",
    ]


@ONE_RESTIC
def test_cancel_of_an_unknown_job_is_exit_2(busy: Busy) -> None:
    for name, job in (("cancel-again", busy.notes["pictures_job"]), ("cancel-unknown", "deadbeef")):
        call = busy.calls[name]
        assert (call.returncode, call.stdout) == (2, ""), said(call)
        assert call.stderr == (
            f"henbackupctl: no job '{job}' is waiting or running (see henbackupctl queue)\n"
        )


@ONE_RESTIC
def test_metrics_count_running_and_waiting_jobs(busy: Busy) -> None:
    """One job running, two waiting: the HTTP metrics say so, and so must the textfile
    (node_exporter serves it as it is, for as long as the job runs)."""
    assert _gauges(busy.notes["http_busy"]) == (1, 2)
    assert _gauges(busy.notes["textfile_busy"]) == (1, 2), "the textfile lags behind"


# --- restore: byte for byte, on both restic versions ------------------------------------------


def test_restore_snapshot_gives_back_the_exact_tree(
    restic: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    _templates: dict[str, Path],
) -> None:
    repository = new_repository(restic, tmp_path / "local", _templates, tmp_path_factory)
    data = make_tree(tmp_path / "pictures")
    source = tree_state(data)
    files, total = regular_files(data)
    config = write_config(
        tmp_path,
        restic,
        {"local": (repository, PASSWORD)},
        {"pictures": {"paths": [str(data)], "repositories": ["local"]}},
    )
    daemon = Daemon(config, tmp_path / "daemon")
    with daemon:
        daemon.wait_for("daemon.started")
        backup = ctl(daemon, "backup", "pictures")
        assert backup.returncode == 0, said(backup)
        (snapshot,) = restic_snapshots(restic, repository)
        short, full = snapshot["short_id"], snapshot["id"]

        # no --target: a new directory under the state directory, printed
        default = ctl(daemon, "restore-snapshot", "local", short)
        assert (default.returncode, default.stderr) == (0, ""), said(default)
        *steps, summary = lines(default.stdout)
        match = re.fullmatch(
            rf"restored snapshot {short} of pictures into (/\S+): {files} files, "
            rf"{re.escape(size(total))}",
            summary,
        )
        assert match, default.stdout
        target = Path(match[1])
        assert target.parent == daemon.state / "restores"
        assert target.name.startswith(f"local-{short}-")
        assert steps == [
            "pictures→local: restore started",
            f"pictures→local: restore succeeded: snapshot {short} into {target}",
        ]
        assert tree_state(restored(target, data)) == source

        # --target DIR that does not exist (a full id), --json: DIR is made 0700, restored into
        made = tmp_path / "restored"
        js = ctl(daemon, "--json", "restore-snapshot", "local", full, "--target", str(made))
        assert (js.returncode, js.stderr) == (0, ""), said(js)
        answer = reply(js)
        ctl_schemas.validate(answer, ctl_schemas.RESTORED)
        assert made.stat().st_mode & 0o7777 == 0o700
        done = daemon.wait_for("job.succeeded", operation="restore", target=str(made))
        assert {k: v for k, v in answer.items() if k != "jobs"} == {
            "ok": True,
            "job": done["HENBACKUP_JOB"],
            "snapshot": full,
            "backup": "pictures",
            "target": str(made),
            "target_existed": False,
            "files_restored": files,
            "bytes_restored": total,
        }
        assert [(j["job"], j["result"], j["operation"]) for j in answer["jobs"]] == [
            (done["HENBACKUP_JOB"], "succeeded", "restore")
        ]
        assert tree_state(restored(made, data)) == source

        # --include PATH: that subtree only; a relative --target is the client's; one that
        # exists gets a new directory inside (it may hold links); --no-wait prints where
        cwd = tmp_path / "cwd"
        album, here = data / "album", cwd / "here"
        here.mkdir(parents=True)
        no_wait = ctl(
            daemon, "restore-snapshot", "local", short, "--target", "here",
            "--include", str(album), "--no-wait", cwd=cwd,
        )  # fmt: skip
        assert (no_wait.returncode, no_wait.stderr) == (0, ""), said(no_wait)
        match = re.fullmatch(
            rf"restore-snapshot requested, into ({re.escape(str(here))}/local-{short}-\S+)"
            rf" \(new: {re.escape(str(here))} exists\)\n",
            no_wait.stdout,
        )
        assert match, no_wait.stdout
        done = daemon.wait_for("job.succeeded", timeout=JOB_TIMEOUT, target=match[1])
        album_files, album_bytes = regular_files(album)
        assert (done["HENBACKUP_FILES_RESTORED"], done["HENBACKUP_BYTES_RESTORED"]) == (
            str(album_files),
            str(album_bytes),
        )
        assert sorted(p.name for p in restored(Path(match[1]), data).iterdir()) == ["album"]
        assert tree_state(restored(Path(match[1]), album)) == tree_state(album)

        stop = daemon.stop()
    assert stop == 0, daemon.report()
    assert daemon.noise == [], daemon.report()
    failed = daemon.find("job.failed")
    assert failed == [], describe(failed)


def test_in_place_restores_over_the_original_paths_only_where_root_alone_may_write(
    restic: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    _templates: dict[str, Path],
) -> None:
    """--in-place, as root: refused (exit 2, one line, nothing changed) while the tree holds
    a link restic could follow or a directory someone else may change; then the snapshot
    comes back byte for byte over the changed tree, its link as a link. What was added since
    the snapshot stays (restic deletes nothing)."""
    repository = new_repository(restic, tmp_path / "local", _templates, tmp_path_factory)
    srv = make_tree(tmp_path / "srv")
    source = tree_state(srv)
    files, total = regular_files(srv)
    config = write_config(
        tmp_path,
        restic,
        {"local": (repository, PASSWORD)},
        {"pictures": {"paths": [str(srv)], "repositories": ["local"]}},
    )
    daemon = Daemon(config, tmp_path / "daemon")
    with daemon:
        daemon.wait_for("daemon.started")
        assert ctl(daemon, "backup", "pictures").returncode == 0
        (snapshot,) = restic_snapshots(restic, repository)
        short = snapshot["short_id"]

        (srv / "notes.txt").write_text("changed since the snapshot, and longer than it was\n")
        (srv / "album" / "cat.jpg").chmod(0o666)
        (srv / "added.txt").write_text("new since the snapshot\n")
        uploads = srv / "album" / "uploads"
        refusals = {
            "a link": (srv / "latest.jpg", "is a symbolic link, which restic could follow"),
            "a folder of uid 1000": (
                uploads,
                "can be changed by uid 1000, who could plant a link while restic writes",
            ),
        }
        for what, (path, why) in refusals.items():
            if what == "a folder of uid 1000":
                (srv / "latest.jpg").unlink()  # lost since the snapshot
                uploads.mkdir()
                os.chown(uploads, 1000, 1000)
            changed = tree_state(srv)
            refused = ctl(daemon, "restore-snapshot", "local", short, "--in-place")
            error = f"--in-place: {path} {why}: {FRESH_INSTEAD}"
            assert (refused.returncode, refused.stderr) == (2, f"henbackupctl: {error}\n"), what
            assert lines(refused.stdout) == [
                "pictures→local: restore started",
                f"pictures→local: restore failed: {error}",
            ]
            daemon.wait_for("job.failed", operation="restore", error=error)
            assert tree_state(srv) == changed, what

        # --include narrows what is looked at (her folder is elsewhere) and what is written
        notes = srv / "notes.txt"
        narrowed = ctl(
            daemon, "restore-snapshot", "local", short, "--in-place", "--include", str(notes)
        )
        assert (narrowed.returncode, narrowed.stderr) == (0, ""), said(narrowed)
        assert notes.read_bytes() == source["notes.txt"][2]
        assert (srv / "album" / "cat.jpg").stat().st_mode & 0o777 == 0o666  # not restored

        uploads.rmdir()
        done = ctl(daemon, "restore-snapshot", "local", short, "--in-place")
        assert (done.returncode, done.stderr) == (0, ""), said(done)
        now_files, now_bytes = regular_files(srv)  # counted on disk, as restic 0.14 says none
        assert (now_files, now_bytes - total) == (files + 1, len("new since the snapshot\n"))
        assert lines(done.stdout)[-1] == (
            f"restored snapshot {short} of pictures into /: {now_files} files, {size(now_bytes)}"
        )
        mode = stat.S_IMODE((srv / "added.txt").stat().st_mode)
        added = source | {"added.txt": ("file", mode, b"new since the snapshot\n")}
        assert tree_state(srv) == added
        assert (srv / "latest.jpg").is_symlink()
        stop = daemon.stop()
    assert stop == 0, daemon.report()
    assert daemon.noise == [], daemon.report()
