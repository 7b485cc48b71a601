import pytest

from henbackup.master.states import ALLOWED, Child, ChildState, InvalidTransition, Policy

POLICY = Policy(stable_after=10, first_delay=1, max_delay=8, max_quick_failures=5)


def started(now=0.0):
    child = Child("pictures")
    child.spawned(100, now)
    child.ready(now)
    return child


def test_every_edge_not_in_the_diagram_is_refused():
    for source in ChildState:
        for target in ChildState:
            child = Child("x", state=source)
            if target in ALLOWED[source]:
                child.transition(target, 1.0)
                assert (child.state, child.since) == (target, 1.0)
            else:
                with pytest.raises(InvalidTransition, match=f"x: {source.value} → "):
                    child.transition(target, 1.0)


def test_quick_crashes_back_off_exponentially_then_go_fatal():
    child, now, delays = started(), 0.0, []
    for _ in range(4):
        now += 1
        child.died(now, POLICY)
        assert child.state is ChildState.BACKOFF
        delays.append(child.restart_at - now)
        now = child.restart_at
        child.spawned(101, now)
    assert delays == [1, 2, 4, 8]
    child.died(now + 1, POLICY)
    assert (child.state, child.restart_at, child.pid) == (ChildState.FATAL, None, None)
    # A reload gives it another try: its next quick crash backs off from the first delay.
    child.retry()
    child.spawned(102, now + 2)
    child.died(now + 3, POLICY)
    assert (child.state, child.restart_at) == (ChildState.BACKOFF, now + 3 + POLICY.first_delay)


def test_the_delay_is_capped():
    assert [POLICY.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]


def test_a_child_that_ran_long_enough_starts_counting_again():
    child = started()
    for n in range(4):
        child.died(n + 1.0, POLICY)
        child.spawned(100, n + 1.0)
    assert child.quick_failures == 4
    child.died(100.0, POLICY)  # ran 96 s: it had recovered
    assert (child.state, child.quick_failures, child.restart_at) == (ChildState.BACKOFF, 1, 101.0)


def test_a_stopped_child_that_exits_is_stopped_not_restarted():
    child = started()
    child.stop(5.0)
    assert child.state is ChildState.STOPPING
    child.died(6.0, POLICY)
    assert child.state is ChildState.STOPPED
    assert child.quick_failures == 0


def test_stopping_a_child_without_process_is_immediate():
    child = started()
    child.died(1.0, POLICY)
    child.stop(1.5)  # in backoff: nothing to wait for
    assert child.state is ChildState.STOPPED
    child.stop(2.0)  # idempotent
    assert child.state is ChildState.STOPPED
