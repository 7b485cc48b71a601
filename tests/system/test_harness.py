"""The system-test harness itself: a real user manager, a real journal, and no leaks."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import namespace_init
import pytest
from notify_service import status_text
from user_manager import HarnessError, SystemdHarness

SERVICE = Path(__file__).with_name("notify_service.py")
UNIT = "harness-test.service"
# systemd's catalogue ids (systemd/sd-messages.h) for what the manager logs about a unit.
UNIT_STOPPED = "9d1aaa27d60140bd96365438aad20286"
UNIT_FAILURE = "d9b373ed55a64feb8242e02dbe79a49c"
UNIT_PROCESS_EXIT = "98e322203f7a4ed290d09fe03c09fe15"


def notify_unit(token: str, result_file: Path) -> str:
    """A Type=notify unit like henbackup.service, recording how its main process ended."""
    # $$ is a literal $ for systemd: the shell expands what systemd puts in ExecStopPost's env.
    return f"""\
[Service]
Type=notify
ExecStart={sys.executable} {SERVICE} {token}
ExecReload=/bin/kill -HUP $MAINPID
ExecStopPost=/bin/sh -c 'echo "$$SERVICE_RESULT $$EXIT_CODE $$EXIT_STATUS" > {result_file}'
"""


def test_a_notify_service_starts_reloads_logs_and_stops(
    systemd_harness: SystemdHarness, tmp_path: Path
) -> None:
    harness, token, result = systemd_harness, uuid.uuid4().hex, tmp_path / "result"
    harness.install_unit(UNIT, notify_unit(token, result))

    harness.systemctl("start", UNIT)  # returns once READY=1 arrived
    state = harness.show(UNIT, "ActiveState", "SubState", "StatusText")
    assert state == {"ActiveState": "active", "SubState": "running", "StatusText": status_text(0)}

    # On systemd 252 `reload` may return before the service has processed SIGHUP: poll.
    harness.systemctl("reload", UNIT)
    harness.wait_show(UNIT, ActiveState="active", StatusText=status_text(1))

    ours = {"HENBACKUP_TEST_TOKEN": token}
    (started,) = harness.wait_journal({"HENBACKUP_EVENT": "daemon.started", **ours})
    assert started["_SYSTEMD_USER_UNIT"] == UNIT
    assert started["HENBACKUP_GENERATION"] == "0"
    assert started["SYSLOG_IDENTIFIER"] == "henbackup-harness-test"
    (reloaded,) = harness.wait_journal({"HENBACKUP_EVENT": "config.reloaded", **ours})
    assert reloaded["HENBACKUP_GENERATION"] == "1"
    assert reloaded["_PID"] == started["_PID"]  # reloaded in place, not restarted

    harness.systemctl("stop", UNIT)  # returns once ExecStopPost is done too
    assert harness.show(UNIT, "ActiveState") == {"ActiveState": "inactive"}
    # `show` cannot tell how it ended (the stopped unit is garbage-collected at once).
    assert result.read_text().split() == ["success", "exited", "0"]
    harness.wait_journal({"HENBACKUP_EVENT": "daemon.stopping", **ours})
    harness.wait_journal({"USER_UNIT": UNIT, "MESSAGE_ID": UNIT_STOPPED})
    for failure in (UNIT_FAILURE, UNIT_PROCESS_EXIT):
        assert harness.journal({"USER_UNIT": UNIT, "MESSAGE_ID": failure}) == []


def test_the_harness_leaves_nothing_on_the_host(tmp_path: Path) -> None:
    host_had_systemd = Path("/run/systemd/system").exists()  # False where systemd isn't PID 1
    with SystemdHarness.start(tmp_path) as harness:
        harness.run(["test", "-d", "/run/systemd/system"], check=True)
        assert Path("/run/systemd/system").exists() == host_had_systemd
        pids = harness.pids()
        assert {harness.info["journald_pid"], harness.info["manager_pid"]} <= pids
        cgroups = harness.host_cgroups()
        assert all(cgroup.is_dir() for cgroup in cgroups)

    assert Path("/run/systemd/system").exists() == host_had_systemd
    assert [pid for pid in pids if runs_systemd(pid)] == []
    assert [path for path in cgroups if path.parent.exists()] == []
    assert harness.leftovers() == []


def test_a_service_can_manage_sub_cgroups_of_its_own(systemd_harness: SystemdHarness) -> None:
    """What Delegate=yes will need: sub-cgroups made by the service, removed by systemd."""
    unified = next(m for m in systemd_harness.info["cgroup_mounts"] if is_cgroup2(m))
    # sh moves itself to main/ and its child to job/ ($$ is a literal $ for systemd).
    script = (
        f'cg={unified}$$(sed -n "s/^0:://p" /proc/self/cgroup); mkdir "$$cg/main" "$$cg/job"; '
        'echo $$$$ > "$$cg/main/cgroup.procs"; sleep 600 & echo $$! > "$$cg/job/cgroup.procs"; wait'
    )
    unit = f"[Service]\nDelegate=yes\nExecStart=/bin/sh -c '{script}'\n"
    systemd_harness.install_unit("delegate.service", unit)
    systemd_harness.systemctl("start", "delegate.service")
    cgroup = unified + systemd_harness.show("delegate.service", "ControlGroup")["ControlGroup"]
    job = systemd_harness.wait_for(
        lambda: systemd_harness.run(["cat", f"{cgroup}/job/cgroup.procs"]).stdout.split(),
        what="the job's process in its own sub-cgroup",
    )
    assert runs(int(job[0]), "sleep")
    main_pid = systemd_harness.show("delegate.service", "MainPID")["MainPID"]
    assert systemd_harness.run(["cat", f"{cgroup}/main/cgroup.procs"]).stdout.split() == [main_pid]

    systemd_harness.systemctl("stop", "delegate.service")
    assert not Path(cgroup).exists()  # the host sees the same cgroup tree
    assert not runs(int(job[0]), "sleep")


def test_a_missing_component_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(namespace_init, "JOURNALD", ("/nonexistent/systemd-journald",))
    with pytest.raises(HarnessError, match="missing: /nonexistent/systemd-journald"):
        SystemdHarness.start(tmp_path)


def runs(pid: int, program: str) -> bool:
    """True if `pid` is alive (not a zombie) and its command line mentions `program`."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z" and program.encode() in cmdline


def runs_systemd(pid: int) -> bool:
    """True if `pid` is a live journald or systemd (pids are not reused within a test)."""
    return runs(pid, "systemd")


def is_cgroup2(mount_point: str) -> bool:
    """True if `mount_point` is a cgroup2 mount on the host."""
    mounts = namespace_init.mountinfo()
    return any(point == mount_point and fstype == "cgroup2" for point, fstype, _ in mounts)
