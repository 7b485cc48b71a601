"""The master's answers to henbackupctl, checked without a real master: a stand-in with a
real config, status model, scheduler and clients, and a start_one_off that only records."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from henbackup.config.load import load_config
from henbackup.config.model import Priority
from henbackup.errors import JobCancelled, UsageError
from henbackup.jobs import restore
from henbackup.loop import Loop
from henbackup.master import commands, permissions
from henbackup.master.clients import Clients
from henbackup.master.control import reply_error
from henbackup.master.permissions import Peer
from henbackup.master.states import State
from henbackup.observe.status import RunKey, StatusModel
from henbackup.protocol import ControlRequest, parse_request
from henbackup.scheduler import Scheduler, Ticket, locks

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


def worker(state: State = State.RUNNING, channel: Channel | None = None, **fields: Any) -> Any:
    """A supervised worker as commands read it (supervisor.Supervised)."""
    return SimpleNamespace(
        child=SimpleNamespace(state=state),
        channel=channel,
        running=fields.get("running", False),
        next_run=fields.get("next_run"),
    )


@pytest.fixture
def master(tmp_path: Path) -> Any:
    config_path = tmp_path / "henbackup.toml"
    config_path.write_text(CONFIG.format(tmp=tmp_path))
    one_offs: list[tuple[dict[str, Any], Any, bool]] = []

    config = load_config(config_path, env={}, hostname="testhost")

    def start_one_off(given: Any, job: dict[str, Any], conversation: Any, wait: bool) -> Any:
        assert given is config
        one_offs.append((job, conversation, wait))
        return None if wait else {"ok": True, "request": "r00000001", "accepted": job["command"]}

    model, clients = StatusModel(), Clients()
    return SimpleNamespace(
        config=config,
        config_path=config_path,
        children={},
        stopping=False,
        model=model,
        clients=clients,
        jobs=SimpleNamespace(model=model, clients=clients, start_one_off=start_one_off),
        scheduler=Scheduler(tmp_path / "s"),
        loop=Loop(),
        state_dir=tmp_path / "state",
        one_offs=one_offs,
        status_line=lambda: "2 backups; idle",
    )


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


# --- names ------------------------------------------------------------------------------


def test_an_unknown_command_is_a_usage_error(master: Any) -> None:
    assert ask(master, "explode") == usage("unknown command 'explode'")
    master.stopping = True  # the name is checked first
    assert ask(master, "explode") == usage("unknown command 'explode'")


@pytest.mark.parametrize(
    ("command", "fields"),
    [
        ("backup", {"backup": "films"}),
        ("list-snapshots", {"backup": "films"}),
        ("list-snapshots", {"repository": "aws", "backup": "films"}),
    ],
)
def test_an_unknown_backup_is_named_with_those_defined(master: Any, command, fields) -> None:
    name = repr(fields["backup"])
    assert ask(master, command, **fields) == usage(
        f"no backup named {name} (defined: music, pictures)"
    )
    assert master.one_offs == []


@pytest.mark.parametrize(
    ("command", "fields"),
    [
        ("list-snapshots", {"repository": "gcs"}),
        ("restore-snapshot", {"repository": "gcs", "snapshot": "abcd1234"}),
        ("check", {"repository": "gcs"}),
        ("prune", {"repository": "gcs"}),
    ],
)
def test_an_unknown_repository_is_named_with_those_defined(master: Any, command, fields) -> None:
    name = repr(fields.get("repository"))
    assert ask(master, command, **fields) == usage(
        f"no repository named {name} (defined: aws, local, nas)"
    )
    assert master.one_offs == []


def test_a_repository_the_backup_does_not_go_to_is_refused(master: Any) -> None:
    channel = Channel()
    master.children["backup:pictures"] = worker(channel=channel)
    assert ask(master, "backup", backup="pictures", repository="nas") == usage(
        "backup pictures does not go to 'nas' (it goes to local, aws)"
    )
    assert ask(master, "backup", backup="pictures", repository="gcs") == usage(
        "backup pictures does not go to 'gcs' (it goes to local, aws)"
    )
    assert channel.sent == []


@pytest.mark.parametrize("priority", ["urgent", "", "1.5", "2.0", "--next"])
@pytest.mark.parametrize(
    ("command", "fields"),
    [
        ("backup", {"backup": "pictures"}),
        ("restore-snapshot", {"repository": "aws", "snapshot": "abcd1234"}),
        ("check", {"repository": "aws"}),
        ("prune", {"repository": "aws"}),
    ],
)
def test_a_bad_priority_is_a_usage_error(master: Any, command, fields, priority) -> None:
    channel = Channel()
    master.children["backup:pictures"] = worker(channel=channel)
    reply = ask(master, command, **fields, priority=priority)
    assert reply == usage(f"--priority {priority!r}: not a priority: {PRIORITY_HINT}")
    assert (channel.sent, master.one_offs) == ([], [])


# --- backup ---------------------------------------------------------------------------


def test_a_backup_goes_to_its_worker(master: Any) -> None:
    channel = Channel()
    master.children["backup:pictures"] = worker(channel=channel)
    reply = ask(master, "backup", backup="pictures", repository="aws", priority="next")
    assert reply == {"ok": True, "request": reply["request"], "accepted": "backup"}
    assert re.fullmatch(r"r[0-9a-f]{8}", reply["request"])
    assert channel.sent == [
        {
            "type": "run",
            "operation": "backup",
            "requests": [reply["request"]],
            "repository": "aws",
            "priority": "next",
        }
    ]
    assert master.clients.waiting == {}
    assert master.one_offs == []


def test_a_backup_with_an_integer_priority_sends_it_as_text(master: Any) -> None:
    channel = Channel()
    master.children["backup:pictures"] = worker(channel=channel)
    ask(master, "backup", backup="pictures", priority=-3)
    assert (channel.sent[0]["repository"], channel.sent[0]["priority"]) == (None, "-3")


def test_a_client_waiting_for_its_backup_is_answered_later(master: Any) -> None:
    channel = Channel()
    master.children["backup:pictures"] = worker(channel=channel)
    conversation = Conversation()
    request = {"command": "backup", "backup": "pictures", "wait": True}
    assert answer(master, request, conversation) is None
    (sent,) = channel.sent
    (request_id,) = sent["requests"]
    waiting = master.clients.waiting[request_id]
    assert (waiting.conversation, waiting.owner) == (conversation, "backup:pictures")


@pytest.mark.parametrize(
    ("supervised", "state"),
    [(None, "absent"), (worker(State.BACKOFF), "backoff"), (worker(State.FATAL), "fatal")],
)
def test_a_backup_whose_worker_cannot_take_it_fails(master: Any, supervised, state) -> None:
    if supervised is not None:
        master.children["backup:pictures"] = supervised
    assert ask(master, "backup", backup="pictures") == {
        "ok": False,
        "code": "failed",
        "error": f"backup pictures cannot start now: its worker is {state}",
    }


# --- restore ----------------------------------------------------------------------------


def test_a_relative_target_is_refused(master: Any) -> None:
    reply = ask(master, "restore-snapshot", repository="aws", snapshot="abcd1234", target="out")
    assert reply == usage("--target 'out': give an absolute path")
    assert master.one_offs == []


def test_in_place_goes_to_a_job_that_writes_over_slash(master: Any) -> None:
    """Nothing is made: the job checks what it writes over just before restic runs."""
    request = {"repository": "aws", "snapshot": "abcd1234", "in_place": True, "wait": True}
    assert ask(master, "restore-snapshot", **request) is None
    ((job, _, _),) = master.one_offs
    assert job == {
        "command": "restore-snapshot",
        "repository": "aws",
        "snapshot": "abcd1234",
        "target": "/",
        "include": [],
        "priority": None,
        "in_place": True,
    }
    assert not (master.state_dir / "restores").exists()


def test_in_place_and_a_target_are_a_usage_error(master: Any, tmp_path: Path) -> None:
    target = str(tmp_path / "out")
    request = {"repository": "aws", "snapshot": "abcd1234", "in_place": True, "target": target}
    assert ask(master, "restore-snapshot", **request) == usage(
        "--in-place and --target: give one of them"
    )
    assert (master.one_offs, (tmp_path / "out").exists()) == ([], False)


def test_in_place_is_true_or_false(master: Any) -> None:
    request = {"repository": "aws", "snapshot": "abcd1234", "in_place": "false"}
    assert ask(master, "restore-snapshot", **request) == usage(
        "malformed request: 'in_place' of restore-snapshot must be true or false, not a string"
    )
    assert master.one_offs == []


def test_a_target_that_does_not_exist_is_made_and_restored_into(
    master: Any, tmp_path: Path
) -> None:
    conversation = Conversation()
    request = {
        "command": "restore-snapshot",
        "repository": "aws",
        "snapshot": "abcd1234",
        "target": f"{tmp_path}/srv//x/",
        "include": ["/home/me/Pictures/2023", "notes.txt"],
        "priority": "superior",
        "wait": True,
    }
    assert answer(master, request, conversation) is None
    ((job, given, wait),) = master.one_offs
    made = tmp_path / "srv" / "x"
    assert (made.is_dir(), made.is_symlink(), os.listdir(made)) == (True, False, [])
    assert made.stat().st_mode & 0o7777 == 0o700
    assert (tmp_path / "srv").stat().st_mode & 0o777 == 0o700  # what was missing, made 0700
    assert job == {
        "command": "restore-snapshot",
        "repository": "aws",
        "snapshot": "abcd1234",
        "target": str(made),
        "include": ["/home/me/Pictures/2023", "notes.txt"],
        "priority": "superior",
    }
    assert (given, wait) == (conversation, True)


def test_a_target_that_exists_gets_a_new_directory_inside(master: Any, tmp_path: Path) -> None:
    """What exists may hold links someone planted: restic gets a directory made fresh."""
    existing = tmp_path / "out"
    existing.mkdir(mode=0o755)
    reply = ask(
        master, "restore-snapshot", repository="aws", snapshot="abcd1234", target=f"{existing}/"
    )
    assert reply == {
        "ok": True,
        "request": "r00000001",
        "accepted": "restore-snapshot",
        "target_existed": True,
    }
    ((job, _, _),) = master.one_offs
    made = Path(job["target"])
    assert made.parent == existing
    assert re.fullmatch(r"aws-abcd1234-\d{8}-\d{6}", made.name)
    assert (made.is_dir(), made.is_symlink(), os.listdir(made)) == (True, False, [])
    assert made.stat().st_mode & 0o7777 == 0o700
    assert job["target_existed"] is True


def restore_into(master: Any, target: Path) -> Any:
    return ask(master, "restore-snapshot", repository="aws", snapshot="ab12", target=str(target))


def test_a_target_through_a_symbolic_link_is_refused(master: Any, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for target in (tmp_path / "link", tmp_path / "link" / "deeper"):
        reply = ask(
            master, "restore-snapshot", repository="aws", snapshot="ab12", target=str(target)
        )
        assert reply == usage(
            f"--target: {tmp_path / 'link'} is a symbolic link or not a directory: a restore"
            " never follows links; give the real path of a directory"
        )
    assert (master.one_offs, os.listdir(tmp_path / "real")) == ([], [])


@pytest.mark.parametrize(
    ("owner", "mode", "who"),
    [(1000, 0o755, "uid 1000"), (0, 0o777, "everyone"), (0, 0o775, "group 100")],
)
def test_a_target_someone_else_may_change_is_refused(
    master: Any, tmp_path: Path, owner: int, mode: int, who: str
) -> None:
    """They could move the restore's directory away and put a link in its place."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, owner, 100)
    theirs.chmod(mode)
    for target in (theirs, theirs / "below"):
        reply = ask(
            master, "restore-snapshot", repository="aws", snapshot="ab12", target=str(target)
        )
        assert reply == usage(
            f"--target: {theirs} can be changed by {who}, who could redirect the restore:"
            " restore into a directory only root can change (the default, or another --target)"
        )
    assert (master.one_offs, os.listdir(theirs)) == ([], [])


def test_a_sticky_directory_of_roots_may_hold_the_target(master: Any, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp: others add entries, but cannot move root's
    reply = ask(master, "restore-snapshot", repository="aws", snapshot="abcd", target=str(shared))
    assert reply == {
        "ok": True,
        "request": "r00000001",
        "accepted": "restore-snapshot",
        "target_existed": True,
    }
    ((job, _, _),) = master.one_offs
    assert Path(job["target"]).parent == shared


def test_the_default_target_is_a_new_directory_under_the_state_directory(
    master: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    formats = []

    def strftime(form: str) -> str:
        formats.append(form)
        return "20240309-160000"

    monkeypatch.setattr(restore, "time", SimpleNamespace(strftime=strftime))
    ask(master, "restore-snapshot", repository="aws", snapshot="abcd1234ef")
    ask(master, "restore-snapshot", repository="aws", snapshot="abcd1234ef")  # same second
    restores = master.state_dir / "restores"
    targets = [job["target"] for job, _, _ in master.one_offs]
    assert targets == [
        str(restores / "aws-abcd1234-20240309-160000"),
        str(restores / "aws-abcd1234-20240309-160000-2"),
    ]
    assert all(Path(target).is_dir() for target in targets)  # made, so that none is shared
    assert (restores.stat().st_mode & 0o777) == 0o700
    assert formats == ["%Y%m%d-%H%M%S"] * 2
    assert [wait for _, _, wait in master.one_offs] == [False, False]


@pytest.mark.parametrize("snapshot", ["", "abcd/../x", "ab cd", "-h", "abcd1234*", "abc"])
def test_a_snapshot_id_is_four_letters_or_digits_or_more(master: Any, snapshot) -> None:
    reply = ask(master, "restore-snapshot", repository="aws", snapshot=snapshot)
    shown = repr(snapshot)
    assert reply == usage(
        f"{shown} is not a snapshot id: give at least its first 4 characters"
        " (see henbackupctl list-snapshots aws)"
    )
    assert master.one_offs == []


# --- check, prune, list-snapshots -------------------------------------------------------


@pytest.mark.parametrize(
    ("subset", "why"),
    [
        ("200%", "too large: use at most 100%"),
        ("0%", "too small: a percentage must be more than 0%"),
        ("0/5", f"not a fraction n/m with 1 <= n <= m: {SUBSET_HINT}"),
        ("6/5", f"not a fraction n/m with 1 <= n <= m: {SUBSET_HINT}"),
        ("lots", f"not a data subset: {SUBSET_HINT}"),
        ("0M", f"not a data subset: {SUBSET_HINT}"),
    ],
)
def test_an_invalid_read_data_subset_is_a_usage_error(master: Any, subset, why) -> None:
    reply = ask(master, "check", repository="aws", read_data_subset=subset)
    assert reply == usage(f"--read-data-subset {subset!r}: {why}")
    assert master.one_offs == []


@pytest.mark.parametrize("subset", ["5%", "100%", "1/10", "500M", "2G", "1024"])
def test_a_check_runs_in_a_job_process_of_its_own(master: Any, subset) -> None:
    conversation = Conversation()
    request = {
        "command": "check",
        "repository": "aws",
        "read_data_subset": subset,
        "priority": "on-idle",
        "wait": True,
    }
    assert answer(master, request, conversation) is None
    assert master.one_offs == [
        (
            {
                "command": "check",
                "repository": "aws",
                "priority": "on-idle",
                "read_data_subset": subset,
            },
            conversation,
            True,
        )
    ]


def test_a_prune_without_waiting_is_accepted_at_once(master: Any) -> None:
    reply = ask(master, "prune", repository="nas", priority=None)
    assert reply == {"ok": True, "request": "r00000001", "accepted": "prune"}
    ((job, _, wait),) = master.one_offs
    assert (job, wait) == ({"command": "prune", "repository": "nas", "priority": None}, False)


@pytest.mark.parametrize(
    ("fields", "repositories", "backup"),
    [
        ({}, ["aws", "local", "nas"], None),
        ({"backup": "pictures"}, ["local", "aws"], "pictures"),
        ({"repository": "nas"}, ["nas"], None),
        ({"repository": "nas", "backup": "pictures"}, ["nas"], "pictures"),
    ],
)
def test_list_snapshots_names_its_repositories(master: Any, fields, repositories, backup) -> None:
    assert ask(master, "list-snapshots", **fields) is None  # it always waits
    ((job, _, wait),) = master.one_offs
    assert job == {"command": "list-snapshots", "repositories": repositories, "backup": backup}
    assert wait is True


# --- a stopping master ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "fields"),
    [
        ("backup", {"backup": "pictures"}),
        ("list-snapshots", {}),
        ("restore-snapshot", {"repository": "aws", "snapshot": "abcd1234"}),
        ("check", {"repository": "aws"}),
        ("prune", {"repository": "aws"}),
        ("cancel", {"job": "j1"}),
    ],
)
def test_a_stopping_master_starts_nothing_new(master: Any, command, fields) -> None:
    channel = Channel()
    master.children["backup:pictures"] = worker(State.STOPPING, channel=channel)
    master.stopping = True
    assert ask(master, command, **fields) == STOPPING
    assert (channel.sent, master.one_offs) == ([], [])


def test_a_stopping_master_still_answers_status_and_queue(master: Any) -> None:
    master.stopping = True
    master.status_line = lambda: "2 backups; stopping; idle"
    reply = ask(master, "status")
    assert (reply["ok"], reply["status"]) == (True, "2 backups; stopping; idle")
    assert [b["name"] for b in reply["backups"]] == ["music", "pictures"]
    assert ask(master, "queue") == {"ok": True, "jobs": []}


# --- status and queue ---------------------------------------------------------------------


def idle_row(repository: str, **fields: Any) -> dict[str, Any]:
    row = {
        "repository": repository,
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
    }
    return {**row, **fields}


def test_status_shows_every_backup_and_repository(master: Any) -> None:
    master.children["backup:pictures"] = worker(running=True, next_run=1_800_000_000.0)
    master.children["repository:aws"] = worker(State.BACKOFF)
    model = master.model
    pictures_aws = {"backup": "pictures", "repository": "aws", "operation": "backup"}
    model.apply("job.started", {"job": "j1", **pictures_aws}, "backup:pictures")
    model.apply("job.progress", {"job": "j1", **pictures_aws, "percent": 42}, "backup:pictures")
    pictures_local = {**pictures_aws, "repository": "local"}
    model.apply("job.queued", {"job": "j2", **pictures_local, "position": 5}, "backup:pictures")
    master.scheduler.set_slots(1)
    holder = master.scheduler.submit(Ticket("other", "nas", Priority.ordinary(0)))
    waiting = master.scheduler.submit(Ticket("j2", "local", Priority.ordinary(0)))
    nas_prune = {"repository": "nas", "operation": "prune"}
    model.apply("job.started", {"job": "p1", **nas_prune}, "r1")
    model.apply("job.failed", {"job": "p1", **nas_prune, "error": "locked"}, "r1")
    prune_record = model.records[RunKey("nas", "prune")]
    try:
        reply = ask(master, "status")
    finally:
        waiting.cancel()
        holder.grant.release()
    assert reply == {
        "ok": True,
        "status": "2 backups; idle",
        "daemon": {"pid": os.getpid(), "config": str(master.config_path)},
        "backups": [
            {
                "name": "music",
                "worker": None,
                "run": "idle",
                "next_run": None,
                "repositories": [idle_row("nas")],
            },
            {
                "name": "pictures",
                "worker": "running",
                "run": "running",
                "next_run": 1_800_000_000.0,
                "repositories": [
                    idle_row("local", state="queued", job="j2", position=1),
                    idle_row("aws", state="running", job="j1", percent=42.0),
                ],
            },
        ],
        "repositories": [
            {
                "name": "aws",
                "worker": "backoff",
                "run": "idle",
                "next_run": None,
                "operations": [{"operation": "check", **idle_row("aws")}],
            },
            {"name": "local", "worker": None, "run": "idle", "next_run": None, "operations": []},
            {
                "name": "nas",
                "worker": None,
                "run": "idle",
                "next_run": None,
                "operations": [
                    {
                        "operation": "prune",
                        **idle_row(
                            "nas",
                            last_attempt=prune_record.last.started,
                            result="failed",
                            error="locked",
                        ),
                    }
                ],
            },
        ],
    }


def test_queue_lists_running_then_waiting_jobs_with_positions(master: Any) -> None:
    scheduler = master.scheduler
    scheduler.set_slots(1)
    running = scheduler.submit(Ticket("j0", "aws", Priority.ordinary(0), backup="pictures"))
    low = scheduler.submit(Ticket("j1", "nas", Priority.ordinary(-3), backup="music"))
    check = Ticket("c1", "aws", Priority(Priority.NEXT_BAND), "exclusive", "check")
    first = scheduler.submit(check)
    j0 = {"job": "j0", "backup": "pictures", "repository": "aws", "operation": "backup"}
    master.model.apply("job.started", j0, "backup:pictures")
    master.model.apply("job.progress", {**j0, "percent": "12.5"}, "backup:pictures")
    try:
        reply = ask(master, "queue")
        tickets = {t.job_id: t for t in scheduler.queue()}
    finally:
        first.cancel()
        low.cancel()
        running.grant.release()
    pid = os.getpid()
    assert reply == {
        "ok": True,
        "jobs": [
            {
                "job": "j0",
                "state": "running",
                "position": None,
                "operation": "backup",
                "backup": "pictures",
                "repository": "aws",
                "priority": "normal",
                "pid": pid,
                "queued_at": tickets["j0"].queued_at,
                "percent": 12.5,
            },
            {
                "job": "c1",
                "state": "waiting",
                "position": 1,
                "operation": "check",
                "backup": None,
                "repository": "aws",
                "priority": "next",
                "pid": pid,
                "queued_at": tickets["c1"].queued_at,
                "percent": None,
            },
            {
                "job": "j1",
                "state": "waiting",
                "position": 2,
                "operation": "backup",
                "backup": "music",
                "repository": "nas",
                "priority": "-3",
                "pid": pid,
                "queued_at": tickets["j1"].queued_at,
                "percent": None,
            },
        ],
    }
    assert all(ticket.queued_at > 0 for ticket in tickets.values())


# --- cancel -----------------------------------------------------------------------------


@pytest.mark.parametrize("job", ["j-nope", "../tickets", ""])
def test_cancelling_an_unknown_job_is_a_usage_error(master: Any, job: str) -> None:
    assert ask(master, "cancel", job=job) == usage(
        f"no job {job!r} is waiting or running (see henbackupctl queue)"
    )


def test_cancelling_a_waiting_job_withdraws_its_ticket(master: Any) -> None:
    scheduler = master.scheduler
    scheduler.set_slots(1)
    holder = scheduler.submit(Ticket("j0", "aws", Priority.ordinary(0)))
    waiter = scheduler.submit(Ticket("j1", "aws", Priority.ordinary(0)))
    assert waiter.grant is None
    try:
        assert ask(master, "cancel", job="j1") == {"ok": True, "job": "j1", "was": "waiting"}
        assert [t.job_id for t in scheduler.queue()] == ["j0"]
        with pytest.raises(JobCancelled):
            waiter.wait(timeout=5)
        assert scheduler.cancel_requested(os.getpid()) is None  # withdrawn, not marked
        assert ask(master, "cancel", job="j1") == usage(
            "no job 'j1' is waiting or running (see henbackupctl queue)"
        )
    finally:
        waiter.cancel()
        holder.grant.release()


def test_cancelling_a_running_job_marks_it_and_signals_its_process(master: Any) -> None:
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda number, _: received.append(number))
    holder = master.scheduler.submit(Ticket("j0", "aws", Priority.ordinary(0)))
    try:
        assert holder.grant is not None
        assert ask(master, "cancel", job="j0") == {"ok": True, "job": "j0", "was": "running"}
        assert received == [signal.SIGUSR1]  # the ticket's pid: this process
        assert master.scheduler.cancel_requested(os.getpid()) == "j0"
    finally:
        holder.grant.release()
        signal.signal(signal.SIGUSR1, previous)


def test_cancel_without_a_scheduler_knows_no_job(master: Any) -> None:
    master.scheduler = None
    assert ask(master, "cancel", job="j0") == usage(
        "no job 'j0' is waiting or running (see henbackupctl queue)"
    )
    assert ask(master, "queue") == {"ok": True, "jobs": []}


def test_the_config_is_what_the_tests_think(master: Any) -> None:
    """The fixture's premise: names and order as the messages above show them."""
    config = master.config
    assert sorted(config.backups) == ["music", "pictures"]
    assert list(config.backups["pictures"].repositories) == ["local", "aws"]
    assert sorted(config.repositories) == ["aws", "local", "nas"]
    assert config.repositories["aws"].check is not None
    assert config.repositories["nas"].prune is None


# --- what cannot be done now costs the request only ----------------------------------------


def test_a_restore_with_nowhere_to_make_its_directory_fails_alone(master: Any) -> None:
    (master.state_dir.parent / "file").write_text("")
    master.state_dir = master.state_dir.parent / "file" / "state"  # mkdir: NotADirectoryError
    reply = ask(master, "restore-snapshot", repository="aws", snapshot="abcd1234")
    assert reply == {
        "ok": False,
        "code": "failed",
        "error": f"{master.state_dir.parent} is a symbolic link or not a directory:"
        " a restore never follows links; give the real path of a directory: use --target",
    }
    assert master.one_offs == []


@pytest.fixture
def queue_lock_held(master: Any):
    """The queue's lock, held through another open file, as another process holds it."""
    fd = locks.try_lock(master.scheduler.directory / "lock", locks.EXCLUSIVE)
    assert fd is not None
    yield lambda: os.close(fd)
    with contextlib.suppress(OSError):
        os.close(fd)


@pytest.mark.timeout(20)  # before: status and queue waited for the lock forever
def test_status_and_queue_answer_while_another_process_holds_the_queue(
    master: Any, queue_lock_held
) -> None:
    assert ask(master, "queue") == {"ok": True, "jobs": []}
    assert ask(master, "status")["ok"] is True


@pytest.mark.timeout(20)
def test_a_cancel_while_another_process_holds_the_queue_is_answered_once_it_is_free(
    master: Any, queue_lock_held
) -> None:
    conversation = Conversation()
    assert answer(master, {"command": "cancel", "job": "j1"}, conversation) is None
    master.loop.run_once()  # tries again: still held
    assert conversation.sent == []
    queue_lock_held()  # released
    while not conversation.sent:
        master.loop.run_once()
    assert conversation.sent == [
        usage("no job 'j1' is waiting or running (see henbackupctl queue)")
    ]


@pytest.mark.timeout(20)
def test_a_cancel_gives_up_when_the_queue_stays_held(
    master: Any, queue_lock_held, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "CANCEL_PATIENCE", 0.2)
    conversation = Conversation()
    assert answer(master, {"command": "cancel", "job": "j1"}, conversation) is None
    while not conversation.sent:
        master.loop.run_once()
    assert conversation.sent == [
        {
            "ok": False,
            "code": "failed",
            "error": "another process has held the job queue's lock for 0.2s: try again",
        }
    ]


# --- who may do what --------------------------------------------------------------------

OPERATOR_MAY = "status, queue, list-snapshots, backup, check, cancel"


@pytest.fixture
def group_henbackup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Group henbackup exists, with MEMBER_GID."""

    def getgrnam(name: str) -> Any:
        if name != "henbackup":
            raise KeyError(name)
        return SimpleNamespace(gr_gid=MEMBER_GID)

    monkeypatch.setattr(permissions, "grp", SimpleNamespace(getgrnam=getgrnam))


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
