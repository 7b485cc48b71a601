"""What a worker's job process says reaches the master, with the requests waiting for it; a
line of the wrong shape from the job process costs one daemon.error, never the worker. Real
worker loop, real forked job process and channels; the job's body is a stand-in that says
what a job process never would."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest

from henbackup.channel import Accepted, Channel, ChannelMessage, JobEvent, JobState, Refused
from henbackup.config.model import Config
from henbackup.worker.main import MAX_FOLLOWED, MAX_WAITING, RunRequest, Worker
from henbackup.worker.spec import WorkerSpec

DEADLINE = 30.0  # generous: waited for, never asserted as a duration


def garbled(
    config: Config, spec: WorkerSpec, run: RunRequest, news: Channel, admitted: object
) -> int:
    news.sock.sendall(b'{"type": "event", "kind": "job.started"}\n')
    news.send(JobEvent("job.started", "pictures: backup started", {"job": "0a1b2c3d"}))
    return 0


def test_a_job_process_s_events_go_up_and_a_malformed_line_is_one_error(events: Any) -> None:
    channel, master = Channel.pair()
    worker = Worker(
        WorkerSpec("backup", "pictures", ()), cast(Config, None), channel, events, garbled
    )
    worker.request(RunRequest("manual", "asked by the test", requests=("r1",)))
    deadline = time.monotonic() + DEADLINE
    while worker.job is not None:
        assert time.monotonic() < deadline, "the job process never ended"
        worker.loop.run_once()
    heard: list[ChannelMessage] = []
    master.sock.settimeout(DEADLINE)
    while not any(isinstance(m, JobState) and m.state == "idle" for m in heard):
        heard += master.receive(pytest.fail) or []
    assert heard == [
        JobState("running", None, "backup"),
        JobEvent("job.started", "pictures: backup started", {"job": "0a1b2c3d"}, ("r1",)),
        JobState("idle", None, None, 0, ("r1",)),
    ]
    errors = [event for event in events.recorded if event.kind == "daemon.error"]
    assert [dict(event.fields)["HENBACKUP_ERROR"] for event in errors] == [
        "malformed message: event needs 'message'"
    ]
    worker.loop.close()
    master.close()
    channel.close()


def test_a_priority_the_worker_cannot_read_names_no_job_and_leaves_the_worker_alive(
    events: Any,
) -> None:
    # The master refuses it first; were one to come, the job process, not the worker, fails.
    channel, master = Channel.pair()
    worker = Worker(
        WorkerSpec("backup", "pictures", ()), cast(Config, None), channel, events, garbled
    )
    assert worker._jobs_of(RunRequest("manual", "asked by the test", priority="9" * 19)) == ()
    worker.loop.close()
    master.close()
    channel.close()


def test_a_run_follows_at_most_max_followed_requests_and_the_others_are_answered_at_once(
    events: Any,
) -> None:
    # Each job event of the run carries every id it follows: unbounded, ~90,000 asks made
    # one line longer than the channel takes, and the master killed the worker.
    channel, master = Channel.pair()
    worker = Worker(
        WorkerSpec("backup", "pictures", ()), cast(Config, None), channel, events, garbled
    )
    worker.current = RunRequest("manual", "running")  # a run in progress: the asks wait
    ids = [f"r{n:08x}" for n in range(MAX_FOLLOWED + 2)]
    for request in ids:
        worker.request(RunRequest("manual", "asked by the test", requests=(request,)))
    (pending,) = worker.pending
    assert pending.requests == tuple(ids[:MAX_FOLLOWED]) and MAX_FOLLOWED == 64
    master.sock.settimeout(DEADLINE)
    heard: list[ChannelMessage] = []
    while len(heard) < 2:
        heard += [m for m in master.receive(pytest.fail) or [] if isinstance(m, Accepted)]
    assert heard == [Accepted("backup", (ids[64],)), Accepted("backup", (ids[65],))]
    worker.loop.close()
    master.close()
    channel.close()


def test_at_most_max_waiting_runs_wait_and_the_next_ask_is_refused_with_why(events: Any) -> None:
    # Each ask of another priority once queued a run of its own: a flood of them queued a
    # backup for each.
    channel, master = Channel.pair()
    worker = Worker(
        WorkerSpec("backup", "pictures", ()), cast(Config, None), channel, events, garbled
    )
    worker.current = RunRequest("manual", "running")
    for priority in range(MAX_WAITING + 1):
        asked = RunRequest(
            "manual", "by the test", priority=str(priority), requests=(f"r{priority}",)
        )
        worker.request(asked)
    assert [run.priority for run in worker.pending] == [str(n) for n in range(MAX_WAITING)]
    master.sock.settimeout(DEADLINE)
    heard: list[ChannelMessage] = []
    while not heard:
        heard += [m for m in master.receive(pytest.fail) or [] if isinstance(m, Refused)]
    why = "pictures: 16 runs asked by hand already wait; ask later"
    assert heard == [Refused(why, (f"r{MAX_WAITING}",))]
    worker.loop.close()
    master.close()
    channel.close()
