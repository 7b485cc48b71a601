"""A stand-in master for the commands' tests: a real config, status model, scheduler and
clients, and a start_one_off that only records (the fixture `master`, in conftest.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from henbackup.errors import UsageError
from henbackup.master import commands
from henbackup.master.permissions import Peer
from henbackup.master.states import ChildState
from henbackup.observe.status import WorkerView
from henbackup.protocol import parse_request, reply_error

CONFIG = """\
[repositories.local]
location = "{tmp}/local"
password = "pw-local"

[repositories.aws]
location = "{tmp}/aws"
password = "pw-aws"
check = {{ schedule = ["1w"], read_data_subset = "5%" }}

[repositories.nas]
location = "{tmp}/nas"
password = "pw-nas"

[backups.pictures]
paths = ["{tmp}/data"]
repositories = ["local", "aws"]

[backups.music]
paths = ["{tmp}/data"]
repositories = ["nas"]
"""
PRIORITY_HINT = "use immediate, next, superior, normal, inferior, on-idle or an integer"
SUBSET_HINT = 'use a percentage ("5%"), a fraction ("1/10") or a size ("500M")'
STOPPING = {"ok": False, "code": "failed", "error": "henbackup is stopping: no new job starts"}


ROOT = Peer(pid=1, uid=0, gid=0, groups=frozenset())
MEMBER_GID = 4242  # group henbackup's, in these tests
MEMBER = Peer(pid=2, uid=1000, gid=100, groups=frozenset({MEMBER_GID}))
OUTSIDER = Peer(pid=3, uid=1001, gid=100, groups=frozenset({4243}))


class Conversation:
    """A client connection, as far as commands and Clients use it."""

    def __init__(self, peer: Peer = ROOT) -> None:
        self.peer = peer
        self.on_close: list[Any] = []
        self.sent: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def finish(self, reply: dict[str, Any]) -> None:
        self.sent.append(reply)


class Channel:
    """A worker's channel: what the master sends it."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def worker(
    state: ChildState = ChildState.RUNNING, channel: Channel | None = None, **fields: Any
) -> Any:
    """A supervised worker as commands read it (supervisor.Supervised)."""
    return SimpleNamespace(
        child=SimpleNamespace(state=state),
        channel=channel,
        send=lambda message: channel is not None and channel.send(message) is None,
        running=fields.get("running", False),
        next_run=fields.get("next_run"),
    )


def tell_model(master: Any) -> None:
    """As the supervisor does after every change: its workers, as the model reads them."""
    views = []
    for key, supervised in master.children.items():
        kind, name = key.split(":", 1)
        state = supervised.child.state.value
        views.append((key, WorkerView(name, kind, state, supervised.running, supervised.next_run)))
    master.model.daemon_changed(views, master.stopping)


def answer(master: Any, request: dict[str, Any], conversation: Any) -> Any:
    """As the control server does: the request's shape checked, then the command's answer."""
    try:
        parsed = parse_request(request)
    except UsageError as error:
        return reply_error("usage", str(error))
    return commands.answer(master, parsed, conversation)


def ask(master: Any, command: str, **request: Any) -> Any:
    return answer(master, {"command": command, **request}, Conversation())


def usage(error: str) -> dict[str, Any]:
    return {"ok": False, "code": "usage", "error": error}
