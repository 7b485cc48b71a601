"""Preemption through the real daemon, real restic, real henbackupctl (henbackup.toml(5),
PRIORITIES; issue 14, item 3).

A throttled pictures backup holds the only slot (max_concurrent_jobs = 1, upload_limit, a
few MiB of random data: alone it needs about 40 s more); a superior Grafana backup is asked
for. After preempt_after, pictures is paused (its restic stopped, or frozen with its cgroup
leaf where the job has resources: this host's cgroup v1 freezer, as root), Grafana runs in
the slot pictures lends it, then pictures resumes and completes: its snapshot restores
byte for byte and `restic check` finds nothing wrong. The pause lasts longer than
stall_timeout and is no stall. Both restic versions, both ways of pausing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from daemon_helpers import PASSWORD, Daemon, henbackupctl, ok, restic_command, restic_json, tree

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOST = "testhost"
PREEMPT_AFTER = 2.0
# Grafana must start this soon after it queued: generous for a busy machine, and far below
# the ~40 s that pictures' upload still needs without preemption.
STARTS_WITHIN = 25.0
DEADLINE = 120.0  # for what only has to happen at last (pictures' end); never a measure


def write_config(tmp_path: Path, restic: str, repository: Path, freezer: bool) -> Path:
    pictures, grafana = tmp_path / "pictures", tmp_path / "grafana"
    pictures.mkdir()
    (pictures / "notes.txt").write_text("the pictures' notes\n")
    (pictures / "big.bin").write_bytes(os.urandom(4 << 20))  # ~40 s at 100K
    grafana.mkdir()
    (grafana / "grafana.db").write_bytes(os.urandom(1 << 20))  # ~5 s at 200K: a long pause
    resources = "resources = { cpu_weight = 50 }  # a cgroup leaf: frozen, not stopped\n"
    config = tmp_path / "henbackup.toml"
    config.write_text(
        f"""
[daemon]
restic = {json.dumps(restic)}
hostname = "{HOST}"
max_concurrent_jobs = 1
preempt_after = "{PREEMPT_AFTER:g}s"
stall_timeout = "3s"

[repositories.local]
location = {json.dumps(str(repository))}
password = {json.dumps(PASSWORD)}

[backups.pictures]
paths = [{json.dumps(str(pictures))}]
repositories = ["local"]
upload_limit = "100K"
{resources if freezer else ""}
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
def test_a_superior_backup_pauses_a_throttled_one_which_then_completes(
    restic: str, repository: Path, tmp_path: Path, how: str
) -> None:
    config = write_config(tmp_path, restic, repository, freezer=how == "freezer")
    with Daemon(config, tmp_path / "daemon") as daemon:
        daemon.pump_until(daemon.socket.exists, 30)
        ok(henbackupctl(daemon, "backup", "pictures", "--no-wait"))
        pictures = daemon.wait_for("job.progress", 60, backup="pictures")  # restic uploads
        ok(henbackupctl(daemon, "backup", "grafana", "--no-wait"))
        queued = daemon.wait_for("job.queued", 30, backup="grafana")
        grafana_job = queued["HENBACKUP_JOB"]

        started = daemon.wait_for("job.started", STARTS_WITHIN, backup="grafana")
        waited = int(started["__REALTIME_TIMESTAMP"]) - int(queued["__REALTIME_TIMESTAMP"])
        assert PREEMPT_AFTER <= waited / 1e6 < STARTS_WITHIN, daemon.report()
        paused = daemon.wait_for("job.paused", 5, backup="pictures")
        fields = {k: v for k, v in paused.items() if k.startswith("HENBACKUP_")}
        assert fields == {
            "HENBACKUP_EVENT": "job.paused",
            "HENBACKUP_JOB": pictures["HENBACKUP_JOB"],
            "HENBACKUP_OPERATION": "backup",
            "HENBACKUP_BACKUP": "pictures",
            "HENBACKUP_REPOSITORY": "local",
            "HENBACKUP_TRIGGER": "manual",
            "HENBACKUP_PRIORITY": "0",
            "HENBACKUP_PAUSED_FOR": grafana_job,
            "HENBACKUP_PAUSED_FOR_PRIORITY": "10",
            "HENBACKUP_PAUSED_HOW": how,
        }, daemon.report()
        status = daemon.status()  # the master's own event: it knows it already
        (row,) = next(b for b in status["backups"] if b["name"] == "pictures")["repositories"]
        assert (row["state"], row["job"]) == ("paused", pictures["HENBACKUP_JOB"])
        assert "pictures→local" in status["status"] and "(paused)" in status["status"]
        rows = ok(henbackupctl(daemon, "queue")).splitlines()
        (pictures_row,) = [row for row in rows if pictures["HENBACKUP_JOB"] in row]
        assert pictures_row.split()[2] == "paused", rows

        daemon.wait_for("job.succeeded", DEADLINE, backup="grafana")
        resumed = daemon.wait_for("job.resumed", 30, backup="pictures")
        fields = {k: v for k, v in resumed.items() if k.startswith("HENBACKUP_")}
        paused_sec = float(fields.pop("HENBACKUP_PAUSED_SEC"))
        assert fields == {
            "HENBACKUP_EVENT": "job.resumed",
            "HENBACKUP_JOB": pictures["HENBACKUP_JOB"],
            "HENBACKUP_OPERATION": "backup",
            "HENBACKUP_BACKUP": "pictures",
            "HENBACKUP_REPOSITORY": "local",
            "HENBACKUP_TRIGGER": "manual",
            "HENBACKUP_PRIORITY": "0",
        }, daemon.report()
        assert paused_sec >= 3.0  # longer than stall_timeout: and no stall was said
        done = daemon.wait_for("job.succeeded", DEADLINE, backup="pictures")
        assert not daemon.find("job.stalled") and not daemon.find("job.failed"), daemon.report()
        assert daemon.find("job.paused") == [paused], daemon.report()  # once, and only it
        order = [e for e in daemon.events if e.get("HENBACKUP_EVENT") == "job.succeeded"]
        assert [e["HENBACKUP_BACKUP"] for e in order] == ["grafana", "pictures"]
        # the events on stderr may come before the master has heard them from the worker
        entry = daemon.wait_worker("pictures", lambda w: w["repositories"][0]["state"] == "idle")
        assert entry["repositories"][0]["result"] == "succeeded"
        assert "(paused)" not in daemon.status()["status"]
    assert not list((tmp_path / "daemon" / "run" / "scheduler" / "paused").iterdir())

    check = restic_command(restic, repository, "check")  # raises unless it exits 0
    assert b"no errors were found" in check.stdout, check.stdout
    target = tmp_path / "restored"
    restic_command(
        restic, repository, "restore", done["HENBACKUP_SNAPSHOT"], "--target", str(target)
    )
    source = tmp_path / "pictures"
    assert tree(target / source.relative_to("/")) == tree(source)
    snapshots = restic_json(restic, repository, "snapshots")
    assert sorted(s["tags"][0] for s in snapshots) == ["backup-grafana", "backup-pictures"]
