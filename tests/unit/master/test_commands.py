"""The master's answers to henbackupctl, checked without a real master: a stand-in with a
real config, status model, scheduler and clients, and a start_one_off that only records."""

from __future__ import annotations

import ast
import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from henbackup.channel import StartRun
from henbackup.config.model import Priority
from henbackup.errors import JobCancelled
from henbackup.master import commands
from henbackup.master.states import ChildState
from henbackup.observe.status import RunKey
from henbackup.scheduler import Ticket, locks
from henbackup.status_rows import StatusRow, member_schemas

from .stand_in import (
    PRIORITY_HINT,
    STOPPING,
    SUBSET_HINT,
    Channel,
    Conversation,
    answer,
    ask,
    tell_model,
    usage,
    worker,
)

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
    assert channel.sent == [StartRun("backup", "aws", "next", (reply["request"],))]
    assert master.clients.waiting == {}
    assert master.one_offs == []


def test_a_backup_with_an_integer_priority_sends_it_as_text(master: Any) -> None:
    channel = Channel()
    master.children["backup:pictures"] = worker(channel=channel)
    ask(master, "backup", backup="pictures", priority=-3)
    assert (channel.sent[0].repository, channel.sent[0].priority) == (None, "-3")


def test_a_priority_too_big_for_the_worker_is_a_usage_error(master: Any) -> None:
    # Sent on as text, it would be refused by the worker's parse, which ended the worker.
    channel = Channel()
    master.children["backup:pictures"] = worker(channel=channel)
    reply = ask(master, "backup", backup="pictures", priority=10**19)
    assert reply == usage(
        "--priority 10000000000000000000: out of range: use an integer from -1000000 to 1000000"
    )
    assert channel.sent == []


def test_a_client_waiting_for_its_backup_is_answered_later(master: Any) -> None:
    channel = Channel()
    master.children["backup:pictures"] = worker(channel=channel)
    conversation = Conversation()
    request = {"command": "backup", "backup": "pictures", "wait": True}
    assert answer(master, request, conversation) is None
    (sent,) = channel.sent
    (request_id,) = sent.requests
    waiting = master.clients.waiting[request_id]
    assert (waiting.conversation, waiting.owner) == (conversation, "backup:pictures")


@pytest.mark.parametrize(
    ("supervised", "state"),
    [
        (None, "absent"),
        (worker(ChildState.BACKOFF), "backoff"),
        (worker(ChildState.FATAL), "fatal"),
    ],
)
def test_a_backup_whose_worker_cannot_take_it_fails(master: Any, supervised, state) -> None:
    if supervised is not None:
        master.children["backup:pictures"] = supervised
    assert ask(master, "backup", backup="pictures") == {
        "ok": False,
        "code": "failed",
        "error": f"backup pictures cannot start now: its worker is {state}",
    }


def test_a_backup_whose_worker_left_a_megabyte_unread_fails_and_no_client_waits(
    master: Any,
) -> None:
    """Watched.send refuses once a worker (hung, stopped) left MAX_UNREAD unread."""
    master.children["backup:pictures"] = worker(channel=Channel())
    master.children["backup:pictures"].send = lambda message: False
    request = {"command": "backup", "backup": "pictures", "wait": True}
    assert answer(master, request, Conversation()) == {
        "ok": False,
        "code": "failed",
        "error": "backup pictures cannot start now: its worker does not read",
    }
    assert master.clients.waiting == {}


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
    master.children["backup:pictures"] = worker(ChildState.STOPPING, channel=channel)
    master.stopping = True
    assert ask(master, command, **fields) == STOPPING
    assert (channel.sent, master.one_offs) == ([], [])


def test_a_stopping_master_still_answers_status_and_queue(master: Any) -> None:
    master.stopping = True
    master.children = {
        f"backup:{name}": worker(ChildState.STOPPING) for name in ("music", "pictures")
    }
    tell_model(master)
    reply = ask(master, "status")
    assert (reply["ok"], reply["status"]) == (True, "2 backups; stopping; idle")
    assert [b["name"] for b in reply["backups"]] == ["music", "pictures"]
    assert ask(master, "queue") == {"ok": True, "jobs": []}


# --- status and queue ---------------------------------------------------------------------


def idle_row(repository: str, **fields: Any) -> dict[str, Any]:
    """A row of the members StatusRow declares, null unless given."""
    members = dict.fromkeys(member_schemas(StatusRow))
    return {**members, "repository": repository, "state": "idle", **fields}


def test_status_shows_every_backup_and_repository(master: Any) -> None:
    master.children["backup:pictures"] = worker(running=True, next_run=1_800_000_000.0)
    master.children["repository:aws"] = worker(ChildState.BACKOFF)
    tell_model(master)
    model = master.model
    pictures_aws = {"backup": "pictures", "repository": "aws", "operation": "backup"}
    model.apply("job.started", {"job": "j1", **pictures_aws}, "backup:pictures")
    transfer = {
        "bytes_done": 2**30,
        "total_bytes": 2**31,
        "bytes_sent": 2**20,
        "send_rate": 150_000,
        "seconds_remaining": 600,
    }
    progress = {"job": "j1", **pictures_aws, "percent": 42, **transfer}
    model.apply("job.progress", progress, "backup:pictures")
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
    assert reply["status"].startswith("1 backup; running: pictures→aws 42%; queued: 1; next: ")
    rows = [row for backup in reply["backups"] for row in backup["repositories"]]
    assert {tuple(row) for row in rows} == {tuple(member_schemas(StatusRow))}  # their order
    assert reply == {
        "ok": True,
        "status": model.status_line(),
        "daemon": {
            "pid": os.getpid(),
            "config": str(master.config_path),
            "watcher": None,
            "config_rejected": None,
        },
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
                    idle_row("aws", state="running", job="j1", percent=42.0, **transfer),
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
    tickets = {t.job_id: t for t in scheduler.queue()}
    # Events as the job processes send them; c1's process is outside the daemon: no event.
    pid = os.getpid()
    j0 = {"job": "j0", "backup": "pictures", "repository": "aws", "operation": "backup"}
    master.model.apply("job.started", {**j0, "pid": pid}, "backup:pictures")
    master.model.apply("job.progress", {**j0, "percent": "12.5"}, "backup:pictures")
    j1 = {"job": "j1", "backup": "music", "repository": "nas", "operation": "backup"}
    stamped = {"pid": pid, "sequence": tickets["j1"].sequence, "priority": -3}
    queued = {**j1, **stamped, "queued_at": tickets["j1"].queued_at, "position": 1}
    master.model.apply("job.queued", queued, "backup:music")
    try:
        reply = ask(master, "queue")
        again = ask(master, "queue")
    finally:
        first.cancel()
        low.cancel()
        running.grant.release()
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
                "queued_at": master.model.live["j0"].since,  # granted at once: its start
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
    assert again == reply  # the model is read, not changed


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
        assert master.resumed == ["j0"]  # if paused (preempted), it goes on to act on it
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


def test_status_and_queue_are_read_from_the_model_and_change_nothing_in_the_queue(
    master: Any,
) -> None:
    """A dead process's ticket is skipped, not dropped: dropping it is a change of the
    queue, for the processes that hold its lock (the next job to arrive or leave)."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    ticket = Ticket("dead", "aws", Priority.ordinary(0), pid=gone.pid, start_time=1, sequence=1)
    path = master.scheduler.directory / "tickets" / "dead"
    path.write_bytes(ticket.to_json())
    master.model.apply(
        "job.queued",
        {"job": "j2", "backup": "pictures", "repository": "local", "operation": "backup"}
        | {"pid": os.getpid(), "sequence": 2, "queued_at": 5.0, "position": 2},
        "backup:pictures",
    )
    (row,) = ask(master, "queue")["jobs"]
    assert (row["job"], row["state"], row["position"], row["queued_at"]) == (
        "j2",
        "waiting",
        1,
        5.0,
    )
    (_, pictures) = ask(master, "status")["backups"]
    local = pictures["repositories"][0]
    assert (local["repository"], local["state"], local["position"]) == ("local", "queued", 1)
    assert path.read_bytes() == ticket.to_json()


def test_status_and_queue_answer_when_the_queue_cannot_be_read(master: Any) -> None:
    """The daemon's own jobs are known from their events: a queue directory that is not
    one costs the tickets of outsiders only."""
    tickets = master.scheduler.directory / "tickets"
    tickets.rmdir()
    tickets.write_text("")  # scandir: NotADirectoryError
    master.model.apply(
        "job.started",
        {"job": "j1", "backup": "pictures", "repository": "aws", "operation": "backup"},
        "backup:pictures",
    )
    assert [row["job"] for row in ask(master, "queue")["jobs"]] == ["j1"]
    (_, pictures) = ask(master, "status")["backups"]
    assert [row["state"] for row in pictures["repositories"]] == ["idle", "running"]


def test_commands_need_no_supervisor() -> None:
    """master/supervisor.py imports the commands; they must not import it back."""
    tree = ast.parse(Path(commands.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "henbackup.master.supervisor" not in imported


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
