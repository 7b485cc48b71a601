"""Preemption's decision, without processes: who is paused, when, for whom, and when it
resumes (master/preempt.py `decide` and `lent_slots`)."""

from __future__ import annotations

import errno
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from henbackup.config.model import Priority
from henbackup.loop import Loop
from henbackup.master import preempt
from henbackup.master.preempt import Decision, Pause, Preemption, decide, lent_slots
from henbackup.observe.status import LiveJob, RunKey, StatusModel
from tests.unit.limits.test_pause import JOB_PROCESS, state_becomes

NOW = 1_800_000_000.0
AFTER = 5.0
SUPERIOR, NORMAL, INFERIOR = 10, 0, -10
IMMEDIATE = Priority(Priority.IMMEDIATE_BAND).effective


def running(job: str, priority: int = NORMAL, started: float = NOW - 60, **key: str) -> LiveJob:
    return LiveJob(
        job,
        _key(job, **key),
        owner=f"backup:{job}",
        state="running",
        since=started,
        priority=priority,
        pid=1000 + len(job),
        queued_at=started,
    )


def waiting(job: str, priority: int = SUPERIOR, waited: float = AFTER, **key: str) -> LiveJob:
    return LiveJob(
        job,
        _key(job, **key),
        owner=f"backup:{job}",
        state="queued",
        since=NOW - waited,
        priority=priority,
        queued_at=NOW - waited,
    )


def _key(job: str, repository: str = "", operation: str = "backup") -> RunKey:
    return RunKey(repository or f"repo-{job}", operation, job)


def paused(job: LiveJob, for_job: str) -> dict[str, Pause]:
    return {job.job: Pause(job.job, job.pid, job.priority, for_job, NOW - 1)}


def test_a_superior_job_that_waited_long_enough_pauses_the_running_one() -> None:
    pictures, grafana = running("pictures"), waiting("grafana")
    assert decide([pictures, grafana], {}, NOW, AFTER, 1) == Decision(pause=((pictures, grafana),))


def test_nothing_is_paused_before_the_wait_has_lasted() -> None:
    queue = [running("pictures"), waiting("grafana", waited=AFTER - 0.5)]
    assert decide(queue, {}, NOW, AFTER, 1) == Decision()


def test_equal_priorities_never_pause_each_other() -> None:
    queue = [running("pictures", SUPERIOR), waiting("grafana", SUPERIOR, waited=3600)]
    assert decide(queue, {}, NOW, AFTER, 1) == Decision()
    queue = [running("pictures", SUPERIOR), waiting("music", NORMAL, waited=3600)]
    assert decide(queue, {}, NOW, AFTER, 1) == Decision()


def test_an_immediate_job_needs_no_slot_pauses_nothing_and_is_never_paused() -> None:
    queue = [running("pictures"), waiting("restore", IMMEDIATE, waited=3600)]
    assert decide(queue, {}, NOW, AFTER, 1) == Decision()
    queue = [running("restore", IMMEDIATE), running("pictures"), waiting("grafana")]
    decision = decide(queue, {}, NOW, AFTER, 1)
    assert [(v.job, w.job) for v, w in decision.pause] == [("pictures", "grafana")]


def test_the_lowest_priority_is_paused_and_the_latest_started_among_equals() -> None:
    queue = [
        running("music", NORMAL, started=NOW - 90),
        running("logs", INFERIOR, started=NOW - 80),
        running("films", INFERIOR, started=NOW - 70),
        waiting("grafana"),
    ]
    decision = decide(queue, {}, NOW, AFTER, 3)
    assert [(v.job, w.job) for v, w in decision.pause] == [("films", "grafana")]


def test_each_waiting_job_pauses_one_and_stops_when_none_is_lower() -> None:
    queue = [
        running("logs", INFERIOR),
        running("music", SUPERIOR),
        waiting("grafana", 20),
        waiting("mail", 15),
        waiting("notes", 12),
    ]
    decision = decide(queue, {}, NOW, AFTER, 2)
    assert [(v.job, w.job) for v, w in decision.pause] == [("logs", "grafana"), ("music", "mail")]


def test_a_free_slot_means_the_job_waits_for_something_else() -> None:
    queue = [running("pictures"), waiting("grafana", waited=3600)]
    assert decide(queue, {}, NOW, AFTER, 2) == Decision()


def test_a_job_held_back_by_its_repository_pauses_nothing() -> None:
    """A check holds its repository alone: pausing a job would not let it start, and the
    lent slot could go to a lower job."""
    queue = [
        running("check", INFERIOR, repository="aws", operation="check"),
        waiting("grafana", repository="aws"),
    ]
    assert decide(queue, {}, NOW, AFTER, 1) == Decision()
    queue = [
        running("pictures", repository="aws"),
        waiting("check", repository="aws", operation="check"),
    ]
    assert decide(queue, {}, NOW, AFTER, 1) == Decision()
    shared = [running("pictures", repository="aws"), waiting("grafana", repository="aws")]
    assert len(decide(shared, {}, NOW, AFTER, 1).pause) == 1


def test_a_job_that_forgets_never_pauses_one_on_its_repository() -> None:
    """Its forget needs restic's exclusive lock, which the paused restic would keep."""
    queue = [running("pictures", repository="aws"), waiting("grafana", repository="aws")]
    assert decide(queue, {}, NOW, AFTER, 1, forgetting={"grafana"}) == Decision()
    queue = [running("pictures", repository="ovh"), waiting("grafana", repository="aws")]
    assert len(decide(queue, {}, NOW, AFTER, 1, forgetting={"grafana"}).pause) == 1


def test_a_job_outside_the_daemon_holds_a_slot_but_is_not_paused() -> None:
    outsider = LiveJob("byhand", _key("byhand"), "", "running", NOW - 60, pid=4242)
    assert decide([outsider, waiting("grafana")], {}, NOW, AFTER, 1) == Decision()


def test_while_the_superior_job_waits_or_runs_the_paused_one_stays_paused() -> None:
    pictures = running("pictures")
    pauses = paused(pictures, "grafana")
    assert decide([pictures, waiting("grafana")], pauses, NOW, AFTER, 1) == Decision()
    assert decide([pictures, running("grafana", SUPERIOR)], pauses, NOW, AFTER, 1) == Decision()


def test_the_paused_job_resumes_when_the_superior_one_is_done() -> None:
    pictures = running("pictures")
    assert decide([pictures], paused(pictures, "grafana"), NOW, AFTER, 1) == Decision(
        resume=("pictures",)
    )


def test_it_waits_for_room_if_another_job_took_the_slot_meanwhile() -> None:
    pictures = running("pictures")
    queue = [pictures, running("music", NORMAL)]
    assert decide(queue, paused(pictures, "grafana"), NOW, AFTER, 1) == Decision()


def test_a_paused_job_that_is_gone_is_resumed_at_once() -> None:
    """Its marks must go, and a program it left stopped must go on (to end)."""
    pictures = running("pictures")
    queue = [running("grafana", SUPERIOR), running("music")]
    assert decide(queue, paused(pictures, "grafana"), NOW, AFTER, 1) == Decision(
        resume=("pictures",)
    )


def test_a_slot_is_lent_until_the_job_it_is_lent_to_starts() -> None:
    pictures = running("pictures")
    pauses = paused(pictures, "grafana")
    assert lent_slots(pauses, [pictures, waiting("grafana")]) == 1
    assert lent_slots(pauses, [pictures, running("grafana", SUPERIOR)]) == 0
    assert lent_slots({}, [pictures, waiting("grafana")]) == 0


def test_a_paused_job_of_a_paused_job_lends_its_slot_again() -> None:
    """grafana runs in pictures' slot; a next job pauses grafana: one slot more is lent."""
    pictures, grafana = running("pictures"), running("grafana", SUPERIOR)
    restore = waiting("restore", Priority(Priority.NEXT_BAND).effective)
    decision = decide([pictures, grafana, restore], paused(pictures, "grafana"), NOW, AFTER, 1)
    assert [(v.job, w.job) for v, w in decision.pause] == [("grafana", "restore")]
    pauses = {**paused(pictures, "grafana"), **paused(grafana, "restore")}
    assert lent_slots(pauses, [pictures, grafana, restore]) == 2


# --- the master's side, on a real loop and a real stand-in job process --------------------


def test_the_master_pauses_lends_a_slot_takes_it_back_and_resumes(tmp_path: Path) -> None:
    """Fed with job events as the master's status model is: pictures runs, grafana waits
    past preempt_after; pictures' program is stopped, job.paused said, a slot lent; once
    grafana runs the slot is no longer lent; when it is done, pictures goes on."""
    process = subprocess.Popen(
        [sys.executable, "-c", JOB_PROCESS], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    program = int(process.stdout.readline())
    events: list[tuple[str, dict[str, object]]] = []
    slots: list[int] = []
    model, loop = StatusModel(), Loop()

    def emit(kind: str, message: str, **fields: object) -> None:
        events.append((kind, fields))

    preemption = Preemption(loop, emit, model, slots.append, tuple, tmp_path / "paused")
    pictures = {"job": "p1", "operation": "backup", "backup": "pictures", "repository": "r"}
    grafana = {**pictures, "job": "g1", "backup": "grafana"}
    try:
        model.apply("job.started", {**pictures, "priority": 0, "pid": process.pid}, "backup:p")
        preemption.configure(1, 0.2, frozenset())
        assert slots == [1]
        model.apply("job.queued", {**grafana, "priority": 10, "queued_at": time.time()}, "g")
        preemption.review()
        assert slots == [1] and events == []  # not yet: it has not waited long enough
        deadline = time.monotonic() + 10
        while not events and time.monotonic() < deadline:
            loop.run_once()
        assert events == [
            (
                "job.paused",
                {
                    **pictures,
                    "trigger": "",
                    "priority": 0,
                    "paused_for": "g1",
                    "paused_for_priority": 10,
                    "paused_how": "SIGSTOP",
                },
            )
        ]
        assert state_becomes(program, "T") and slots == [1, 2]  # SIGSTOP lands when it may
        assert model.live["p1"].paused
        model.apply("job.started", {**grafana, "priority": 10}, "g")
        preemption.review()
        assert slots == [1, 2, 1]  # its end frees no slot for anyone but pictures
        model.apply("job.succeeded", grafana, "g")
        preemption.review()
        (kind, fields), *_ = events[1:]
        assert kind == "job.resumed" and fields["job"] == "p1" and not model.live["p1"].paused
        assert state_becomes(program, "S") and slots == [1, 2, 1]
        assert not list((tmp_path / "paused").iterdir())
    finally:
        process.communicate(timeout=10)


def test_a_cancelled_paused_job_goes_on_to_act_on_its_cancel(tmp_path: Path) -> None:
    """A frozen restic could not stop cleanly: the paused job resumes at once."""
    model, events = StatusModel(), []
    preemption = Preemption(
        Loop(), lambda kind, _, **f: events.append((kind, f["job"])), model, [].append, tuple
    )
    preemption.marks = tmp_path / "paused"
    model.apply("job.started", {"job": "p1", "repository": "r", "pid": 1}, "backup:p")
    preemption.pauses["p1"] = Pause("p1", 2**22 + 1, 0, "g1", time.time())  # no such pid
    preemption.marks.mkdir()
    preemption.resume_cancelled("other")
    assert list(preemption.pauses) == ["p1"] and events == []
    preemption.resume_cancelled("p1")
    assert preemption.pauses == {} and events == [("job.resumed", "p1")]


def test_a_job_of_a_stopping_worker_is_never_paused() -> None:
    pictures, music, grafana = running("pictures"), running("music"), waiting("grafana")
    queue = [pictures, music, grafana]
    chosen = decide(queue, {}, NOW, AFTER, 2, stopping={"backup:pictures"})
    assert chosen == Decision(pause=((music, grafana),))
    assert decide(queue, {}, NOW, AFTER, 2, stopping={"backup:pictures", "backup:music"}) == (
        Decision()
    )


def test_a_worker_about_to_stop_has_its_paused_job_go_on_first(tmp_path: Path) -> None:
    """A reload removes or changes the backup of a paused job: it resumes before its
    worker is told to stop (a frozen restic could not stop cleanly), and stays so."""
    model, events, stopping = StatusModel(), [], set()
    preemption = Preemption(
        Loop(),
        lambda kind, _, **f: events.append((kind, f["job"])),
        model,
        [].append,
        tuple,
        tmp_path / "paused",
        stopping=lambda: stopping,
    )
    preemption.marks.mkdir()
    model.apply("job.started", {"job": "p1", "repository": "r", "pid": 1}, "backup:p")
    preemption.pauses["p1"] = Pause("p1", 2**22 + 1, 0, "g1", time.time())  # no such pid
    preemption.release("backup:other")
    assert list(preemption.pauses) == ["p1"] and events == []
    stopping.add("backup:p")
    preemption.release("backup:p")
    assert preemption.pauses == {} and events == [("job.resumed", "p1")]


def test_a_wait_that_pauses_nothing_sets_no_timer(tmp_path: Path) -> None:
    """Equal priorities past preempt_after: looked at again on the next job event, not
    every few milliseconds."""
    model = StatusModel()
    preemption = Preemption(Loop(), lambda *a, **k: None, model, [].append, tuple, tmp_path)
    model.apply("job.started", {"job": "p1", "repository": "r", "pid": 1}, "backup:p")
    model.apply("job.queued", {"job": "m1", "repository": "r", "queued_at": time.time() - 60}, "m")
    preemption.configure(1, 5.0, frozenset())
    assert preemption.pauses == {} and preemption._timer is None
    model.apply("job.queued", {"job": "g1", "repository": "r", "queued_at": time.time()}, "g")
    preemption.review()
    assert preemption._timer is not None  # when g1 has waited 5 s


def test_slots_that_cannot_be_set_are_said_once_and_set_on_a_later_review(tmp_path: Path) -> None:
    """A full disk is faked (set_slots raises ENOSPC twice): configure does not raise, the
    failure is one daemon.error, and a timer reviews again until the slots are written."""
    written: list[int] = []
    events: list[str] = []

    def set_slots(count: int) -> None:
        if fails:
            fails.pop()
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(count)

    fails = [1, 1]
    preemption = Preemption(
        Loop(), lambda kind, _, **f: events.append(kind), StatusModel(), set_slots, tuple, tmp_path
    )
    preemption.configure(2, 5.0, frozenset())
    assert written == [] and events == ["daemon.error"] and preemption._timer is not None
    preemption.review()
    assert written == [] and events == ["daemon.error"]
    preemption.review()
    assert written == [2] and events == ["daemon.error"] and preemption._timer is None


def test_a_wait_is_measured_on_a_steady_clock_whatever_the_wall_clock_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Arrivals are wall-clock times (the tickets are shared between processes). Measured
    on the wall clock, a step back of 2 h (NTP, a Raspberry Pi without a real-time clock)
    held a superior job back 2 h more; a step forward let every waiting job preempt."""
    steady = SimpleNamespace(now=100.0)
    monkeypatch.setattr(preempt, "time", SimpleNamespace(monotonic=lambda: steady.now))
    preemption = Preemption(Loop(), lambda *a, **k: None, StatusModel(), [].append, tuple)
    queue = [running("low", INFERIOR), waiting("high", waited=0)]
    assert decide(preemption._steady(queue, NOW), {}, NOW, AFTER, 1).pause == ()

    steady.now += 1  # and the clock stepped forward 2 h
    ahead = NOW + 1 + 7200
    assert decide(preemption._steady(queue, ahead), {}, ahead, AFTER, 1).pause == ()

    steady.now += AFTER  # and the clock stepped back 2 h
    behind = NOW + 1 + AFTER - 7200
    decision = decide(preemption._steady(queue, behind), {}, behind, AFTER, 1)
    assert [(victim.job, waiting.job) for victim, waiting in decision.pause] == [("low", "high")]
