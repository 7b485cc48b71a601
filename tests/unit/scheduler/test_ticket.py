"""The order of the queue and who may start: pure functions, no files, no processes."""

from __future__ import annotations

import pytest

from henbackup.config.model import Priority
from henbackup.scheduler.ticket import Ticket, in_order, mode_for, order_key, plan

IMMEDIATE = Priority(Priority.IMMEDIATE_BAND)
NEXT = Priority(Priority.NEXT_BAND)
ON_IDLE = Priority(Priority.ON_IDLE_BAND)
SUPERIOR = Priority.ordinary(10)
NORMAL = Priority.ordinary(0)
INFERIOR = Priority.ordinary(-10)


def ticket(job_id, priority=NORMAL, sequence=0, repository="r", mode="shared", state="waiting"):
    return Ticket(job_id, repository, priority, mode, sequence=sequence, state=state)


def everything_free(repository, mode):
    return True


def names(tickets):
    return [t.job_id for t in tickets]


def test_priorities_order_from_immediate_down_to_on_idle_and_fcfs_among_equals():
    queued = [
        ticket("idle", ON_IDLE, 1),
        ticket("low", INFERIOR, 2),
        ticket("normal-1", NORMAL, 3),
        ticket("five", Priority.ordinary(5), 4),
        ticket("high", SUPERIOR, 5),
        ticket("next-1", NEXT, 6),
        ticket("now", IMMEDIATE, 7),
        ticket("normal-2", NORMAL, 8),
        ticket("next-2", NEXT, 9),
        ticket("eleven", Priority.ordinary(11), 10),
    ]
    assert names(in_order(queued)) == [
        "now",
        "next-1",
        "next-2",
        "eleven",
        "high",
        "five",
        "normal-1",
        "normal-2",
        "low",
        "idle",
    ]


def test_running_tickets_are_not_in_the_waiting_order():
    queued = [ticket("a", sequence=1, state="running"), ticket("b", sequence=2)]
    assert names(in_order(queued)) == ["b"]


def test_one_free_slot_starts_only_the_head():
    waiting = in_order([ticket("a", NORMAL, 1), ticket("b", SUPERIOR, 2)])
    starting, dead = plan(waiting, 1, everything_free)
    assert names(starting) == ["b"]
    assert dead == []


def test_no_free_slot_starts_nothing_but_immediate_jobs():
    waiting = in_order([ticket("a", NEXT, 1), ticket("now", IMMEDIATE, 2, repository="x")])
    starting, _ = plan(waiting, 0, everything_free)
    assert names(starting) == ["now"]


def test_immediate_still_waits_for_an_exclusive_repository():
    waiting = in_order([ticket("now", IMMEDIATE, 1, repository="busy")])
    starting, _ = plan(waiting, 0, lambda repository, mode: repository != "busy")
    assert starting == []


def test_on_idle_waits_while_any_other_job_waits():
    waiting = in_order(
        [ticket("idle", ON_IDLE, 1, repository="x"), ticket("b", NORMAL, 2, repository="busy")]
    )
    starting, _ = plan(waiting, 2, lambda repository, mode: repository != "busy")
    assert starting == []  # "b" waits for its repository: "idle" must not slip in


def test_on_idle_runs_when_nothing_else_waits():
    waiting = in_order([ticket("idle-1", ON_IDLE, 1), ticket("idle-2", ON_IDLE, 2)])
    starting, _ = plan(waiting, 1, everything_free)
    assert names(starting) == ["idle-1"]


def test_a_waiting_exclusive_job_blocks_later_shared_ones_on_its_repository_only():
    waiting = in_order(
        [
            ticket("check", NORMAL, 1, repository="a", mode="exclusive"),
            ticket("backup-a", NORMAL, 2, repository="a"),
            ticket("backup-b", NORMAL, 3, repository="b"),
        ]
    )
    held_shared = {"a"}  # a backup is running on "a"

    def free(repository, mode):
        return repository not in held_shared or mode == "shared"

    starting, _ = plan(waiting, 3, free)
    assert names(starting) == ["backup-b"]


def test_shared_jobs_ahead_block_a_later_exclusive_one_in_the_same_pass():
    waiting = in_order([ticket("backup", NORMAL, 1), ticket("prune", NORMAL, 2, mode="exclusive")])
    starting, _ = plan(waiting, 2, everything_free)
    assert names(starting) == ["backup"]


def test_dead_tickets_are_skipped_and_reported():
    waiting = in_order([ticket("dead", NEXT, 1), ticket("b", NORMAL, 2)])
    starting, dead = plan(waiting, 1, everything_free, alive=lambda t: t.job_id != "dead")
    assert names(starting) == ["b"]
    assert names(dead) == ["dead"]


def test_tickets_after_the_slots_run_out_are_not_even_checked_for_life():
    waiting = in_order([ticket(f"t{i}", NORMAL, i) for i in range(5)])
    checked = []
    plan(waiting, 1, everything_free, alive=lambda t: checked.append(t.job_id) or True)
    assert checked == ["t0"]


def test_ticket_json_round_trip():
    original = Ticket(
        "ab12", "aws", Priority.ordinary(-3), "exclusive", "check", None, 42, 7, 3, "running", 0
    )
    assert Ticket.from_json(original.to_json()) == original


@pytest.mark.parametrize("raw", [b"", b"[]", b"{}", b'{"job_id": "x"}', b"\xff"])
def test_a_torn_or_foreign_file_is_not_a_ticket(raw):
    with pytest.raises((ValueError, TypeError, KeyError)):
        Ticket.from_json(raw)


def test_check_and_prune_are_exclusive_everything_else_shared():
    assert mode_for("check") == mode_for("prune") == "exclusive"
    assert {mode_for(op) for op in ("backup", "restore", "forget", "snapshots")} == {"shared"}


def test_order_key_puts_greater_priority_first():
    assert order_key(ticket("a", SUPERIOR, 9)) < order_key(ticket("b", NORMAL, 1))


@pytest.mark.parametrize("job_id", ["", "../lock", ".hidden", "a/b", "x" * 129])
def test_a_ticket_whose_job_id_is_no_plain_name_is_not_a_ticket(job_id):
    raw = Ticket(job_id, "r", Priority.ordinary(0), pid=42).to_json()
    with pytest.raises(ValueError):
        Ticket.from_json(raw)


@pytest.mark.parametrize("pid", [0, -1, 1 << 22, 1 << 63])
def test_a_ticket_whose_pid_is_no_process_is_not_a_ticket(pid):
    """The master signals a running ticket's pid (cancel): -1 would be every process."""
    raw = Ticket("ab12", "r", Priority.ordinary(0), pid=pid).to_json()
    with pytest.raises(ValueError):
        Ticket.from_json(raw)
    assert Ticket.from_json(Ticket("ab12", "r", Priority.ordinary(0), pid=1).to_json())
