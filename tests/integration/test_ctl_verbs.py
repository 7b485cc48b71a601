"""henbackupctl's verbs end to end (status, backup, list-snapshots, check, prune, metrics,
--json, secrets): the real client (`python -m henbackup.cli.ctl`) against `henbackup run` as a
subprocess, real restic, local repositories, real files.

One daemon is shared by every test here (a module-scoped scenario), so that each behaviour is
asserted on its own while restic runs as little as a 2-core machine allows:
`two_repositories`: backups pictures → [wrong, local] and docs → [local], where `wrong` is a
real repository configured with a password that is not its own. The queue's story is in
test_ctl_queue.py, restores in test_ctl_restore.py.

Everything waits on the daemon's events with deadlines (daemon_helpers.Daemon); nothing
sleeps a fixed time to synchronise. Only restore depends on restic's own behaviour, so this
runs on restic 0.14.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ctl_schemas
import pytest
from ctl_helpers import (
    AGO,
    HOST,
    JOB_TIMEOUT,
    ONE_RESTIC,
    PASSWORD,
    TOOK,
    WRONG_PASSWORD,
    WRONG_PASSWORD_ERROR,
    Client,
    Completed,
    cells_match,
    columns,
    ctl,
    free_port,
    get_metrics,
    henbackupctl,
    lines,
    make_tree,
    new_repository,
    parse_metrics,
    reply,
    restic_snapshots,
    said,
    status_row,
    unreachable_message,
    value,
    write_config,
)
from daemon_helpers import Daemon, describe, matches, when

from henbackup.humanize import size

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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
    s.notes["cut-short"] = {
        args: _cut_short(s, *args) for args in (("status",), ("list-snapshots", "local"))
    }

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


def _cut_short(s: Scenario, *args: str) -> Completed:
    """The real client whose stdout's reader left before it printed (`status | head -1`)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return Client(s.daemon.socket, *args, stdout=write_end).result(s.daemon)
    finally:
        os.close(write_end)


def _event(s: Scenario, mark: str, kind: str, **fields: str) -> dict[str, str]:
    found = s.since(mark, kind, **fields)
    assert len(found) == 1, f"{kind} {fields}:\n{describe(s.daemon.events[s.marks[mark] :])}"
    return found[0]


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
    assert status["daemon"] == {
        "pid": s.notes["pid"],
        "config": str(s.config),
        "watcher": None,
        "config_rejected": None,
    }
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
        "limits": None,
        "cpu_sec": None,
        "memory_peak": None,
        "bytes_done": None,
        "total_bytes": None,
        "bytes_sent": None,
        "send_rate": None,
        "seconds_remaining": None,
    }
    assert [(b["name"], b["worker"], b["run"], b["next_run"]) for b in status["backups"]] == [
        ("docs", "running", "idle", None),
        ("pictures", "running", "idle", None),
    ]
    assert status_row(status, "pictures", "wrong") == {"repository": "wrong", **idle}
    assert status_row(status, "pictures", "local") == {"repository": "local", **idle}
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
    said_lines = lines(call.stdout)
    # local is queued for the slot wrong holds (unless wrong failed already), told when
    # its lane asks: at any time before it starts
    queued = "pictures→local: backup queued, position 1"
    if queued in said_lines:
        assert said_lines.index(queued) < said_lines.index("pictures→local: backup started")
    assert [line for line in said_lines if line != queued] == [
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

    good = status_row(status, "pictures", "local")
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
    # The repository existed before: a backup adds its snapshot to a count it does not have
    # (it lists nothing to count); the listing later counts them (see the status at the end).
    assert good["snapshots"] is None

    bad = status_row(status, "pictures", "wrong")
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
    assert status_row(status, "docs", "local")["snapshots"] == 2
    assert status_row(status, "pictures", "local")["snapshots"] == 2


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
def test_a_reader_that_left_costs_no_traceback_and_the_exit_code_says_the_answer(
    two_repositories: Scenario,
) -> None:
    for args, call in two_repositories.notes["cut-short"].items():
        assert (call.returncode, call.stderr) == (0, ""), f"{args}: {said(call)}"


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
    assert (
        stamp == status_row(reply(s.calls["status-end-json"]), "pictures", "local")["last_success"]
    )
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
