"""Who may talk to the daemon (henbackupctl(1), exit 4): root and group `henbackup` only.

Real accounts (useradd, groupadd) on the host, the real unit under the harness's user
manager, and henbackupctl run as those accounts through setpriv inside the namespace.

One thing of the harness is not as on a host: its runtime directory /run/user/0 is 0700,
as a user manager's always is, whereas a system service's RuntimeDirectory= lives in /run,
0755. No other user could ever get past /run/user/0, whatever henbackup does; so every test
here first opens it to 0755, as /run is. Everything below it is as the unit makes it.
"""

from __future__ import annotations

import contextlib
import grp
import pwd
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_service import CONTROL, HENBACKUP, ROOT, UNIT, Daemon
from user_manager import SystemdHarness

GROUP = "henbackup"
HENBACKUPCTL = str(HENBACKUP.parent / "henbackupctl")
DENIED = f"henbackupctl: permission denied: run as root or as a member of group {GROUP}\n"
USER_RUNTIME_DIR = "/run/user/0"  # the harness's; RuntimeDirectory= is below it
EXIT_DENIED = 4


class Accounts:
    """Group `henbackup` (created if missing) and fresh users, all removed by `remove`."""

    def __init__(self) -> None:
        self.users: list[str] = []
        self.created_group = False

    def ensure_group(self) -> None:
        with contextlib.suppress(KeyError):
            grp.getgrnam(GROUP)
            return
        done = subprocess.run(["groupadd", GROUP], capture_output=True, text=True)
        if done.returncode == 0:
            self.created_group = True
        elif done.returncode != 9:  # 9: it exists (created meanwhile by someone else)
            raise AssertionError(f"groupadd {GROUP} failed: {done.stderr.strip()}")

    def add_user(self, primary_group: str | None = None) -> str:
        """A new user, no home, no login; its primary group `users` unless told."""
        name = f"hbtest{secrets.token_hex(4)}"
        argv = ["useradd", "-M", "-N", "-s", "/usr/sbin/nologin"]
        argv += ["-g", primary_group] if primary_group else []
        subprocess.run([*argv, name], check=True, capture_output=True)
        self.users.append(name)
        return name

    def join(self, user: str) -> None:
        subprocess.run(["usermod", "-aG", GROUP, user], check=True, capture_output=True)

    def remove(self) -> list[str]:
        """Delete what was created (users first: a group cannot go while a primary one)."""
        problems = []
        for user in self.users:
            done = subprocess.run(["userdel", user], capture_output=True, text=True)
            if done.returncode != 0:
                done = subprocess.run(["userdel", "-f", user], capture_output=True, text=True)
            if done.returncode != 0:
                problems.append(f"userdel {user}: {done.stderr.strip()}")
        if self.created_group:
            done = subprocess.run(["groupdel", GROUP], capture_output=True, text=True)
            if done.returncode != 0:
                problems.append(f"groupdel {GROUP}: {done.stderr.strip()}")
        return problems


@pytest.fixture
def accounts() -> Iterator[Accounts]:
    made = Accounts()
    try:
        made.ensure_group()  # before the daemon binds its socket: it chowns it then
        yield made
    finally:
        problems = made.remove()
    assert not problems, problems


@pytest.fixture
def daemon(accounts: Accounts, systemd_harness: SystemdHarness) -> Iterator[Daemon]:
    # In the checkout, which the unit binds in (pytest's tmp_path is hidden by PrivateTmp=).
    (ROOT / ".cache").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / ".cache", prefix="system-") as tmp:
        systemd_harness.run(["chmod", "0755", USER_RUNTIME_DIR], check=True)  # as /run is
        yield Daemon(systemd_harness, Path(tmp))


def runtime_directory_mode(daemon: Daemon, mode: str) -> None:
    """A drop-in for the unit (before it is installed) setting RuntimeDirectoryMode=."""
    drop_in = daemon.harness.unit_dir / f"{UNIT}.d" / "runtime-directory.conf"
    drop_in.parent.mkdir(exist_ok=True)
    drop_in.write_text(f"[Service]\nRuntimeDirectoryMode={mode}\n")


def as_user(daemon: Daemon, user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """`argv` inside the namespace as `user`, with its primary and supplementary groups
    read afresh from /etc/passwd and /etc/group (as a new login would)."""
    account = pwd.getpwnam(user)
    ids = [f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups"]
    return daemon.harness.run(["setpriv", *ids, *argv])


def ctl_as(daemon: Daemon, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    return as_user(daemon, user, HENBACKUPCTL, "--socket", CONTROL, *args)


def groups_of(daemon: Daemon, user: str) -> set[str]:
    """The group names a process started as `user` has (`id -Gn`)."""
    return set(as_user(daemon, user, "id", "-Gn").stdout.split())


def outcome(done: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    """Exit status, stderr, and the first line of stdout (the STATUS= line for `status`)."""
    return done.returncode, done.stderr, done.stdout.partition("\n")[0]


def test_the_socket_is_0660_root_and_group_henbackup(daemon: Daemon) -> None:
    daemon.run_with("pictures")
    shown = daemon.harness.run(["stat", "-c", "%a %U %G", CONTROL], check=True).stdout
    assert shown == f"660 root {GROUP}\n"


def test_a_user_is_refused_then_allowed_once_in_group_henbackup(
    daemon: Daemon, accounts: Accounts
) -> None:
    """As on a host: the unit's own runtime directory and socket, nothing opened by hand."""
    outsider, insider = accounts.add_user(), accounts.add_user(primary_group=GROUP)
    daemon.run_with("pictures")
    assert GROUP not in groups_of(daemon, outsider)
    refused = ctl_as(daemon, outsider, "status")
    accounts.join(outsider)
    assert GROUP in groups_of(daemon, outsider)  # a new process has the new group
    joined = ctl_as(daemon, outsider, "status")
    primary = ctl_as(daemon, insider, "status")
    # All three at once, so that a failure shows each of them.
    assert {
        "not in the group": outcome(refused),
        "supplementary member": outcome(joined),
        "primary group": outcome(primary),
    } == {
        "not in the group": (EXIT_DENIED, DENIED, ""),
        "supplementary member": (0, "", "1 backup; idle"),
        "primary group": (0, "", "1 backup; idle"),
    }


def test_with_its_directory_reachable_the_socket_mode_refuses_with_exit_4(
    daemon: Daemon, accounts: Accounts
) -> None:
    """The runtime directory 0755 (a drop-in), the socket as bound: its mode (0660, group
    henbackup) refuses an outsider before the daemon hears of it, and that too is exit 4
    with the daemon's own words (henbackupctl(1): 3 is "not reachable", 4 "permission denied")."""
    outsider, member = accounts.add_user(), accounts.add_user()
    accounts.join(member)
    runtime_directory_mode(daemon, "0755")
    daemon.run_with("pictures")
    assert {
        "not in the group": outcome(ctl_as(daemon, outsider, "status")),
        "supplementary member": outcome(ctl_as(daemon, member, "status")),
    } == {
        "not in the group": (EXIT_DENIED, DENIED, ""),
        "supplementary member": (0, "", "1 backup; idle"),
    }


def test_the_daemon_itself_refuses_a_peer_outside_group_henbackup(
    daemon: Daemon, accounts: Accounts
) -> None:
    """SO_PEERCRED, the daemon's own check behind the socket's mode: with the runtime
    directory 0755 (a drop-in) and the socket opened to everyone, the mode alone no longer
    keeps anyone out, and the daemon must. Its refusal must reach the client every time,
    whenever the client's request arrives: five tries."""
    outsider, member = accounts.add_user(), accounts.add_user()
    insider = accounts.add_user(primary_group=GROUP)
    accounts.join(member)
    runtime_directory_mode(daemon, "0755")
    daemon.run_with("pictures")
    daemon.harness.run(["chmod", "0666", CONTROL], check=True)
    tries = [ctl_as(daemon, outsider, "status") for _ in range(4)]
    tries.append(ctl_as(daemon, outsider, "backup", "pictures", "--no-wait"))
    assert {
        "not in the group": [outcome(done) for done in tries],
        "supplementary member": outcome(ctl_as(daemon, member, "status")),
        "primary group": outcome(ctl_as(daemon, insider, "status")),
    } == {
        "not in the group": [(EXIT_DENIED, DENIED, "")] * 5,
        "supplementary member": (0, "", "1 backup; idle"),
        "primary group": (0, "", "1 backup; idle"),
    }
    assert daemon.harness.journal({"HENBACKUP_EVENT": "job.queued"}) == []
