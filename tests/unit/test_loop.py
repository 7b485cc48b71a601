import os
import signal

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
