"""What a waiting henbackupctl is sent of its job's events, by who it is."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from henbackup.master.clients import Clients
from henbackup.master.permissions import Peer

HOOK_FAILED = {"backup": "db", "hook": "before", "error": "exit 1", "output": "pg: token x\n"}


def waiting_as(uid: int) -> tuple[Clients, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    conversation = SimpleNamespace(
        peer=Peer(pid=1, uid=uid, gid=uid, groups=frozenset()), send=sent.append, on_close=[]
    )
    clients = Clients()
    clients.add("r1", conversation, "hb:db")  # type: ignore[arg-type]
    clients.event(["r1"], "hook.failed", "db: before hook failed", HOOK_FAILED)
    return clients, sent


def test_root_is_sent_a_hooks_output():
    _, sent = waiting_as(0)
    assert sent[1:] == [
        {"event": {"kind": "hook.failed", "message": "db: before hook failed", **HOOK_FAILED}}
    ]


def test_a_member_is_not_sent_what_roots_hook_printed():
    """Members read hook output in the journal only, given journal rights (as logs)."""
    _, sent = waiting_as(1000)
    event = {key: value for key, value in HOOK_FAILED.items() if key != "output"}
    assert sent[1:] == [
        {"event": {"kind": "hook.failed", "message": "db: before hook failed", **event}}
    ]


def test_a_waiting_client_is_told_at_once_that_its_request_waits():
    """henbackupctl gives a daemon that never answers 30 s; a restore's first event may come
    after its repository's lock, much later."""
    clients = Clients()
    sent: list[dict[str, Any]] = []
    conversation = SimpleNamespace(send=sent.append, on_close=[])
    clients.add("r7", conversation, "one-off")  # type: ignore[arg-type]
    assert sent == [{"waiting": "r7"}]
