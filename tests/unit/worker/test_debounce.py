"""The debounce rule of henbackup.toml(5) TRIGGERS against given times, and simulated at random."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from henbackup.loop import Loop
from henbackup.worker.debounce import Debouncer, DebounceTimer


def test_nothing_changed_nothing_due():
    assert Debouncer(5, 30).due() is None


def test_a_single_change_waits_wait_min():
    debouncer = Debouncer(5, 30)
    debouncer.change(100.0)
    assert debouncer.due() == 105.0


def test_each_change_restarts_the_quiet_period():
    debouncer = Debouncer(5, 30)
    debouncer.change(100.0)
    debouncer.change(103.0)
    assert debouncer.due() == 108.0


def test_never_longer_than_wait_max_after_the_first_change():
    debouncer = Debouncer(5, 30)
    for t in range(100, 140):  # a change every second, never quiet
        debouncer.change(float(t))
    assert debouncer.due() == 130.0


def test_wait_max_exactly_at_the_quiet_end():
    debouncer = Debouncer(5, 30)
    debouncer.change(100.0)
    debouncer.change(125.0)
    assert debouncer.due() == 130.0  # both rules give 130


def test_zero_waits_mean_at_once():
    debouncer = Debouncer(0, 0)
    debouncer.change(7.0)
    assert debouncer.due() == 7.0


def test_wait_max_below_wait_min_caps_the_wait():
    debouncer = Debouncer(10, 3)
    debouncer.change(0.0)
    assert debouncer.due() == 3.0


def test_negative_waits_are_refused():
    with pytest.raises(ValueError):
        Debouncer(-1, 5)


def test_the_count_and_reason_cover_the_window():
    debouncer = Debouncer(5, 30)
    assert debouncer.reason() == "0 changes"
    debouncer.change(1.0)
    assert debouncer.reason() == "1 change"
    debouncer.change(2.0, count=41)
    assert debouncer.changes == 42
    assert debouncer.reason() == "42 changes"


def test_an_overflow_is_a_change_and_is_told():
    debouncer = Debouncer(5, 30)
    debouncer.overflow(10.0)
    assert debouncer.due() == 15.0
    assert debouncer.reason() == "lost events (inotify queue overflow)"
    debouncer.change(11.0, 3)
    assert debouncer.reason() == "3 changes and lost events (inotify queue overflow)"
    debouncer.backup_started(16.0)
    assert not debouncer.overflowed and debouncer.changes == 0


def test_fire_stops_further_triggers_until_the_backup_starts():
    debouncer = Debouncer(5, 30)
    debouncer.change(0.0)
    assert debouncer.fire() == "1 change"
    assert debouncer.due() is None
    debouncer.change(6.0)  # still before the start: the backup will include it
    assert debouncer.due() is None
    debouncer.backup_started(7.0)
    debouncer.backup_finished(20.0)
    assert debouncer.due() is None  # nothing changed after the start


def test_a_fired_trigger_that_never_started_is_pending_again():
    debouncer = Debouncer(5, 30)
    debouncer.change(0.0)
    debouncer.fire()
    debouncer.backup_finished(50.0)  # dropped (e.g. cancelled while queued)
    assert debouncer.due() == 50.0  # quiet since 5, so at once


def test_a_backup_from_another_trigger_saves_the_pending_changes():
    debouncer = Debouncer(5, 30)
    debouncer.change(0.0)
    debouncer.backup_started(2.0)  # e.g. the schedule
    debouncer.backup_finished(10.0)
    assert debouncer.due() is None


def test_changes_during_a_backup_give_one_follow_up_after_it():
    debouncer = Debouncer(5, 30)
    debouncer.change(0.0)
    debouncer.backup_started(5.0)
    debouncer.change(6.0)
    debouncer.change(7.0)
    assert debouncer.due() is None  # never while running
    debouncer.backup_finished(100.0)
    assert debouncer.due() == 100.0  # quiet for long already: right after the finish
    debouncer.backup_started(100.0)
    debouncer.backup_finished(110.0)
    assert debouncer.due() is None  # exactly one follow-up


def test_a_follow_up_still_waits_for_quiet_after_the_finish():
    debouncer = Debouncer(5, 30)
    debouncer.backup_started(0.0)
    debouncer.change(98.0)
    debouncer.backup_finished(100.0)
    assert debouncer.due() == 103.0
    for t in range(101, 200):  # busy after the finish: wait_max counts from the finish
        debouncer.change(float(t))
    assert debouncer.due() == 130.0


# A simulated worker: fires at due(), runs take the given durations; checks the man page's promises.
@settings(max_examples=500, deadline=None)
@given(
    wait_min=st.integers(0, 10),
    wait_max=st.integers(0, 40),
    gaps=st.lists(st.integers(0, 25), min_size=1, max_size=40),
    durations=st.lists(st.integers(0, 60), min_size=1, max_size=10),
)
def test_simulated_worker_keeps_every_promise(wait_min, wait_max, gaps, durations):
    changes = []
    t = 0
    for gap in gaps:
        t += gap
        changes.append(float(t))
    runs = simulate(Debouncer(wait_min, wait_max), changes, durations)
    for (_, end), (start, _) in itertools.pairwise(runs):
        assert start >= end  # one run at a time
    for change in changes:  # every change is saved by a run starting at or after it
        assert any(start >= change for start, _ in runs)
    previous_start, previous_end = float("-inf"), float("-inf")
    for start, end in runs:
        window = [c for c in changes if previous_start < c <= start]
        assert window, "a run without a change"
        # the window opens at its first change, or at the finish for changes during a run
        opening = max(min(window), previous_end)
        expected = max(min(max(window) + wait_min, opening + wait_max), opening)
        assert start == expected
        previous_start, previous_end = start, end


def simulate(
    debouncer: Debouncer, changes: list[float], durations: list[float]
) -> list[tuple[float, float]]:
    """Feed changes in time order, start a run whenever due, end it after its duration."""
    runs: list[tuple[float, float]] = []
    pending = sorted(changes)
    running_until: float | None = None
    while True:
        due = debouncer.due()
        candidates = [c for c in (*pending[:1], due, running_until) if c is not None]
        if not candidates:
            return runs
        now = min(candidates)
        if running_until is not None and now == running_until:
            debouncer.backup_finished(now)
            running_until = None
        elif pending and now == pending[0]:
            debouncer.change(pending.pop(0))
        else:
            debouncer.fire()
            debouncer.backup_started(now)
            running_until = now + durations[len(runs) % len(durations)]
            runs.append((now, running_until))
        assert len(runs) <= len(changes) + 1, "runs without changes"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run_at(loop: Loop, clock: FakeClock, when: float) -> None:
    """Move the clock to `when` and run what is due; a no-op deadline keeps select() from
    waiting when nothing else is armed."""
    clock.now = when
    loop.call_at(when, lambda: None)
    loop.run_once()


def test_debounce_timer_fires_once_at_the_due_time_not_per_change():
    clock = FakeClock()
    loop = Loop(clock)
    reasons: list[str] = []
    timer = DebounceTimer(loop, Debouncer(5, 30), reasons.append)
    timer.changed(1)  # at 100: due 105
    run_at(loop, clock, 103)
    timer.changed(2)  # due 108; the 105 deadline stays, re-armed when it expires
    assert len(loop._timers) == 1  # still the 105 deadline only
    run_at(loop, clock, 105)
    assert reasons == []
    run_at(loop, clock, 108)
    assert reasons == ["3 changes"]
    timer.debouncer.backup_started(108)
    run_at(loop, clock, 150)
    timer.changed(1)  # during the backup: nothing until it has finished
    run_at(loop, clock, 200)
    assert reasons == ["3 changes"]
    timer.debouncer.backup_finished(210)
    timer.poke()
    run_at(loop, clock, 210)
    assert reasons == ["3 changes", "1 change"]
    loop.close()


def test_debounce_timer_counts_an_overflow_and_can_be_cancelled():
    clock = FakeClock()
    loop = Loop(clock)
    reasons: list[str] = []
    timer = DebounceTimer(loop, Debouncer(1, 2), reasons.append)
    timer.overflowed()
    timer.cancel()
    run_at(loop, clock, 150)
    assert reasons == []
    timer.poke()
    run_at(loop, clock, 150)
    assert reasons == ["lost events (inotify queue overflow)"]
    loop.close()
