"""One-off job processes (check, prune, restore, list-snapshots) alive at once are capped:
each outlives its client and holds two of the master's fds, so requests without end would
exhaust them. The surplus is refused with a "failed" reply (henbackupctl exits 1), before
anything is forked."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from henbackup.loop import Loop
from henbackup.master import jobs as jobs_module
from henbackup.master.jobs import MAX_ONE_OFFS, MAX_ONE_OFFS_OF_MEMBER, Jobs, OneOffProcess
from tests.unit.master.stand_in import MEMBER, ROOT, Conversation

CHECK = {"command": "check", "repository": "aws", "priority": None}


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> Any:
    forked: list[str] = []

    def start_watched(loop: Loop, title: str, body: Any, **callbacks: Any) -> Any:
        forked.append(title)
        return SimpleNamespace(pid=-1)

    monkeypatch.setattr(jobs_module, "start_watched", start_watched)
    loop = Loop()
    jobs = Jobs(loop, emit=lambda *args, **fields: None, one_off_body=lambda *args: 0)
    jobs.forked = forked  # type: ignore[attr-defined]
    yield jobs
    loop.close()


def running(jobs: Jobs, count: int, uid: int) -> None:
    for n in range(count):
        request = f"r{uid:04x}{n:04x}"
        jobs.one_offs[request] = OneOffProcess(request, SimpleNamespace(pid=-1), uid)  # type: ignore[arg-type]


def start(jobs: Jobs, peer: Any) -> Any:
    return jobs.start_one_off(SimpleNamespace(), CHECK, Conversation(peer), wait=False)  # type: ignore[arg-type]


def test_past_the_most_one_off_processes_a_request_is_refused_as_busy(jobs: Any) -> None:
    running(jobs, MAX_ONE_OFFS, uid=0)
    assert start(jobs, ROOT) == {
        "ok": False,
        "code": "failed",
        "error": "henbackup runs 64 checks, prunes, restores and listings at once, its most:"
        " try again once one has ended",
    }
    assert (jobs.forked, len(jobs.one_offs)) == ([], 64)


def test_a_member_may_hold_a_quarter_of_them_and_root_more(jobs: Any) -> None:
    running(jobs, MAX_ONE_OFFS_OF_MEMBER, uid=MEMBER.uid)
    assert start(jobs, MEMBER) == {
        "ok": False,
        "code": "failed",
        "error": "henbackup runs 16 checks, prunes, restores and listings at once for one"
        " user, its most: try again once one has ended",
    }
    assert jobs.forked == []
    reply = start(jobs, ROOT)
    assert reply["ok"] and jobs.forked == ["hbjob:check"]
    assert jobs.one_offs[reply["request"]].uid == 0
