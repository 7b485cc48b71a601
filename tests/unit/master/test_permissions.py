"""Who may do what: the command → privilege table, as the master applies it to the
caller's credentials (a member of group henbackup, root, anyone else)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from henbackup.config.model import Priority
from henbackup.master import commands, permissions
from henbackup.master.permissions import Peer, Privilege
from henbackup.protocol import ControlRequest
from henbackup.scheduler import Ticket, locks

from .stand_in import MEMBER, MEMBER_GID, OUTSIDER, ROOT, Channel, Conversation, answer, worker

# --- who may do what --------------------------------------------------------------------

OPERATOR_MAY = "status, queue, list-snapshots, backup, check, cancel"


@pytest.fixture
def group_henbackup(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Group henbackup exists, with MEMBER_GID."""

    def getgrnam(name: str) -> Any:
        if name != "henbackup":
            raise KeyError(name)
        return SimpleNamespace(gr_gid=MEMBER_GID)

    monkeypatch.setattr(permissions, "grp", SimpleNamespace(getgrnam=getgrnam))
    permissions.operators_gid.cache_clear()
    yield
    permissions.operators_gid.cache_clear()  # the host's own group again


def test_the_group_is_looked_up_once_not_for_every_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name service (LDAP) may be slow: the master's loop asks it once, and again on a
    reload (which clears the cache), never once per connection."""
    asked: list[str] = []

    def getgrnam(name: str) -> Any:
        asked.append(name)
        return SimpleNamespace(gr_gid=MEMBER_GID)

    monkeypatch.setattr(permissions, "grp", SimpleNamespace(getgrnam=getgrnam))
    permissions.operators_gid.cache_clear()
    try:
        assert [MEMBER.privilege, MEMBER.privilege, OUTSIDER.privilege] == [
            Privilege.OPERATE,
            Privilege.OPERATE,
            Privilege.NONE,
        ]
        assert asked == ["henbackup"]
        permissions.operators_gid.cache_clear()  # what a reload does
        assert MEMBER.privilege is Privilege.OPERATE and asked == ["henbackup"] * 2
    finally:
        permissions.operators_gid.cache_clear()


def test_the_table_names_every_command_the_master_answers() -> None:
    assert set(permissions.REQUIRED) == set(commands.COMMANDS)


@pytest.mark.usefixtures("group_henbackup")
@pytest.mark.parametrize(
    ("command", "fields"),
    [
        ("restore-snapshot", {"repository": "aws", "snapshot": "abcd1234"}),
        ("restore-snapshot", {"repository": "aws", "snapshot": "abcd1234", "target": "/tmp"}),
        ("restore-snapshot", {"repository": "aws", "snapshot": "abcd1234", "in_place": True}),
        ("prune", {"repository": "aws"}),
    ],
)
def test_a_member_may_not_read_contents_write_or_destroy(
    master: Any, command: str, fields: dict[str, Any]
) -> None:
    """The peer's credentials decide (a request claiming more is refused for its shape)."""
    reply = answer(master, {"command": command, **fields}, Conversation(MEMBER))
    assert reply == {
        "ok": False,
        "code": "permission",
        "error": f"permission denied: only root may {command} (group henbackup may {OPERATOR_MAY})",
    }
    assert master.one_offs == []
    assert not (master.state_dir / "restores").exists()


@pytest.mark.usefixtures("group_henbackup")
@pytest.mark.parametrize("peer", [MEMBER, Peer(4, 1002, MEMBER_GID, frozenset())])
def test_a_member_may_watch_and_operate(master: Any, peer: Peer) -> None:
    channel = Channel()
    master.children["backup:pictures"] = worker(channel=channel)
    asked = {
        "status": {},
        "queue": {},
        "list-snapshots": {"repository": "aws"},
        "backup": {"backup": "pictures"},
        "check": {"repository": "aws"},
    }
    for command, fields in asked.items():
        reply = answer(master, {"command": command, **fields}, Conversation(peer))
        assert reply is None or reply.get("code") != "permission", (command, reply)
    assert [job["command"] for job, _, _ in master.one_offs] == ["list-snapshots", "check"]
    assert len(channel.sent) == 1
    cancel = {"command": "cancel", "job": "j1"}
    assert answer(master, cancel, Conversation(peer))["code"] == "usage"  # no such job


@pytest.mark.usefixtures("group_henbackup")
@pytest.mark.parametrize("command", sorted(permissions.REQUIRED))
def test_an_outsider_may_do_nothing(master: Any, command: str) -> None:
    reply = commands.answer(master, ControlRequest(command, {}), Conversation(OUTSIDER))
    assert reply == {"ok": False, "code": "permission", "error": permissions.DENIED}


@pytest.mark.usefixtures("group_henbackup")
def test_a_member_may_cancel_what_the_configuration_describes_but_not_a_restore(
    master: Any,
) -> None:
    """A restore is root's alone to start, so root's alone to stop; backups, checks and
    prunes (scheduled or asked) a member may cancel."""
    scheduler = master.scheduler
    scheduler.set_slots(1)  # the jobs wait behind a running one (no signal to send)
    holder = scheduler.submit(Ticket("b0", "aws", Priority.ordinary(0)))
    restore = scheduler.submit(Ticket("r1", "aws", Priority.ordinary(0), operation="restore"))
    prune = scheduler.submit(Ticket("p1", "aws", Priority.ordinary(0), operation="prune"))
    try:
        cancel = {"command": "cancel", "job": "r1"}
        assert answer(master, cancel, Conversation(MEMBER)) == {
            "ok": False,
            "code": "permission",
            "error": "permission denied: only root may cancel a restore"
            " (group henbackup may cancel backups, checks and prunes)",
        }
        assert [t.job_id for t in scheduler.queue()] == ["b0", "r1", "p1"]  # none cancelled
        prune_cancel = {"command": "cancel", "job": "p1"}
        assert answer(master, prune_cancel, Conversation(MEMBER)) == {
            "ok": True,
            "job": "p1",
            "was": "waiting",
        }
        assert answer(master, cancel, Conversation(ROOT)) == {
            "ok": True,
            "job": "r1",
            "was": "waiting",
        }
        assert [t.job_id for t in scheduler.queue()] == ["b0"]
    finally:
        restore.cancel()
        prune.cancel()
        holder.grant.release()


@pytest.mark.timeout(20)
@pytest.mark.usefixtures("group_henbackup")
def test_a_member_cannot_cancel_a_restore_caught_while_its_ticket_is_rewritten(
    master: Any,
) -> None:
    """A ticket is rewritten in place under the queue's lock (at its turn, when its job
    process adopts it): read without the lock at that moment, it is not there. A member's
    cancel then finds the lock held, and is tried again: the retry must still see a
    restore."""
    scheduler = master.scheduler
    scheduler.set_slots(1)
    holder = scheduler.submit(Ticket("b0", "aws", Priority.ordinary(0)))
    restore = scheduler.submit(Ticket("r1", "aws", Priority.ordinary(0), operation="restore"))
    path = scheduler.directory / "tickets" / "r1"
    written = path.read_bytes()
    lock = locks.try_lock(scheduler.directory / "lock", locks.EXCLUSIVE)  # as the rewriter
    assert lock is not None
    try:
        path.write_bytes(b"")  # truncated, not yet written again
        conversation = Conversation(MEMBER)
        assert answer(master, {"command": "cancel", "job": "r1"}, conversation) is None
        path.write_bytes(written)
        os.close(lock)
        while not conversation.sent:
            master.loop.run_once()
        assert conversation.sent == [
            {
                "ok": False,
                "code": "permission",
                "error": "permission denied: only root may cancel a restore"
                " (group henbackup may cancel backups, checks and prunes)",
            }
        ]
        assert [t.job_id for t in scheduler.queue()] == ["b0", "r1"]  # not cancelled
    finally:
        restore.cancel()
        holder.grant.release()
