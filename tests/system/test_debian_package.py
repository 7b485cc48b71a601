"""The Debian package on a real Debian 12 booted with systemd as PID 1 (issue 10).

`make deb` builds the package (and runs lintian) from this checkout; a copy of the cached
base root boots under systemd-nspawn (debian_container.py) and the administrator's story
runs there through the package's own files, in order: install, configure and reload, a
backup, a watched change, who may use henbackupctl, the unit's hardening, a restart, purge.
The tests share one booted system and run in file order, each from where the last left it.

In the container the v1 cgroup controllers are read-only: a warning about limits in the
journal is expected there.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from debian_container import ROOT, Container, wait_for

from henbackup import __version__

UNIT = "henbackup.service"
CONFIG = "/etc/henbackup/henbackup.toml"
PASSWORD = "deb-test: correct horse battery staple"
DATA, REPOSITORY = "/srv/data", "/srv/backup/local"
WITH_A_BACKUP = f"""\
[repositories.local]
location = "{REPOSITORY}"
password_file = "/etc/henbackup/secrets/local"

[backups.docs]
paths = ["{DATA}"]
repositories = ["local"]
watch = {{ wait_min = "1s", wait_max = "3s" }}
"""
THROTTLED = """
[backups.big]
paths = ["/srv/big"]
repositories = ["local"]
schedule = ["1d"]
upload_limit = "64K"
"""
FRESH_STATUS = (
    f"0 backups; idle; define a backup in {CONFIG}, "
    "then: henbackup check-config; systemctl reload henbackup"
)


@pytest.fixture(scope="module")
def package() -> Path:
    """`make deb` from this checkout: exactly one file, lintian passed (make deb runs it)."""
    build = subprocess.run(["make", "deb"], cwd=ROOT, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    built = sorted((ROOT / "build" / "deb").iterdir())
    assert [path.name for path in built] == [f"henbackup_{__version__}_all.deb"]
    return built[0]


@pytest.fixture(scope="module")
def debian(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    container = Container(tmp_path_factory.mktemp("debian"), package)
    try:
        container.boot()
        (container.root / "root" / package.name).write_bytes(package.read_bytes())
        yield container
    finally:
        container.stop()


def show(debian: Container, *properties: str) -> dict[str, str]:
    out = debian.run("systemctl", "show", UNIT, *(f"--property={p}" for p in properties)).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def wait_status(debian: Container, predicate, what: str) -> str:
    return wait_for(
        lambda: (text := show(debian, "StatusText")["StatusText"]) and predicate(text) and text,
        60,
        f"{what}; StatusText={show(debian, 'StatusText')}",
    )


def journal(debian: Container, *matches: str) -> list[dict[str, str]]:
    out = debian.run("journalctl", "-o", "json", "--no-pager", *matches).stdout
    return [json.loads(line) for line in out.splitlines()]


def events(debian: Container, kind: str, backup: str) -> list[dict[str, str]]:
    return journal(debian, f"HENBACKUP_EVENT={kind}", f"HENBACKUP_BACKUP={backup}")


def succeeded(debian: Container, backup: str) -> list[dict[str, str]]:
    return events(debian, "job.succeeded", backup)


def repack(package: Path, version: str, into: Path) -> None:
    """The same package under a higher version: what `apt upgrade` would install."""
    tree = into.with_suffix(".tree")
    subprocess.run(["dpkg-deb", "--raw-extract", str(package), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {version}", control.read_text()))
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(into)],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(["rm", "-rf", str(tree)], check=True)


def ctl_status(debian: Container) -> dict:
    return json.loads(debian.run("henbackupctl", "--json", "status").stdout)


def restic(debian: Container, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return debian.run(
        "env", "RESTIC_PASSWORD_FILE=/etc/henbackup/secrets/local", "restic", "-r", REPOSITORY,
        *args, check=check,
    )  # fmt: skip


def test_0_the_changelogs_version_is_henbackups_own():
    first = (ROOT / "packaging" / "debian" / "changelog").read_text().splitlines()[0]
    assert first.startswith(f"henbackup ({__version__}) ")


def test_0_the_monitoring_examples_are_in_the_package(package):
    """README "Many hosts" and "Notifications": the alert rules, their tests, the dashboard
    and the notification recipes, side by side."""
    listing = subprocess.run(["dpkg-deb", "--contents", str(package)], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    examples = "./usr/share/doc/henbackup/examples/"
    shipped = re.findall(rf" {re.escape(examples)}(\S+)$", listing, re.MULTILINE)
    assert sorted(shipped) == [
        "henbackup-credentials.conf",
        "henbackup.json",
        "henbackup.rules.test.yml",
        "henbackup.rules.yml",
        "notifications.toml",
        "providers.toml",
    ]


def test_1_install_enables_and_starts_the_unit_idle_with_the_shipped_config(debian, package):
    # Offline (the container has a loopback only): every dependency is in the base root.
    debian.run("apt-get", "install", "-y", f"/root/{package.name}")
    assert debian.run("henbackup", "--version").stdout.strip() == f"henbackup {__version__}"
    assert debian.run("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
    wait_status(debian, lambda text: text == FRESH_STATUS, "the shipped config's status")
    assert show(debian, "ActiveState", "SubState") == {
        "ActiveState": "active",
        "SubState": "running",
    }
    assert debian.run("henbackup", "check-config").returncode == 0
    assert debian.run("getent", "group", "henbackup").stdout.startswith("henbackup:x:")
    for section, page, what in [
        ("8", "henbackup", "supervise restic backups"),
        ("1", "henbackupctl", "talk to the henbackup daemon"),
        ("5", "henbackup.toml", "password_file"),
    ]:
        text = debian.run("man", "-P", "cat", section, page).stdout
        assert what in text, text[:500]
    conffiles = debian.run("dpkg-query", "-W", "-f=${Conffiles}", "henbackup").stdout
    assert conffiles.split()[0] == CONFIG


def test_2_a_backup_written_checked_and_reloaded_runs_without_a_restart(debian):
    debian.run("install", "-d", "-m", "0700", "/etc/henbackup/secrets")
    debian.run("sh", "-c", "umask 077 && cat > /etc/henbackup/secrets/local", input=PASSWORD)
    debian.run("mkdir", "-p", DATA, "/srv/backup")
    debian.run("sh", "-c", f"echo precious > {DATA}/first.txt")
    debian.run("install", "-d", "-m", "2775", f"{DATA}/shared")  # a group's, setgid
    debian.run("tee", CONFIG, input=WITH_A_BACKUP)
    check = debian.run("henbackup", "check-config")
    assert "docs" in check.stdout
    pid = show(debian, "MainPID")["MainPID"]
    debian.run("systemctl", "reload", UNIT)
    wait_status(debian, lambda text: text.startswith("1 backup; "), "the reloaded config")
    assert show(debian, "MainPID")["MainPID"] == pid
    (reloaded,) = journal(debian, "HENBACKUP_EVENT=config.reloaded")
    assert (reloaded["HENBACKUP_ADDED"], reloaded["_PID"]) == ("backup:docs", pid)


def test_3_a_backup_through_henbackupctl_is_in_the_journal_with_its_snapshot(debian):
    debian.run("henbackupctl", "backup", "docs", timeout=300)
    (done,) = journal(debian, "HENBACKUP_EVENT=job.succeeded", "HENBACKUP_BACKUP=docs")
    snapshots = json.loads(restic(debian, "snapshots", "--json").stdout)
    assert [s["id"] for s in snapshots if s["id"].startswith(done["HENBACKUP_SNAPSHOT"])]
    explained = debian.run("journalctl", "-x", "-u", UNIT, "--no-pager").stdout
    assert "Subject: A henbackup job succeeded" in explained
    everything = debian.run("journalctl", "-o", "export", "--no-pager").stdout
    assert PASSWORD not in everything and "correct horse" not in everything


TAB = """source /usr/share/bash-completion/completions/henbackupctl
read -ra COMP_WORDS <<< "$0"; [[ $0 == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
_shtab_henbackupctl; printf '%s\\n' "${COMPREPLY[@]}"
"""


def test_3_the_installed_bash_completion_completes_verbs_and_names(debian):
    def tab(line: str, **where: str) -> list[str]:
        return debian.run("env", *where.values(), "bash", "-c", TAB, line).stdout.split()

    assert tab("henbackupctl ba") == ["backup"]
    assert tab("henbackupctl backup ") == ["docs"]
    assert tab("henbackupctl check ") == ["local"]
    # no daemon at that socket: from the configuration
    assert tab("henbackupctl backup ", socket="HENBACKUP_SOCKET=/run/nobody.sock") == ["docs"]
    for name in ("bash-completion/completions/henbackup", "zsh/vendor-completions/_henbackup"):
        debian.run("test", "-s", f"/usr/share/{name}")


def test_4_a_changed_file_is_backed_up_by_itself(debian):
    debian.run("sh", "-c", f"echo new > {DATA}/second.txt")

    def watched() -> list[dict[str, str]]:
        found = journal(debian, "HENBACKUP_EVENT=job.succeeded", "HENBACKUP_BACKUP=docs")
        return [event for event in found if event.get("HENBACKUP_TRIGGER") == "watch"]

    (event,) = wait_for(watched, 120, "a backup triggered by the change")
    listed = restic(debian, "ls", event["HENBACKUP_SNAPSHOT"]).stdout
    assert f"{DATA}/second.txt" in listed.splitlines()


def test_5_members_of_group_henbackup_may_use_henbackupctl_others_get_exit_4(debian):
    debian.run("useradd", "--create-home", "--groups", "henbackup", "member")
    debian.run("useradd", "--create-home", "stranger")
    member = debian.run("henbackupctl", "status", user="member", check=False)
    assert member.returncode == 0, member.stderr
    assert "docs" in member.stdout
    stranger = debian.run("henbackupctl", "status", user="stranger", check=False)
    assert stranger.returncode == 4, stranger.stdout + stranger.stderr


def test_6_the_units_exposure_is_at_most_3_5(debian):
    report = debian.run("systemd-analyze", "security", "--no-pager", UNIT, check=False).stdout
    (level,) = re.findall(r"Overall exposure level for henbackup.service: ([0-9.]+)", report)
    assert float(level) <= 3.5, report


def test_7_a_restart_keeps_every_last_result(debian):
    before = ctl_status(debian)
    pid = show(debian, "MainPID")["MainPID"]
    debian.run("systemctl", "restart", UNIT)
    assert show(debian, "MainPID")["MainPID"] != pid
    after = ctl_status(debian)
    last = ("last_attempt", "last_success", "result", "duration", "snapshot")

    def results(status: dict) -> list[dict]:
        rows = [row for backup in status["backups"] for row in backup["repositories"]]
        return [{key: row[key] for key in last} for row in rows]

    assert results(after) == results(before)
    assert [row["result"] for row in results(after)] == ["succeeded"]


def test_8_an_upgrade_interrupts_a_running_backup_cleanly_and_runs_it_again(debian, package):
    """README: apt restarts the service after unpacking; a scheduled backup running then is
    interrupted cleanly and runs again as soon as the service is back."""
    upgrade = f"henbackup_{__version__}+upgrade_all.deb"
    repack(package, f"{__version__}+upgrade", debian.root / "root" / upgrade)
    debian.run("mkdir", "-p", "/srv/big")
    debian.run("sh", "-c", "echo small > /srv/big/first.txt")
    debian.run("tee", "-a", CONFIG, input=THROTTLED)
    debian.run("systemctl", "reload", UNIT)
    wait_for(lambda: succeeded(debian, "big"), 120, "big's first run (never succeeded: due now)")
    # 1 MiB of noise at 64 KiB/s: still running while apt unpacks and restarts.
    debian.run("sh", "-c", "head -c 1048576 /dev/urandom > /srv/big/noise")
    debian.run("henbackupctl", "backup", "big", "--no-wait")
    wait_for(lambda: len(events(debian, "job.started", "big")) == 2, 60, "big's second run")
    interrupted = events(debian, "job.started", "big")[-1]["HENBACKUP_JOB"]
    pid = show(debian, "MainPID")["MainPID"]
    debian.run("apt-get", "install", "-y", f"/root/{upgrade}", timeout=300)
    version = debian.run("dpkg-query", "-W", "-f=${Version}", "henbackup").stdout
    assert version == f"{__version__}+upgrade"
    assert show(debian, "MainPID")["MainPID"] != pid
    (cancelled,) = events(debian, "job.cancelled", "big")
    assert cancelled["HENBACKUP_JOB"] == interrupted
    (again,) = [
        fired
        for fired in events(debian, "trigger.fired", "big")
        if "interrupted" in fired["HENBACKUP_REASON"]
    ]
    assert int(again["__REALTIME_TIMESTAMP"]) > int(cancelled["__REALTIME_TIMESTAMP"])
    wait_for(lambda: len(succeeded(debian, "big")) == 2, 180, "big's run after the upgrade")
    assert restic(debian, "list", "locks").stdout == ""
    listed = restic(debian, "ls", succeeded(debian, "big")[-1]["HENBACKUP_SNAPSHOT"]).stdout
    assert "/srv/big/noise" in listed.splitlines()


def test_8_a_backup_run_by_hand_as_root_is_in_the_daemons_queue_while_it_runs(debian):
    """The queue is host-wide: the service, confined (ProtectProc=invisible, a capability
    bounding set), still sees a job run by hand as root, with every capability, as alive
    (hidepid spares group root), so it neither drops its ticket nor hides it."""
    debian.run("sh", "-c", "head -c 1048576 /dev/urandom > /srv/big/by-hand")
    debian.run("sh", "-c", "henbackup backup big > /root/by-hand.log 2>&1 & echo $! > /root/pid")
    by_hand = int(debian.run("cat", "/root/pid").stdout)

    def running_by_hand() -> list[dict]:
        jobs = json.loads(debian.run("henbackupctl", "queue", "--json").stdout)["jobs"]
        return [job for job in jobs if job["backup"] == "big" and job["state"] == "running"]

    (row,) = wait_for(running_by_hand, 60, "the hand-run backup in henbackupctl queue")
    children = debian.run("pgrep", "-P", str(by_hand), check=False).stdout.split()
    assert row["pid"] in {by_hand, *map(int, children)}  # it, or a job process of its own
    # A restart (each upgrade's) keeps the host's queue: RuntimeDirectory= removed it.
    debian.run("systemctl", "restart", UNIT)
    assert [job["pid"] for job in running_by_hand()] == [row["pid"]]
    wait_for(lambda: not running_by_hand(), 120, "the hand-run backup's end")
    listed = restic(debian, "ls", "latest", "--tag", "backup-big").stdout
    assert "/srv/big/by-hand" in listed.splitlines()


def test_9_purge_removes_the_package_and_its_state_never_the_repository(debian):
    (done, *_) = journal(debian, "HENBACKUP_EVENT=job.succeeded", "HENBACKUP_BACKUP=docs")
    snapshot = done["HENBACKUP_SNAPSHOT"]
    restore = debian.run("henbackupctl", "restore-snapshot", "local", snapshot, timeout=300)
    (restored,) = set(re.findall(r"/var/lib/henbackup/restores/[^/\s:]+", restore.stdout))
    # Its whole mode: under RestrictSUIDSGID=, the chmod was refused, and it came back 0700.
    assert debian.run("stat", "-c", "%a", f"{restored}{DATA}/shared").stdout.strip() == "2775"
    files = debian.run("dpkg-query", "-L", "henbackup").stdout.splitlines()
    snapshots = restic(debian, "snapshots", "--json").stdout
    assert "/usr/bin/henbackupctl" in files and CONFIG in files
    debian.run("apt-get", "purge", "-y", "henbackup")

    def exists(path: str) -> bool:
        return debian.run("test", "-e", path, check=False).returncode == 0

    directories = {f for f in files if debian.run("test", "-d", f, check=False).returncode == 0}
    assert [f for f in files if f not in directories and exists(f)] == []
    for gone in (
        CONFIG,
        "/usr/lib/python3/dist-packages/henbackup",
        "/var/cache/henbackup",
        "/var/lib/henbackup/status.json",
        "/run/henbackup",
    ):
        assert not exists(gone), gone
    assert debian.run("systemctl", "is-enabled", UNIT, check=False).returncode != 0
    # Never touched: the repository, what was restored, the administrator's secrets.
    assert restic(debian, "snapshots", "--json").stdout == snapshots
    assert restic(debian, "check", check=False).returncode == 0
    assert debian.run("cat", f"{restored}{DATA}/first.txt").stdout == "precious\n"
    assert exists("/etc/henbackup/secrets/local")
    # Nor the marks that keep a reinstall from creating a repository on an unmounted disk.
    assert debian.run("ls", "/var/lib/henbackup/repositories").stdout.strip() != ""
