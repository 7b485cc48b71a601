"""One thread, one selector: the event loop of the master and of every worker.

File descriptors, deadlines (monotonic clock) and signals all wake the same `select()`:
signals arrive through `signal.set_wakeup_fd`, so handlers never run real work; the loop
dispatches them between other callbacks. Nothing polls: with nothing due, `select` sleeps.

With an `on_error` handler (the master's), an exception in a callback costs that callback
only: the handler hears of it, a descriptor whose callback failed rests for ERROR_PAUSE
seconds (one that stays readable would otherwise spin the loop), and the loop goes on.
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Callback = Callable[[], None]
ErrorHandler = Callable[[str, Exception], None]  # (what failed, the exception)
ERROR_PAUSE = 1.0
MAX_WAIT = 86_400.0  # the longest one wait of the selector, in seconds


@dataclass(order=True)
class Timer:
    when: float
    order: int
    callback: Callback = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(
        self, clock: Callable[[], float] = time.monotonic, on_error: ErrorHandler | None = None
    ) -> None:
        """`on_error`: None lets an exception in a callback end `run()`."""
        self.clock = clock
        self.on_error = on_error
        self._resting: dict[int, selectors.SelectorKey] = {}  # fds whose callback failed
        self._selector = selectors.DefaultSelector()
        self._timers: list[Timer] = []
        self._order = itertools.count()
        self._signal_callbacks: dict[int, Callback] = {}
        self._wakeup: tuple[int, int] | None = None  # (read end, write end)
        self._running = False

    # file descriptors
    def add_reader(self, fd: int, callback: Callback) -> None:
        self._resting.pop(fd, None)  # a number reused: the new registration wins
        self._selector.register(fd, selectors.EVENT_READ, callback)

    def add_writer(self, fd: int, callback: Callback) -> None:
        """Run `callback` whenever `fd` can be written to (remove it with remove_reader)."""
        self._resting.pop(fd, None)
        self._selector.register(fd, selectors.EVENT_WRITE, callback)

    def remove_reader(self, fd: int) -> None:
        """Stop watching `fd`, for reading or writing."""
        if self._resting.pop(fd, None) is None:
            self._selector.unregister(fd)

    # errors
    def report_error(self, source: str, error: Exception) -> None:
        """Hand `error`, raised by `source`, to `on_error`; without one, raise it."""
        if self.on_error is None:
            raise error
        self.on_error(source, error)

    def _call(self, callback: Callback, source: str) -> bool:
        """Run one callback; returns False when it raised (and `on_error` heard of it)."""
        if self.on_error is None:
            callback()
            return True
        try:
            callback()
        except Exception as error:
            self.report_error(f"{source} ({_name(callback)})", error)
            return False
        return True

    def _call_fd(self, key: selectors.SelectorKey) -> None:
        if not self._call(key.data, f"descriptor {key.fd}"):
            self._rest(key)

    def _rest(self, key: selectors.SelectorKey) -> None:
        """Unwatch `key.fd` for ERROR_PAUSE seconds, unless its callback changed it meanwhile,
        or it is closed or reused by then."""
        if self._selector.get_map().get(key.fd) is not key:
            return
        self._selector.unregister(key.fd)
        self._resting[key.fd] = key
        identity = _identity(key.fd)

        def wake() -> None:
            if self._resting.get(key.fd) is key:
                del self._resting[key.fd]
                if identity is not None and _identity(key.fd) == identity:
                    self._selector.register(key.fd, key.events, key.data)

        self.call_later(ERROR_PAUSE, wake)

    # deadlines
    def call_at(self, when: float, callback: Callback) -> Timer:
        """Run `callback` once the loop's clock reaches `when`; returns a cancellable Timer."""
        timer = Timer(when, next(self._order), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def call_later(self, delay: float, callback: Callback) -> Timer:
        return self.call_at(self.clock() + delay, callback)

    # signals
    def on_signal(self, signum: int, callback: Callback) -> None:
        """Run `callback` in the loop (not in the handler) whenever `signum` arrives."""
        if self._wakeup is None:
            self._install_wakeup()
        self._signal_callbacks[signum] = callback
        signal.signal(signum, _note_signal)

    def _install_wakeup(self) -> None:
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        self._wakeup = (read_end, write_end)
        self.add_reader(read_end, lambda: self._dispatch_signals(read_end))

    def _dispatch_signals(self, read_end: int) -> None:
        try:
            received = os.read(read_end, 512)
        except BlockingIOError:
            return
        for signum in dict.fromkeys(received):  # each signal once per wake-up, in order
            callback = self._signal_callbacks.get(signum)
            if callback is not None:  # one failing does not lose the others
                self._call(callback, f"signal {signal.Signals(signum).name}")

    # running
    def run(self) -> None:
        """Serve callbacks until `stop()` is called."""
        self._running = True
        while self._running:
            self.run_once()

    def stop(self) -> None:
        self._running = False

    def run_once(self) -> None:
        """Wait for the next fd, signal or deadline, and run what is ready."""
        for key, _ in self._selector.select(self._timeout()):
            if self._selector.get_map().get(key.fd) is key:  # an earlier callback may unwatch it
                self._call_fd(key)
        now = self.clock()
        while self._timers and self._timers[0].when <= now:
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._call(timer.callback, "timer")

    def _timeout(self) -> float | None:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        # epoll takes at most 2**31 ms (24.8 days): a later timer is waited for in steps
        return min(max(self._timers[0].when - self.clock(), 0.0), MAX_WAIT)

    def abandon(self) -> None:
        """In a freshly forked child: close every descriptor of this loop (none of them is
        the child's) and the signal wake-up, leaving its Python objects as they are.

        Freeing them (what `close` does) would write into memory the child shares with its
        parent: with a thousand workers registered, a private copy of much of the master's
        loop in every worker. They stay until the child leaves with os._exit, which frees
        nothing (so the selector never closes its descriptor a second time).
        """
        signal.set_wakeup_fd(-1)  # first: a signal now is not written to the parent's pipe
        for signum in self._signal_callbacks:
            signal.signal(signum, signal.SIG_DFL)
        wakeup = self._wakeup or ()
        for fd in [*self._selector.get_map(), *self._resting]:
            if fd not in wakeup:
                os.close(fd)
        for fd in wakeup:
            os.close(fd)
        os.close(self._selector.fileno())

    def close(self, registered_too: bool = False) -> None:
        """Release the selector and the signal wake-up; with `registered_too`, also close
        every descriptor registered with the loop (in a freshly forked child: none of them
        is the child's)."""
        if registered_too:
            wakeup = self._wakeup or ()
            for key in [*self._selector.get_map().values(), *self._resting.values()]:
                if key.fd not in wakeup:
                    os.close(key.fd)
        for signum in self._signal_callbacks:
            signal.signal(signum, signal.SIG_DFL)
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None
        self._selector.close()


def _name(callback: Callback) -> str:
    return getattr(callback, "__qualname__", None) or repr(callback)


def _identity(fd: int) -> tuple[int, int] | None:
    """Which file `fd` is (device, inode), or None once it is closed."""
    try:
        stat = os.fstat(fd)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _note_signal(signum: int, frame: object) -> None:
    """Does nothing: the C-level handler already wrote `signum` to the wake-up fd."""
