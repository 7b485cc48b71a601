"""Group henbackup is not root (henbackupctl(1), "Who may do what"), and no restore can be
turned against the host: a real member of group henbackup tries what once made the root
daemon overwrite a root file, copy a root-only secret to her, or roll a file back; root's own
restore meets links a user planted where it writes. On both restic versions.

The host's files under attack are stand-ins in the test's directory: `victim/` (root's, as
/etc is) and the backed-up `data/`, with `private/secret` 0600 in a 0700 folder. Every test
compares their trees (content, mode, owner, link target) before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_ctl_permissions import (
    DENIED,
    EXIT_DENIED,
    HENBACKUPCTL,
    Accounts,
    accounts,  # noqa: F401 (a fixture)
    as_user,
    ctl_as,
    daemon,  # noqa: F401 (a fixture)
)
from test_service import CONTROL, Daemon, backup, repository

EXIT_USAGE = 2
OPERATOR_MAY = "status, queue, list-snapshots, backup, check, cancel"
SECRET = b"root-only: the repository key of the payroll server\n"
RAW_REQUEST = """
import socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
sock.sendall(sys.argv[2].encode() + b"\\n")
answer = b""
while chunk := sock.recv(65536):
    answer += chunk
print(answer.decode().splitlines()[-1])
"""

TreeState = dict[str, tuple[int, int, str]]


def tree_state(root: Path) -> TreeState:
    """Every entry under `root` (links not followed): mode, owner, and content or target."""
    state: TreeState = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            st = path.lstat()
            if path.is_symlink():
                what = "-> " + os.readlink(path)
            elif path.is_file():
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = "dir"
            state[str(path.relative_to(root))] = (st.st_mode, st.st_uid, what)
    return state


class Host:
    """The daemon on one restic version, a member of group henbackup, and what she attacks."""

    def __init__(self, service: Daemon, users: Accounts, restic: str) -> None:
        self.daemon, self.tmp = service, service.tmp
        self.tmp.chmod(0o755)  # she may reach her own folder in it, as a home under /home
        data = service.data
        (data / "notes.txt").write_text("the snapshot's notes\n")
        private = data / "private"
        private.mkdir(mode=0o700)
        (private / "secret").write_bytes(SECRET)
        (private / "secret").chmod(0o600)
        private.chmod(0o700)
        self.victim = self.tmp / "victim"  # as /etc
        self.victim.mkdir(mode=0o755)
        (self.victim / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
        (self.victim / "passwd").chmod(0o644)
        self.member = users.add_user()
        users.join(self.member)
        self.member_uid = int(as_user(service, self.member, "id", "-u").stdout)
        self.home = self.tmp / "home"  # hers
        self.home.mkdir()
        os.chown(self.home, self.member_uid, -1)
        config = f'[daemon]\nrestic = "{restic}"\n'
        config += repository("local", self.tmp) + backup("pictures", data, "local")
        service.write_config(config)
        service.config.chmod(0o600)
        service.install()
        service.start()
        done = self.root_ctl("backup", "pictures")
        assert done.returncode == 0, done.stderr
        listed = json.loads(self.root_ctl("--json", "list-snapshots", "local").stdout)
        self.snapshot = listed["snapshots"][0]["id"]
        self.untouchable = [data, self.victim, service.tmp / "local"]

    def root_ctl(self, *args: str):
        return self.daemon.harness.run([HENBACKUPCTL, "--socket", CONTROL, *args], timeout=120)

    def as_member(self, *argv: str):
        return as_user(self.daemon, self.member, *argv)

    def plant(self, folder: Path) -> tuple[Path, Path]:
        """As the member, below `folder` (hers): a link to root's file where the restore
        writes notes.txt, and an empty file of hers where it writes the secret (she could
        hold it open). Returns both."""
        mirror = folder / str(self.daemon.data).lstrip("/")
        link, secret = mirror / "notes.txt", mirror / "private" / "secret"
        script = (
            f"mkdir -p {secret.parent} && ln -s {self.victim / 'passwd'} {link}"
            f" && touch {secret} && chmod 0666 {secret}"
        )
        done = self.as_member("sh", "-c", script)
        assert done.returncode == 0, done.stderr
        return link, secret

    def states(self) -> dict[str, TreeState]:
        return {str(path): tree_state(path) for path in [*self.untouchable, self.home]}


@pytest.fixture
def host(daemon: Daemon, accounts: Accounts, restic: str) -> Iterator[Host]:  # noqa: F811
    yield Host(daemon, accounts, restic)


def test_a_member_can_neither_read_nor_write_through_the_daemon(
    host: Host,
    accounts: Accounts,  # noqa: F811
) -> None:
    """Each of her tries is refused with exit 4 and one line saying who may, and nothing on
    the host changes; she still watches and operates. An outsider gets exit 4."""
    host.plant(host.home)
    before = host.states()
    restore = ("restore-snapshot", "local", host.snapshot)
    tries = {
        "into her folder, a link planted": (*restore, "--target", str(host.home)),
        "into root's folder": (*restore, "--target", str(host.victim)),
        "in place": (*restore, "--in-place"),
        "into the state directory": restore,
        "prune": ("prune", "local"),
    }
    outcomes = {what: ctl_as(host.daemon, host.member, *argv) for what, argv in tries.items()}
    expected = {
        what: (EXIT_DENIED, "", f"henbackupctl: permission denied: only root may {argv[0]}"
               f" (group henbackup may {OPERATOR_MAY})\n")
        for what, argv in tries.items()
    }  # fmt: skip
    assert {w: (d.returncode, d.stdout, d.stderr) for w, d in outcomes.items()} == expected
    assert host.states() == before
    assert host.daemon.harness.journal({"HENBACKUP_OPERATION": "restore"}) == []
    assert host.daemon.harness.journal({"HENBACKUP_OPERATION": "prune"}) == []

    # What she may do, she still does; someone outside the group may do nothing.
    member_may = {
        "status": ("status",),
        "queue": ("queue",),
        "list-snapshots": ("list-snapshots", "local"),
        "backup": ("backup", "pictures"),
        "check": ("check", "local"),
    }
    done = {what: ctl_as(host.daemon, host.member, *argv) for what, argv in member_may.items()}
    assert {what: (d.returncode, d.stderr) for what, d in done.items()} == {
        what: (0, "") for what in member_may
    }
    assert host.snapshot[:8] in done["list-snapshots"].stdout
    outsider = accounts.add_user()
    refused = ctl_as(host.daemon, outsider, "restore-snapshot", "local", host.snapshot)
    assert (refused.returncode, refused.stderr) == (EXIT_DENIED, DENIED)


def test_a_forged_request_on_the_socket_changes_nothing(host: Host) -> None:
    """Raw JSON, without henbackupctl: the daemon itself refuses, on the kernel's word. A
    request of the right shape gets "permission"; one that also claims to be root (uid 0,
    extra keys) is refused too (as "permission", or as a malformed request)."""
    host.plant(host.home)
    before = host.states()
    restore = {"command": "restore-snapshot", "repository": "local", "snapshot": host.snapshot}
    plain = [
        {**restore, "target": str(host.home), "wait": True},
        {**restore, "target": str(host.victim), "wait": True},
        {**restore, "wait": True},
        {"command": "prune", "repository": "local", "wait": True},
    ]
    forged = {"uid": 0, "gid": 0, "pid": 1, "user": "root", "groups": [0], "as": "root"}
    claiming_root = [{**request, **forged} for request in plain]
    replies = [
        host.as_member("/usr/bin/python3", "-I", "-c", RAW_REQUEST, CONTROL, json.dumps(request))
        for request in plain + claiming_root
    ]
    assert [(done.returncode, done.stderr) for done in replies] == [(0, "")] * len(replies)
    answers = [json.loads(done.stdout) for done in replies]
    assert answers[: len(plain)] == [
        {
            "ok": False,
            "code": "permission",
            "error": f"permission denied: only root may {request['command']}"
            f" (group henbackup may {OPERATOR_MAY})",
        }
        for request in plain
    ]
    refused = [(a["ok"], a["code"] in ("permission", "usage")) for a in answers[len(plain) :]]
    assert refused == [(False, True)] * len(claiming_root), answers
    assert host.states() == before
    assert host.daemon.harness.journal({"HENBACKUP_OPERATION": "restore"}) == []
    assert host.daemon.harness.journal({"HENBACKUP_OPERATION": "prune"}) == []


def test_roots_restore_never_follows_what_a_user_planted(host: Host) -> None:
    """Root restores into a folder of root's where a user owns a subtree and planted a link
    and a file to hold open: the restore goes into a new 0700 directory inside (the folder
    exists), the link is not followed and her file gets nothing. Into her own folder is
    refused."""
    target = host.tmp / "restore-here"
    target.mkdir(mode=0o755)
    below = target / str(host.daemon.data).lstrip("/").split("/")[0]
    below.mkdir()
    os.chown(below, host.member_uid, -1)  # hers, below root's target
    link, her_secret = host.plant(target)
    host.untouchable.append(target)
    before = host.states()

    into_hers = host.root_ctl(
        "restore-snapshot", "local", host.snapshot, "--target", str(host.home)
    )
    done = host.root_ctl(
        "--json", "restore-snapshot", "local", host.snapshot, "--target", str(target)
    )
    assert (into_hers.returncode, into_hers.stdout) == (EXIT_USAGE, "")
    assert into_hers.stderr == (
        f"henbackupctl: --target: {host.home} can be changed by uid {host.member_uid}, who"
        " could redirect the restore: restore into a directory only root can change (the"
        " default, or another --target)\n"
    )
    assert (done.returncode, done.stderr) == (0, "")
    answer = json.loads(done.stdout)
    made = Path(answer["target"])
    assert (made.parent, answer["target_existed"]) == (target, True)
    assert (made.stat().st_mode & 0o7777, made.stat().st_uid) == (0o700, 0)

    after = host.states()
    new = after[str(target)].pop(made.name)
    assert new[:2] == (0o40700, 0)
    assert {k: v for k, v in after[str(target)].items() if not k.startswith(made.name + "/")} == (
        before[str(target)]
    )
    del after[str(target)], before[str(target)]
    assert after == before  # data, victim, repository and her home: as they were
    assert (link.is_symlink(), her_secret.read_bytes()) == (True, b"")
    restored = made / str(host.daemon.data).lstrip("/")
    assert tree_state(restored) == tree_state(host.daemon.data)
    assert (restored / "private" / "secret").read_bytes() == SECRET


def test_a_target_in_the_daemons_own_tmp_is_refused(host: Host) -> None:
    """The unit's PrivateTmp= gives the daemon a /tmp of its own: what it restored there,
    root would never see, and it would go when the daemon stops."""
    target = f"/tmp/henbackup-restore-{os.getpid()}"
    refused = host.root_ctl("restore-snapshot", "local", host.snapshot, "--target", target)
    assert (refused.returncode, refused.stdout) == (EXIT_USAGE, "")
    assert refused.stderr == (
        f"henbackupctl: --target {target}: the daemon does not see /tmp as you do (its unit"
        " gives it its own /tmp and /var/tmp, which you never see and which go when it"
        " stops): give a directory elsewhere\n"
    )
    assert host.daemon.harness.journal({"HENBACKUP_OPERATION": "restore"}) == []


def test_roots_in_place_restore_never_meets_what_a_user_may_plant(host: Host) -> None:
    """Root restores over the original paths. While a folder in them is the member's (she put
    a link to root's file where the secret was), that is refused with exit 2 and one line
    naming the folder, and nothing changes. Once the tree is root's alone again, the snapshot
    comes back as it was, a file changed since rolled back."""
    data, private = host.daemon.data, host.daemon.data / "private"
    original = tree_state(data)
    os.chown(private, host.member_uid, -1)  # given to her since the snapshot
    planted = host.as_member(
        "sh", "-c", f"rm -f {private / 'secret'} && ln -s {host.victim / 'passwd'} {private}/secret"
    )
    assert planted.returncode == 0, planted.stderr
    (data / "notes.txt").write_text("changed since the snapshot\n")
    before = host.states()

    refused = host.root_ctl("restore-snapshot", "local", host.snapshot, "--in-place")
    assert (refused.returncode, refused.stderr) == (
        EXIT_USAGE,
        f"henbackupctl: --in-place: {private} can be changed by uid {host.member_uid}, who could"
        " plant a link while restic writes: restore into a fresh directory with --target DIR"
        " instead\n",
    )
    assert host.states() == before

    (private / "secret").unlink()
    os.chown(private, 0, -1)
    done = host.root_ctl("restore-snapshot", "local", host.snapshot, "--in-place")
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    assert tree_state(data) == original
    assert (private / "secret").read_bytes() == SECRET
    assert host.states()[str(host.victim)] == before[str(host.victim)]
