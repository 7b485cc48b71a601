import os
import signal

import pytest

from henbackup import loop as loop_module
from henbackup.loop import Loop


class FakeClock:
    """Deadlines are tested against a clock the test moves; select() still really runs."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_deadlines_run_in_time_order_and_cancelled_ones_never():
    clock = FakeClock()
    loop = Loop(clock)
    ran = []
    loop.call_at(102, lambda: ran.append("b"))
    loop.call_at(101, lambda: ran.append("a"))
    loop.call_at(101, lambda: ran.append("a2"))  # same time: first come, first served
    loop.call_later(5, lambda: ran.append("c")).cancel()
    clock.now = 101.5
    loop.run_once()
    assert ran == ["a", "a2"]
    clock.now = 200
    loop.run_once()
    assert ran == ["a", "a2", "b"]
    loop.close()


def test_a_readable_fd_wakes_the_loop():
    loop = Loop()
    read_end, write_end = os.pipe()
    got = []
    loop.add_reader(read_end, lambda: got.append(os.read(read_end, 10)))
    os.write(write_end, b"ping")
    loop.run_once()
    assert got == [b"ping"]
    loop.remove_reader(read_end)
    os.close(read_end)
    os.close(write_end)
    loop.close()


def test_signals_are_dispatched_by_the_loop_not_the_handler():
    loop = Loop()
    got = []
    loop.on_signal(signal.SIGUSR1, lambda: got.append("usr1"))
    loop.on_signal(signal.SIGHUP, lambda: (got.append("hup"), loop.stop()))
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGHUP)
    loop.run()
    assert got == ["usr1", "hup"]
    loop.close()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


def test_without_deadlines_select_sleeps_until_woken():
    loop = Loop()
    assert loop._timeout() is None
    loop.call_later(30, lambda: None)
    assert 29 < loop._timeout() <= 30
    loop.close()


def failing(what):
    def callback():
        raise RuntimeError(what)

    return callback


def test_without_an_error_handler_a_failing_callback_ends_the_loop():
    loop = Loop()
    loop.call_later(0, failing("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        loop.run_once()
    loop.close()


def test_a_failing_timer_costs_itself_only():
    reported = []
    loop = Loop(on_error=lambda source, error: reported.append((source, str(error))))
    ran = []
    loop.call_later(0, failing("boom"))
    loop.call_later(0, lambda: ran.append("next"))
    loop.run_once()
    assert ran == ["next"]
    assert [(source.split(" (")[0], error) for source, error in reported] == [("timer", "boom")]
    assert "failing.<locals>.callback" in reported[0][0]
    loop.close()


def test_a_descriptor_whose_callback_fails_rests_then_is_watched_again():
    clock = FakeClock()
    reported = []
    loop = Loop(clock, on_error=lambda source, error: reported.append(source))
    read_end, write_end = os.pipe()
    calls = []

    def read():
        calls.append(clock.now)
        raise RuntimeError("never reads")  # stays readable: would spin the loop

    loop.add_reader(read_end, read)
    os.write(write_end, b"x")
    loop.run_once()
    assert calls == [100.0]
    assert reported == [f"descriptor {read_end} (" + read.__qualname__ + ")"]
    assert 0 < loop._timeout() <= loop_module.ERROR_PAUSE  # resting: not watched, not spun
    loop.run_once()  # the clock has not moved: only the rest's timer is due, later
    assert calls == [100.0]
    clock.now += loop_module.ERROR_PAUSE
    loop.run_once()  # the rest is over: watched again
    loop.run_once()
    assert calls == [100.0, 101.0]
    loop.remove_reader(read_end)  # resting or not, it can be removed
    os.close(read_end)
    os.close(write_end)
    loop.close()


def test_a_resting_descriptor_closed_or_taken_meanwhile_is_not_watched_again():
    clock = FakeClock()
    loop = Loop(clock, on_error=lambda source, error: None)
    read_end, write_end = os.pipe()
    loop.add_reader(read_end, failing("once"))
    os.write(write_end, b"x")
    loop.run_once()
    got = []
    loop.add_reader(read_end, lambda: got.append(os.read(read_end, 1)))  # a new owner
    clock.now += loop_module.ERROR_PAUSE
    loop.run_once()
    assert got == [b"x"]  # the new callback, registered once
    loop.remove_reader(read_end)
    os.close(read_end)
    os.close(write_end)
    loop.close()


def test_a_failing_signal_callback_does_not_lose_the_next_signal():
    loop = Loop(on_error=lambda source, error: got.append(source.split(" (")[0]))
    got = []
    loop.on_signal(signal.SIGUSR1, failing("usr1"))
    loop.on_signal(signal.SIGHUP, lambda: (got.append("hup"), loop.stop()))
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGHUP)
    loop.run()
    assert got == ["signal SIGUSR1", "hup"]
    loop.close()


def test_a_timer_weeks_away_is_waited_for_in_steps_epoll_can_take():
    """epoll's timeout is at most 2**31 ms (24.8 days); 40 days once raised OverflowError
    out of select(), ending the process whose loop it was."""
    clock = FakeClock()
    loop = Loop(clock)
    ran = []
    loop.call_later(40 * 86_400, lambda: ran.append("late"))
    r, w = os.pipe()
    loop.add_reader(r, lambda: ran.append(os.read(r, 1)))
    os.write(w, b"x")
    loop.run_once()  # the fd, at once: the wait itself no longer raises
    assert ran == [b"x"]
    clock.now += 40 * 86_400
    loop.run_once()
    assert ran == [b"x", "late"]
    os.close(r)
    os.close(w)
