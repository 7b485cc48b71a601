"""The status model: job events in, live jobs and run records out, results kept in a file."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from types import SimpleNamespace

import pytest

from henbackup.config.model import Priority
from henbackup.observe import metrics, status
from henbackup.observe.status import (
    LastRun,
    LiveJob,
    RunHistory,
    RunKey,
    StatusModel,
    WorkerView,
)
from henbackup.scheduler.ticket import Ticket

PICTURES_AWS = {"backup": "pictures", "repository": "aws", "operation": "backup"}
KEY = RunKey("aws", "backup", "pictures")
OWNER = "backup:pictures"


class Clock:
    """The model's time.time(), set by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(1000.0)
    monkeypatch.setattr(status, "time", SimpleNamespace(time=fake.time))
    return fake


@pytest.fixture
def model(clock: Clock) -> StatusModel:
    return StatusModel()


def job(job_id: str = "j1", **fields: object) -> dict[str, object]:
    return {"job": job_id, **PICTURES_AWS, **fields}


def test_a_queued_job_is_live_and_waiting(model: StatusModel) -> None:
    fields = job(trigger="manual", priority="10", position="2")
    assert model.apply("job.queued", fields, OWNER) is None
    queued = LiveJob("j1", KEY, OWNER, "queued", 1000.0, trigger="manual", priority=10, position=2)
    assert model.live == {"j1": queued}
    assert model.waiting() == [queued]
    assert model.running() == []
    assert model.jobs_of(KEY) == [queued]
    assert model.jobs_of(RunKey("aws", "backup", "music")) == []
    assert model.records == {}
    assert queued.title == "pictures→aws"
    assert LiveJob("j", RunKey("aws", "check"), "o", "queued", 0).title == "check aws"


def test_a_started_job_runs_since_its_start_without_a_position(
    model: StatusModel, clock: Clock
) -> None:
    model.apply("job.queued", job(trigger="watch", priority="0", position="1"), OWNER)
    clock.now = 1005.0
    model.apply("job.started", job(trigger="watch", priority="-10", position="1"), OWNER)
    running = LiveJob("j1", KEY, OWNER, "running", 1005.0, trigger="watch", priority=-10)
    assert model.live == {"j1": running}
    assert model.running() == [running]
    assert model.waiting() == []


def test_progress_updates_the_running_job_and_keeps_its_start(
    model: StatusModel, clock: Clock
) -> None:
    model.apply("job.started", job(trigger="schedule"), OWNER)
    clock.now = 1030.0
    progress = job(percent="42.5", bytes_done=100, total_bytes="1000", seconds_remaining="12")
    assert model.apply("job.progress", progress, OWNER) is None
    assert model.live["j1"] == LiveJob(
        "j1",
        KEY,
        OWNER,
        "running",
        1000.0,
        trigger="schedule",
        percent=42.5,
        bytes_done=100,
        total_bytes=1000,
        seconds_remaining=12.0,
    )
    model.apply("job.progress", job(percent=50, bytes_done="500"), OWNER)  # no ETA any more
    assert model.live["j1"] == LiveJob(
        "j1", KEY, OWNER, "running", 1000.0, trigger="schedule", percent=50.0, bytes_done=500
    )


@pytest.mark.parametrize("kind", ["job.warning", "job.stalled", "job.started"])
def test_a_warning_or_stall_mid_run_keeps_its_start_and_progress(
    model: StatusModel, clock: Clock, kind: str
) -> None:
    """What a run said on its way changes neither when it started nor how far it got, so the
    recorded run keeps its real start."""
    model.apply("job.started", job(trigger="schedule"), OWNER)
    clock.now = 1030.0
    model.apply("job.progress", job(percent="40", bytes_done="400"), OWNER)
    clock.now = 1090.0
    model.apply(kind, job(error="no progress for 1m"), OWNER)
    assert model.live["j1"] == LiveJob(
        "j1",
        KEY,
        OWNER,
        "running",
        1000.0,
        trigger="schedule",
        percent=40.0,
        bytes_done=400,
        stalled=kind == "job.stalled",
    )
    clock.now = 1100.0
    model.apply("job.succeeded", job(duration_sec="100"), OWNER)
    assert model.records[KEY].last.started == 1000.0


def test_a_paused_job_runs_on_shows_paused_and_keeps_its_start_until_resumed(
    model: StatusModel, clock: Clock
) -> None:
    model.daemon_changed([("backup:pictures", WorkerView("pictures", "backup", "running"))], False)
    model.apply("job.started", job(trigger="schedule"), OWNER)
    model.apply("job.progress", job(percent="40", bytes_done="400"), OWNER)
    clock.now = 1030.0
    model.apply("job.paused", job(paused_for="j2", paused_how="SIGSTOP"), OWNER)
    paused = LiveJob(
        "j1", KEY, OWNER, "running", 1000.0, "schedule", percent=40.0, bytes_done=400, paused=True
    )
    assert model.live == {"j1": paused}
    assert model.status_line() == "1 backup; running: pictures→aws 40% (paused)"
    model.apply("job.resumed", job(paused_sec="20"), OWNER)
    assert model.live == {"j1": replace(paused, paused=False)}
    assert model.status_line() == "1 backup; running: pictures→aws 40%"


def test_progress_of_a_job_never_seen_makes_it_running_from_now(
    model: StatusModel, clock: Clock
) -> None:
    clock.now = 1200.0
    model.apply("job.progress", job("j9", percent="10", trigger="manual"), "r1234")
    assert model.live == {"j9": LiveJob("j9", KEY, "r1234", "running", 1200.0, trigger="manual")}


def test_success_records_the_run_and_ends_the_live_job(model: StatusModel, clock: Clock) -> None:
    model.apply("job.started", job(trigger="manual", priority="10"), OWNER)
    model.apply("job.progress", job(percent="99"), OWNER)
    clock.now = 1060.5
    ended = model.apply(
        "job.succeeded",
        job(duration_sec="60.5", snapshot="abcd1234", bytes_added="2048", snapshots="3"),
        OWNER,
    )
    assert ended == LiveJob(
        "j1", KEY, OWNER, "running", 1000.0, trigger="manual", priority=10, percent=99.0
    )
    assert model.live == {}
    assert model.records == {
        KEY: RunHistory(
            last=LastRun(1000.0, "succeeded", 60.5, None, "abcd1234", "j1"),
            last_success=1000.0,
            runs={"succeeded": 1},
            bytes_added=2048,
            snapshots=3,
        )
    }


def test_a_failure_keeps_the_last_success_and_counts_by_result(
    model: StatusModel, clock: Clock
) -> None:
    model.apply("job.started", job("j1"), OWNER)
    model.apply("job.succeeded", job("j1", duration_sec=3, bytes_added=10, snapshot="s1"), OWNER)
    clock.now = 2000.0
    model.apply("job.started", job("j2"), OWNER)
    clock.now = 2010.0
    ended = model.apply(
        "job.failed", job("j2", duration_sec="10", error="repository locked", bytes_added=5), OWNER
    )
    assert ended is not None and ended.job == "j2"
    assert model.records[KEY] == RunHistory(
        last=LastRun(2000.0, "failed", 10.0, "repository locked", None, "j2"),
        last_success=1000.0,
        runs={"succeeded": 1, "failed": 1},
        bytes_added=15,
        snapshots=None,
    )
    model.apply("job.started", job("j3"), OWNER)
    model.apply("job.failed", job("j3", error=""), OWNER)  # an empty error is no error
    assert model.records[KEY].last == LastRun(2010.0, "failed", None, None, None, "j3")
    assert model.records[KEY].runs == {"succeeded": 1, "failed": 2}


def test_a_job_cancelled_while_queued_counts_from_its_cancellation(
    model: StatusModel, clock: Clock
) -> None:
    model.apply("job.queued", job(position=1), OWNER)
    clock.now = 1500.0
    ended = model.apply("job.cancelled", job(error="cancelled"), OWNER)
    assert ended == LiveJob("j1", KEY, OWNER, "queued", 1000.0, position=1)
    assert model.live == {}
    assert model.records[KEY] == RunHistory(
        last=LastRun(1500.0, "cancelled", None, "cancelled", None, "j1"),
        last_success=None,
        runs={"cancelled": 1},
    )


def test_the_end_of_a_job_never_seen_is_recorded_from_now(model: StatusModel, clock: Clock) -> None:
    clock.now = 3000.0
    ended = model.apply("job.succeeded", job("j7", trigger="startup"), "backup:pictures")
    assert ended == LiveJob("j7", KEY, OWNER, "running", 3000.0, trigger="startup")
    assert model.records[KEY] == RunHistory(
        last=LastRun(3000.0, "succeeded", job="j7"), last_success=3000.0, runs={"succeeded": 1}
    )


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("hook.started", job()),  # not a job event
        ("trigger.fired", job()),
        ("job.started", PICTURES_AWS),  # no job id
        ("job.succeeded", {**PICTURES_AWS, "job": ""}),
    ],
)
def test_other_events_change_nothing(model: StatusModel, kind: str, fields: dict) -> None:
    assert model.apply(kind, fields, OWNER) is None
    assert (model.live, model.records) == ({}, {})


def test_a_repository_operation_has_no_backup_in_its_key(model: StatusModel) -> None:
    model.apply("job.started", {"job": "c1", "repository": "aws", "operation": "check"}, "r:aws")
    assert model.live["c1"].key == RunKey("aws", "check", "")
    assert model.live["c1"].title == "check aws"


def test_owner_gone_forgets_and_returns_that_owners_jobs_only(model: StatusModel) -> None:
    model.apply("job.started", job("a"), "backup:pictures")
    model.apply("job.queued", job("b"), "backup:pictures")
    model.apply("job.started", job("c", backup="music"), "backup:music")
    gone = model.owner_gone("backup:pictures")
    assert [(j.job, j.state) for j in gone] == [("a", "running"), ("b", "queued")]
    assert list(model.live) == ["c"]
    assert model.records == {}  # not results: the master reports them as failed itself
    assert model.owner_gone("backup:pictures") == []
    assert model.owner_gone("nobody") == []


def queued(job_id: str, sequence: int, priority: int = 0, **fields: object) -> dict:
    """A job.queued event's fields as a job process sends them."""
    stamped = {"pid": 4000 + sequence, "sequence": sequence, "queued_at": 100.0 + sequence}
    return job(job_id, priority=priority, position=1, **stamped, **fields)


def test_the_queue_is_in_the_order_of_priorities_then_arrivals(model: StatusModel) -> None:
    """Whatever order the events come in (from several processes), and whatever position
    each job was told when it arrived."""
    model.apply("job.queued", queued("late", 7), OWNER)
    model.apply("job.queued", queued("early", 5), OWNER)
    model.apply("job.queued", queued("next", 9, priority=2**31 - 2), "r1")
    model.apply("job.started", job("run", pid=77), OWNER)
    rows = [(j.job, j.state, j.position, j.pid, j.queued_at) for j in model.queue()]
    assert rows == [
        ("run", "running", None, 77, None),
        ("next", "queued", 1, 4009, 109.0),
        ("early", "queued", 2, 4005, 105.0),
        ("late", "queued", 3, 4007, 107.0),
    ]
    assert [j.position for j in model.live.values()] == [1, 1, 1, None]  # read, not changed


def test_a_started_job_keeps_what_its_ticket_said(model: StatusModel, clock: Clock) -> None:
    model.apply("job.queued", queued("j1", 3), OWNER)
    clock.now = 1050.0
    model.apply("job.started", job("j1", pid=4003), OWNER)
    started = model.live["j1"]
    assert (started.state, started.since, started.pid) == ("running", 1050.0, 4003)
    assert (started.queued_at, started.sequence) == (103.0, 3)


def test_tickets_of_processes_outside_the_daemon_take_their_places(model: StatusModel) -> None:
    """A `henbackup backup` run by hand sends the master no event: its tickets come from the
    queue's files, and those of jobs the model knows are not shown twice."""
    model.apply("job.queued", queued("mine", 5), OWNER)
    outsiders = [
        Ticket("held", "nas", Priority.ordinary(0), pid=9, sequence=1, state="running"),
        Ticket("before", "nas", Priority.ordinary(0), pid=9, sequence=4, queued_at=104.0),
        Ticket("mine", "aws", Priority.ordinary(0), pid=4005, sequence=5, queued_at=105.0),
        Ticket(
            "after", "nas", Priority.ordinary(0), sequence=6, backup="music", operation="backup"
        ),
    ]
    rows = [(j.job, j.position, j.owner, j.key) for j in model.queue(outsiders)]
    assert rows == [
        ("held", None, "", RunKey("nas", "backup")),
        ("before", 1, "", RunKey("nas", "backup")),
        ("mine", 2, OWNER, KEY),
        ("after", 3, "", RunKey("nas", "backup", "music")),
    ]


def test_a_forget_shows_in_the_queue_under_its_backups_ticket(model: StatusModel) -> None:
    """It runs under the backup's ticket: the id `henbackupctl cancel` takes."""
    model.apply("job.started", job("b1"), OWNER)
    model.apply("job.succeeded", job("b1"), OWNER)
    model.apply("job.started", job("f1", operation="forget", ticket="b1"), OWNER)
    (forget,) = model.queue([Ticket("b1", "aws", Priority.ordinary(0), state="running")])
    assert (forget.job, forget.ticket_id, forget.key.operation) == ("f1", "b1", "forget")


def test_a_stall_is_shown_until_the_run_makes_progress_again(model: StatusModel) -> None:
    """A stalled restic goes on printing its status: a report that moved no byte is no
    progress."""
    model.apply("job.started", job(), OWNER)
    model.apply("job.progress", job(percent=42, bytes_done=420), OWNER)
    model.apply("job.stalled", job(stalled_sec=600.0, error="restic says nothing"), OWNER)
    assert model.status_line() == "0 backups; running: pictures→aws 42% (stalled)"
    model.apply("job.progress", job(percent=42, bytes_done=420), OWNER)
    assert model.status_line() == "0 backups; running: pictures→aws 42% (stalled)"
    model.apply("job.progress", job(percent=43, bytes_done=430), OWNER)
    assert model.status_line() == "0 backups; running: pictures→aws 43%"


def test_the_status_line_says_what_runs_waits_failed_and_comes_next(
    model: StatusModel, clock: Clock
) -> None:
    model.daemon_changed(
        [
            ("backup:pictures", WorkerView("pictures", "backup", "running", True, 1000.0 + 3600)),
            ("backup:music", WorkerView("music", "backup", "fatal")),
            ("repository:aws", WorkerView("aws", "repository", "running", False, 1000.0 + 60)),
        ],
        stopping=False,
    )
    assert model.status_line() == "2 backups; idle; failed: music; next: aws in 1 min"
    model.apply("job.started", job(), OWNER)
    model.apply("job.queued", queued("j2", 1), OWNER)
    model.apply("job.started", {"job": "c1", "repository": "aws", "operation": "check"}, "r1")
    assert model.status_line() == (
        "2 backups; running: pictures→aws, check aws; queued: 1; failed: music; next: aws in 1 min"
    )
    model.daemon_changed(model.workers.items(), stopping=True)
    assert model.status_line() == (
        "2 backups; stopping; running: pictures→aws, check aws; queued: 1; failed: music"
    )


def test_a_watcher_that_gave_up_is_said_in_the_status_line(model: StatusModel) -> None:
    """No worker row shows the watcher: the line says that no change starts a backup now."""
    pictures = WorkerView("pictures", "backup", "running")
    model.daemon_changed([("backup:pictures", pictures)], stopping=False)
    for passing in (None, "starting", "running", "backoff"):  # backoff: it comes back
        model.watcher_changed(passing)
        assert model.status_line() == "1 backup; idle"
    model.watcher_changed("fatal")
    assert model.status_line() == (
        "1 backup; idle; watcher failed: watched backups run on schedule only"
    )
    model.daemon_changed(model.workers.items(), stopping=True)
    assert model.status_line() == (
        "1 backup; stopping; idle; watcher failed: watched backups run on schedule only"
    )


def test_a_forget_sets_the_snapshot_count_of_its_backup(model: StatusModel, clock: Clock) -> None:
    model.apply("job.started", job("b1"), OWNER)
    model.apply("job.succeeded", job("b1", snapshot="s1", snapshots=8), OWNER)
    backup_record = model.records[KEY]
    forget = {"job": "f1", **PICTURES_AWS, "operation": "forget"}
    clock.now = 1100.0
    model.apply("job.started", forget, OWNER)
    model.apply("job.succeeded", {**forget, "snapshots": "5", "duration_sec": 1}, OWNER)
    forget_key = RunKey("aws", "forget", "pictures")
    assert model.records[forget_key] == RunHistory(
        last=LastRun(1100.0, "succeeded", 1.0, job="f1"),
        last_success=1100.0,
        runs={"succeeded": 1},
        snapshots=None,
    )
    assert model.records[KEY] == RunHistory(
        last=backup_record.last,
        last_success=backup_record.last_success,
        runs={"succeeded": 1},
        snapshots=5,
    )


def test_a_forget_before_any_backup_creates_the_backups_count(model: StatusModel) -> None:
    forget = {"job": "f1", "backup": "music", "repository": "aws", "operation": "forget"}
    model.apply("job.succeeded", {**forget, "snapshots": 0}, "backup:music")
    assert model.records[RunKey("aws", "backup", "music")] == RunHistory(snapshots=0)


def test_a_backup_adds_its_new_snapshot_to_the_known_count(model: StatusModel) -> None:
    # The backup job does not list the repository to count (one restic run per job): the
    # model adds each new snapshot to the count a forget, a listing or a new repository gave.
    model.apply("job.succeeded", job("b0", snapshot="s0"), OWNER)
    assert model.records[KEY].snapshots is None  # never counted: stays unknown
    model.recount({("aws", "pictures"): 4})
    model.apply("job.succeeded", job("b1", snapshot="s1"), OWNER)
    assert model.records[KEY].snapshots == 5
    model.apply("job.succeeded", job("b2"), OWNER)  # nothing changed: no new snapshot
    model.apply("job.failed", job("b3", error="no"), OWNER)
    assert model.records[KEY].snapshots == 5
    model.apply("job.succeeded", job("b4", snapshot="s2", snapshots="1"), OWNER)  # a new one
    assert model.records[KEY].snapshots == 1


def test_a_repository_jobs_snapshot_count_is_ignored(model: StatusModel) -> None:
    prune = {"job": "p1", "repository": "aws", "operation": "prune", "snapshots": 4}
    model.apply("job.succeeded", prune, "repository:aws")
    assert list(model.records) == [RunKey("aws", "prune", "")]
    assert model.records[RunKey("aws", "prune", "")].snapshots is None


def feed(model: StatusModel, clock: Clock) -> None:
    """Results of every kind: two backups, a forget, a check, a failure."""
    model.apply("job.started", job("j1"), OWNER)
    clock.now = 1010.0
    model.apply(
        "job.succeeded",
        job("j1", duration_sec="10.25", snapshot="s1", bytes_added=4096, snapshots=2),
        OWNER,
    )
    model.apply("job.started", job("j2", backup="music"), "backup:music")
    model.apply("job.failed", job("j2", backup="music", error="no route to host"), "backup:music")
    check = {"job": "c1", "repository": "aws", "operation": "check"}
    model.apply("job.started", check, "repository:aws")
    model.apply("job.cancelled", {**check, "duration_sec": 0.5}, "repository:aws")
    model.apply("job.queued", job("j3"), OWNER)  # live: never kept


def test_results_survive_a_save_and_a_load(tmp_path, clock: Clock) -> None:
    path = tmp_path / "state" / "status.json"
    model = StatusModel(path)
    assert model.records == {}  # no file yet
    feed(model, clock)
    model.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = StatusModel(path)
    assert loaded.records == model.records
    assert loaded.live == {}
    assert list(loaded.items()) == sorted(model.records.items())
    assert [key for key, _ in loaded.items()] == [
        RunKey("aws", "backup", "music"),
        RunKey("aws", "backup", "pictures"),
        RunKey("aws", "check", ""),
    ]
    kept = json.loads(path.read_text())
    assert kept[1] == {
        "key": {"repository": "aws", "operation": "backup", "backup": "pictures"},
        "last": {
            "started": 1000.0,
            "result": "succeeded",
            "duration": 10.25,
            "error": None,
            "snapshot": "s1",
            "job": "j1",
            "limits": None,
            "cpu_sec": None,
            "memory_peak": None,
        },
        "last_success": 1000.0,
        "runs": {"succeeded": 1},
        "bytes_added": 4096,
        "snapshots": 2,
    }


def test_a_model_in_memory_saves_nothing(tmp_path, clock: Clock) -> None:
    model = StatusModel()
    feed(model, clock)
    model.save()
    assert list(tmp_path.iterdir()) == []


def test_saving_where_nothing_can_be_written_raises_oserror(tmp_path, clock: Clock) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    model = StatusModel(blocker / "status.json")  # under a file: no directory possible
    feed(model, clock)
    with pytest.raises(OSError):
        model.save()


@pytest.mark.parametrize(
    "content",
    [
        "",
        "not json",
        "null",
        "{}",
        '{"key": 1}',
        "[1]",
        '[{"key": {"repository": "aws"}}]',
        '[{"key": {"repository": "aws", "operation": "backup", "colour": "blue"}}]',
        '[{"key": {"repository": "aws", "operation": "backup"}, "last": {"started": 1}}]',
        '[{"key": {"repository": "aws", "operation": "backup"}, "runs": {"succeeded": "x"}}]',
        '[{"key": {"repository": "aws", "operation": "backup"}, "bytes_added": null}]',
        '[{"key": {"repository": "\\ud800", "operation": "backup"}}]',  # cannot be written
    ],
)
def test_a_corrupt_file_counts_as_no_results(tmp_path, clock: Clock, content: str) -> None:
    path = tmp_path / "status.json"
    path.write_text(content)
    model = StatusModel(path)
    assert model.records == {}
    model.apply("job.succeeded", job(), OWNER)  # and the next result replaces it
    model.save()
    assert StatusModel(path).records == model.records != {}


def test_a_file_of_another_kind_counts_as_no_results(tmp_path) -> None:
    (tmp_path / "status.json").mkdir()  # reading it raises IsADirectoryError
    assert StatusModel(tmp_path / "status.json").records == {}


def test_a_listing_of_snapshots_is_live_but_never_recorded(model: StatusModel) -> None:
    listing = {"job": "l1", "operation": "snapshots", "repository": "aws"}
    model.apply("job.started", listing, "r1")
    assert [job.job for job in model.running()] == ["l1"]
    ended = model.apply("job.failed", {**listing, "error": "unreachable"}, "r1")
    assert ended is not None and ended.job == "l1"
    assert model.live == {} and model.records == {}  # no failed run for an alert to see


KEPT_KEY = {"repository": "aws", "operation": "backup", "backup": "pictures"}


def test_no_file_yet_is_no_problem(tmp_path) -> None:
    assert StatusModel(tmp_path / "status.json").problems == []


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("[" * 100_000 + "]" * 100_000, "not JSON, or nested too deeply"),
        ('[{"key": ' * 50_000, "not JSON, or nested too deeply"),
        ("not json", "not JSON, or nested too deeply"),
    ],
)
def test_kept_results_that_cannot_be_read_start_afresh_and_say_so(tmp_path, content, why) -> None:
    path = tmp_path / "status.json"
    path.write_text(content)
    model = StatusModel(path)
    assert model.records == {}
    assert model.problems == [
        f"{path}: cannot read the kept job results ({why}): they start afresh"
    ]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("fifo", "not a regular file"),  # it blocked the master before READY
        ("link", "Too many levels of symbolic links"),
        ("huge", "larger than 4096 bytes"),
    ],
)
def test_kept_results_that_are_no_small_regular_file_start_afresh(
    tmp_path, monkeypatch, kind, why
) -> None:
    monkeypatch.setattr(status, "MAX_RESULTS_BYTES", 4096)
    path = tmp_path / "status.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "link":
        (tmp_path / "elsewhere.json").write_text("[]")
        path.symlink_to(tmp_path / "elsewhere.json")
    else:
        path.write_text("[" + " " * 4096 + "]")
    model = StatusModel(path)
    assert model.records == {}
    assert model.problems == [
        f"{path}: cannot read the kept job results ({why}): they start afresh"
    ]


def test_the_kept_results_of_1000_backups_are_well_within_the_limit(tmp_path) -> None:
    """Two repositories each, backups, forgets and restores, a long last error each."""
    model = StatusModel(tmp_path / "status.json")
    last = LastRun(1.8e9, "failed", 12345.6, "e" * 1000, "a" * 64, "j" * 36, "l" * 80, 1.5, 2**33)
    history = RunHistory(last, 1.8e9, {"succeeded": 99999, "failed": 999}, 2**50, 99999)
    for backup in range(1000):
        for repository in ("r" * 63 + "1", "r" * 63 + "2"):
            for operation in ("backup", "forget", "restore"):
                model.records[RunKey(repository, operation, f"{backup:b>64}")] = history
    model.save()
    assert (tmp_path / "status.json").stat().st_size * 2 < status.MAX_RESULTS_BYTES
    assert len(StatusModel(tmp_path / "status.json").records) == 6000


def test_kept_results_of_another_shape_start_afresh_and_say_so(tmp_path) -> None:
    path = tmp_path / "status.json"
    path.write_text('{"key": 1}')
    model = StatusModel(path)
    assert model.records == {}
    assert model.problems == [
        f"{path}: the kept job results are not a JSON list: they start afresh"
    ]


@pytest.mark.parametrize(
    "entry",
    [
        {"key": {"repository": 1, "operation": "backup"}},
        {"key": {"repository": "aws", "operation": ["backup"]}},
        {"key": {"repository": "aws", "operation": "backup", "backup": None}},
        {"key": KEPT_KEY, "last": {"started": "yesterday", "result": "succeeded"}},
        {"key": KEPT_KEY, "last": {"started": 1.0, "result": "exploded"}},
        {"key": KEPT_KEY, "last": {"started": 1.0, "result": "failed", "error": ["x"]}},
        {"key": KEPT_KEY, "last": {"started": 1.0, "result": "failed", "job": 7}},
        {"key": KEPT_KEY, "last": [1]},
        {"key": KEPT_KEY, "last_success": True},
        {"key": KEPT_KEY, "last_success": "1e309"},
        {"key": KEPT_KEY, "runs": {"succeeded": -1}},
        {"key": KEPT_KEY, "runs": []},
        {"key": KEPT_KEY, "bytes_added": 1.5},
        {"key": KEPT_KEY, "snapshots": "2"},
        {"key": KEPT_KEY, "colour": "blue"},
        [[[]]],
    ],
)
def test_an_entry_that_makes_no_sense_is_ignored_and_the_others_kept(tmp_path, entry) -> None:
    path = tmp_path / "status.json"
    good = {"key": {"repository": "nas", "operation": "check"}, "last_success": 5.0}
    path.write_text(json.dumps([entry, good]))
    model = StatusModel(path)
    assert model.records == {RunKey("nas", "check"): RunHistory(last_success=5.0)}
    assert model.problems == [f"{path}: 1 of 2 kept job results make no sense: ignored"]
    metrics.render(model)  # and what is kept can be shown
    model.save()
