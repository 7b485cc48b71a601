"""One repository down does not delay the others (issue 14, item 3; henbackup.toml(5),
`max_concurrent_jobs`, `stall_timeout`): through the real daemon, real restic, a real local
repository and a real REST server (`rclone serve restic` on 127.0.0.1) that is down.

"Down" is the server frozen with SIGSTOP before the backup starts: the kernel still accepts
its connections, nothing answers, so restic waits for ever by itself. No fake: that is what
a hung backend looks like. The backup's repositories are `rest` (the down one) first, then
`local`. With two slots both run side by side: local's snapshot is complete (it restores
byte for byte) while rest still waits, and rest fails alone once `stall_timeout` has passed
without progress, with a one-line reason. With one slot they run in turn, in their order:
local waits for rest's deadline, and still runs (the run keeps its place). The hooks run
once around them all; a cancel reaches the hung repository's own process, and a stop every
one. And preemption with two slots pauses one repository's restic, not its sibling's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from daemon_helpers import (
    PASSWORD,
    Daemon,
    henbackupctl,
    make_data,
    ok,
    restic_command,
    restic_json,
    tree,
)
from integration.backends import RestServer, rest_repository  # noqa: F401 (the fixture)

from henbackup.config.units import format_duration

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOST = "testhost"
STALL_TIMEOUT = 20.0  # the down repository's deadline
DEADLINE = 120.0  # for what only has to happen at last; never a measure


def write_config(
    tmp_path: Path,
    restic: str,
    local: Path,
    rest: RestServer,
    slots: int,
    stall_timeout: float = STALL_TIMEOUT,
) -> tuple[Path, Path]:
    """`pictures` to `rest` then `local`, asked by hand only, with hooks that write their
    phase (and the failure's reason) into tmp_path/hooks; returns the config and the
    backup's source directory."""
    source = make_data(tmp_path / "pictures")
    said = tmp_path / "hooks"
    config = tmp_path / "henbackup.toml"
    config.write_text(
        f"""
[daemon]
restic = {json.dumps(restic)}
hostname = "{HOST}"
max_concurrent_jobs = {slots}
stall_timeout = "{stall_timeout:g}s"

[repositories.rest]
location = {json.dumps(rest.location)}
password = "{PASSWORD}"

[repositories.local]
location = {json.dumps(str(local))}
password = "{PASSWORD}"

[backups.pictures]
paths = [{json.dumps(str(source))}]
repositories = ["rest", "local"]
"""
        + "".join(
            f"""
[[backups.pictures.hooks.{phase}]]
type = "command"
command = ["/bin/sh", "-c", {json.dumps(f'echo "{line}" >> {said}')}]
"""
            for phase, line in [
                ("before", "$HENBACKUP_HOOK"),
                ("after", "$HENBACKUP_HOOK"),
                ("failure", "$HENBACKUP_HOOK: $HENBACKUP_ERROR"),
            ]
        )
    )
    return config, source


def hooks_said(tmp_path: Path) -> list[str]:
    return (tmp_path / "hooks").read_text().splitlines()


@pytest.mark.parametrize("slots", [2, 1])
@pytest.mark.parametrize("restic", ["restic-0.14", "restic-0.18"], indirect=True)
def test_a_repository_whose_backend_is_down_fails_alone_after_its_deadline(
    restic: str,
    repository: Path,
    rest_repository: RestServer,  # noqa: F811 (the fixture)
    tmp_path: Path,
    slots: int,
) -> None:
    config, source = write_config(tmp_path, restic, repository, rest_repository, slots)
    rest_repository.freeze()
    with Daemon(config, tmp_path / "daemon") as daemon:
        daemon.pump_until(daemon.socket.exists, 30)
        ok(henbackupctl(daemon, "backup", "pictures", "--no-wait"))
        succeeded = daemon.wait_for("job.succeeded", DEADLINE, repository="local")
        failed = daemon.wait_for("job.failed", DEADLINE, repository="rest")

        started = {e["HENBACKUP_REPOSITORY"]: e for e in daemon.find("job.started")}
        assert sorted(started) == ["local", "rest"], daemon.report()
        at = daemon.events.index
        if slots == 2:  # side by side (either may say it started first): local did not wait
            assert at(succeeded) < at(failed), daemon.report()
        else:  # in turn, in order: local started once rest had failed
            assert at(started["rest"]) < at(failed) < at(started["local"]), daemon.report()
        error = failed["HENBACKUP_ERROR"]
        assert error.startswith(f"no progress for {format_duration(STALL_TIMEOUT)}: ")
        assert "\n" not in error and rest_repository.location not in error
        assert failed["HENBACKUP_BACKUP"] == "pictures", daemon.report()
        assert [e["HENBACKUP_REPOSITORY"] for e in daemon.find("job.failed")] == ["rest"]
        # the run's outcome lists each repository
        entry = daemon.wait_worker("pictures", lambda w: w["run"] == "idle", DEADLINE)
        results = {row["repository"]: row["result"] for row in entry["repositories"]}
        assert results == {"rest": "failed", "local": "succeeded"}, entry
        # the hooks ran once each, around both: before, then failure (rest failed)
        assert hooks_said(tmp_path) == ["before", f"failure: rest: {error}"]

    check = restic_command(restic, repository, "check")  # raises unless it exits 0
    assert b"no errors were found" in check.stdout, check.stdout
    target = tmp_path / "restored"
    snapshot = succeeded["HENBACKUP_SNAPSHOT"]
    restic_command(restic, repository, "restore", snapshot, "--target", str(target))
    assert tree(target / source.relative_to("/")) == tree(source)
    assert [s["tags"] for s in restic_json(restic, repository, "snapshots")] == [
        ["backup-pictures"]
    ]


@pytest.mark.parametrize("restic", ["restic-0.14", "restic-0.18"], indirect=True)
def test_a_hung_repository_s_lane_is_cancelled_and_stopped_cleanly_while_its_sibling_completes(
    restic: str,
    repository: Path,
    rest_repository: RestServer,  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    """`henbackupctl cancel` reaches the hung repository's own process (the lane), and the
    daemon's stop reaches every lane: restic ends cleanly, nothing is left behind."""
    config, _ = write_config(tmp_path, restic, repository, rest_repository, 2, 3600.0)
    rest_repository.freeze()
    with Daemon(config, tmp_path / "daemon") as daemon:
        daemon.pump_until(daemon.socket.exists, 30)
        ok(henbackupctl(daemon, "backup", "pictures", "--no-wait"))
        daemon.wait_for("job.succeeded", DEADLINE, repository="local")
        hung = daemon.wait_for("job.started", DEADLINE, repository="rest")
        assert int(hung["HENBACKUP_PID"]) != daemon.pid
        ok(henbackupctl(daemon, "cancel", hung["HENBACKUP_JOB"]))
        daemon.wait_for("job.cancelled", DEADLINE, job=hung["HENBACKUP_JOB"])
        daemon.wait_worker("pictures", lambda w: w["run"] == "idle", DEADLINE)
        assert hooks_said(tmp_path) == ["before", "failure: rest: cancelled"]

        since = len(daemon.events)
        ok(henbackupctl(daemon, "backup", "pictures", "--no-wait"))
        daemon.wait_for("job.succeeded", DEADLINE, since=since, repository="local")
        hung = daemon.wait_for("job.started", DEADLINE, since=since, repository="rest")
        code = daemon.stop(timeout=60)
        assert code == 0, daemon.report()
        assert daemon.leftovers == [], daemon.report()
        assert daemon.find("job.cancelled", job=hung["HENBACKUP_JOB"]), daemon.report()
        assert daemon.find("job.failed") == [], daemon.report()
    assert hooks_said(tmp_path)[2:] == ["before", "failure: cancelled"]


def write_preemption_config(tmp_path: Path, restic: str, local: Path, freezer: bool) -> Path:
    """Two slots; pictures (throttled, alone ~40 s more per repository) to `local` and
    `second` (initialised here: restic's key derivation is no stall); grafana superior.
    With `freezer`, pictures has resources: each lane's restic has its own cgroup leaf,
    which a pause freezes."""
    pictures, grafana = tmp_path / "pictures", tmp_path / "grafana"
    pictures.mkdir()
    (pictures / "big.bin").write_bytes(os.urandom(4 << 20))  # ~40 s at 100K
    grafana.mkdir()
    (grafana / "grafana.db").write_bytes(os.urandom(1 << 20))  # ~5 s at 200K
    restic_command(restic, tmp_path / "second", "init")
    resources = "resources = { cpu_weight = 50 }\n" if freezer else ""
    config = tmp_path / "henbackup.toml"
    config.write_text(
        f"""
[daemon]
restic = {json.dumps(restic)}
hostname = "{HOST}"
max_concurrent_jobs = 2
preempt_after = "2s"
stall_timeout = "3s"

[repositories.local]
location = {json.dumps(str(local))}
password = "{PASSWORD}"

[repositories.second]
location = {json.dumps(str(tmp_path / "second"))}
password = "{PASSWORD}"

[backups.pictures]
paths = [{json.dumps(str(pictures))}]
repositories = ["local", "second"]
upload_limit = "100K"
{resources}
[backups.grafana]
paths = [{json.dumps(str(grafana))}]
repositories = ["local"]
priority = "superior"
upload_limit = "200K"
"""
    )
    return config


@pytest.mark.parametrize("how", ["SIGSTOP", "freezer"])
@pytest.mark.parametrize("restic", ["restic-0.14", "restic-0.18"], indirect=True)
def test_preemption_pauses_one_side_by_side_repository_and_its_sibling_goes_on(
    restic: str, repository: Path, tmp_path: Path, how: str
) -> None:
    """pictures holds both slots, one per repository; a superior grafana pauses one of
    them only (the one the master saw start last): the other goes on uploading, which a
    pause of both would have ended after the 3 s stall_timeout. Every snapshot completes
    and checks clean."""
    config = write_preemption_config(tmp_path, restic, repository, how == "freezer")
    with Daemon(config, tmp_path / "daemon") as daemon:
        daemon.pump_until(daemon.socket.exists, 30)
        ok(henbackupctl(daemon, "backup", "pictures", "--no-wait"))
        for name in ("local", "second"):  # both upload at once
            daemon.wait_for("job.progress", 60, backup="pictures", repository=name)
        ok(henbackupctl(daemon, "backup", "grafana", "--no-wait"))
        daemon.wait_for("job.started", 30, backup="grafana")
        paused = daemon.wait_for("job.paused", 5, backup="pictures")
        assert paused["HENBACKUP_PAUSED_HOW"] == how, daemon.report()

        daemon.wait_for("job.succeeded", DEADLINE, backup="grafana")
        for name in ("local", "second"):
            daemon.wait_for("job.succeeded", DEADLINE, backup="pictures", repository=name)
        assert not daemon.find("job.stalled") and not daemon.find("job.failed"), daemon.report()
        assert daemon.find("job.paused") == [paused], daemon.report()
        daemon.wait_worker("pictures", lambda w: w["run"] == "idle", DEADLINE)
    for location in (repository, tmp_path / "second"):
        check = restic_command(restic, location, "check")  # raises unless it exits 0
        assert b"no errors were found" in check.stdout, check.stdout
        target = tmp_path / f"restored-{location.name}"
        restic_command(
            restic,
            location,
            "restore",
            "latest",
            "--tag",
            "backup-pictures",
            "--target",
            str(target),
        )
        source = tmp_path / "pictures"
        assert tree(target / source.relative_to("/")) == tree(source)
