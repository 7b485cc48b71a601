"""Children forked with a channel and watched from their parent's loop (process.start_watched,
and start_watched_many for a burst), as the master forks its workers and one-off jobs, and a
worker its job processes: real forks, real socketpairs, real pidfds."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from typing import Any

import pytest

from henbackup.channel import (
    Channel,
    ChannelMessage,
    Heartbeat,
    JobEvent,
    JobState,
    OneOffResult,
    Ready,
)
from henbackup.loop import Loop
from henbackup.process import Watched, WatchedPlan, start_watched, start_watched_many

DEADLINE = 30.0


class Parent:
    """What the parent's callbacks were given, in order."""

    def __init__(self) -> None:
        self.loop = Loop()
        self.heard: list[ChannelMessage] = []
        self.malformed: list[str] = []
        self.status: int | None = None

    def start(self, body: Any, comm: str = "hbtest") -> Watched:
        return start_watched(
            self.loop,
            comm,
            body,
            heard=self.heard.extend,
            exited=self.exited,
            malformed=lambda error: self.malformed.append(str(error)),
        )

    def exited(self, status: int) -> None:
        assert self.status is None, "exited twice"
        self.status = status

    def until_exited(self) -> int:
        deadline = time.monotonic() + DEADLINE
        while self.status is None:
            assert time.monotonic() < deadline, "the child was never reaped"
            self.loop.call_later(0.5, lambda: None)  # a wait that hears nothing ends too
            self.loop.run_once()
        return os.waitstatus_to_exitcode(self.status)


def test_the_child_runs_named_in_its_own_group_and_its_last_words_are_heard_before_its_exit():
    parent = Parent()
    inherited = os.pipe()  # registered with the parent's loop: the child must not keep it
    parent.loop.add_reader(inherited[0], lambda: None)

    def body(channel: Channel) -> int:
        with open("/proc/self/comm") as comm:
            name = comm.read().strip()
        try:
            os.fstat(inherited[0])
            kept = True
        except OSError:
            kept = False
        group = os.getpgid(0) == os.getpid()
        channel.send(Ready())
        channel.send(JobEvent("job.x", "said", {"comm": name, "group": group, "kept": kept}))
        channel.send(OneOffResult({"ok": True}))  # its last words, then it exits at once
        return 5

    watched = parent.start(body, comm="hbjob:a-long-name-cut")
    assert watched.pid > 0
    assert parent.until_exited() == 5
    said = {"comm": "hbjob:a-long-na", "group": True, "kept": False}
    assert parent.heard == [Ready(), JobEvent("job.x", "said", said), OneOffResult({"ok": True})]
    assert parent.malformed == []
    assert watched.channel is None  # closed once the child was reaped
    assert watched.send(Heartbeat()) is False
    for fd in inherited:
        os.close(fd)


def test_a_malformed_line_costs_one_error_and_the_lines_around_it_are_heard():
    parent = Parent()

    def body(channel: Channel) -> int:
        channel.send(Heartbeat())
        channel.sock.sendall(b'{"type": "job", "state": "asleep"}\n{"type": "job"}\nnot json\n')
        channel.send(JobState("idle", exit=3, requests=("r1",)))
        return 0

    parent.start(body)
    assert parent.until_exited() == 0
    assert parent.heard == [Heartbeat(), JobState("idle", exit=3, requests=("r1",))]
    assert parent.malformed == [
        'malformed message: \'state\' of job must be "running" or "idle", not a string',
        "malformed message: job needs 'state'",
        "malformed message: expected one JSON object",
    ]


def test_the_parent_tells_the_child_and_the_child_answers():
    parent = Parent()

    def body(channel: Channel) -> int:
        channel.sock.settimeout(DEADLINE)
        received = None
        while not received:
            received = channel.receive(lambda error: None)
        channel.send(JobEvent("job.echo", "heard", {"asked": received[0].kind}))
        return 0

    watched = parent.start(body)
    assert watched.send(JobEvent("job.ask", "tell me", {}))
    assert parent.until_exited() == 0
    assert parent.heard == [JobEvent("job.echo", "heard", {"asked": "job.ask"})]


def test_a_child_that_crashes_is_reaped_with_its_status():
    parent = Parent()

    def body(channel: Channel) -> int:
        raise RuntimeError("a bug in the child")

    parent.start(body)
    assert parent.until_exited() == 70  # process.EXIT_CRASHED
    assert parent.heard == []


def test_a_child_is_reaped_even_when_hearing_its_last_words_fails():
    """A bug in the parent's handler of what the child said last costs that callback (the
    master's loop reports it), never a zombie left behind."""
    parent = Parent()
    failures: list[str] = []
    parent.loop.on_error = lambda source, error: failures.append(str(error))

    def body(channel: Channel) -> int:
        channel.send(Heartbeat())
        return 4

    def heard(messages: list[ChannelMessage]) -> None:
        raise KeyError("a bug")  # each time: at the child's exit too

    start_watched(parent.loop, "hbtest", body, heard, parent.exited, parent.malformed.append)
    assert parent.until_exited() == 4
    assert failures and set(failures) == {"'a bug'"}


def test_the_child_closes_the_parents_descriptors_and_frees_none_of_its_loop():
    """Freeing the parent's loop in the child would write into the pages they share (at
    1,000 workers, much of the master's loop copied into each): its descriptors are closed,
    its objects left as they are."""
    parent = Parent()
    inherited = [os.pipe() for _ in range(3)]
    for read_end, _ in inherited:
        parent.loop.add_reader(read_end, lambda: None)
    keys = dict(parent.loop._selector.get_map())

    def body(channel: Channel) -> int:
        closed = []
        for read_end, _ in inherited:
            try:
                os.fstat(read_end)
            except OSError:
                closed.append(read_end)
        kept = parent.loop._selector.get_map()
        same = kept is not None and all(kept.get(fd) is key for fd, key in keys.items())
        channel.send(JobEvent("job.x", "said", {"closed": len(closed), "same": same}))
        return 0

    parent.start(body)
    assert parent.until_exited() == 0
    (said,) = [message for message in parent.heard if isinstance(message, JobEvent)]
    assert said.fields == {"closed": 3, "same": True}
    parent.loop.close()


def _socket_inodes() -> set[int]:
    """The inodes of the sockets this process holds."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                found.add(int(target[len("socket:[") : -1]))
    return found


class Burst:
    """Children forked by one `start_watched_many`: each one's exit status, by index."""

    def __init__(self, count: int) -> None:
        self.loop = Loop()
        self.heard: list[JobEvent] = []
        self.status: dict[int, int] = {}
        self.count = count

    def plan(self, index: int, body: Any) -> WatchedPlan:
        def heard(messages: list[ChannelMessage]) -> None:
            self.heard += [m for m in messages if isinstance(m, JobEvent)]

        def exited(status: int) -> None:
            self.status[index] = os.waitstatus_to_exitcode(status)

        return WatchedPlan(f"hbburst{index}", body, heard, exited, lambda error: None)

    def until_exited(self, count: int) -> None:
        deadline = time.monotonic() + DEADLINE
        while len(self.status) < count:
            assert time.monotonic() < deadline, "a child was never reaped"
            self.loop.call_later(0.5, lambda: None)
            self.loop.run_once()


def test_a_burst_gives_each_child_its_own_channel_and_none_of_its_siblings():
    """Forked one right after the other, a child must not keep a sibling's channel (or the
    parent's end of its own): each child's end would stay open after that child died."""
    burst = Burst(3)

    def body_for(index: int) -> Any:
        def body(channel: Channel) -> int:
            own = os.fstat(channel.fileno()).st_ino
            held = sorted(_socket_inodes())
            channel.send(JobEvent("job.x", "said", {"index": index, "own": own, "held": held}))
            return 10 + index

        return body

    children = start_watched_many(burst.loop, [burst.plan(n, body_for(n)) for n in range(3)])
    parent_ends = {os.fstat(child.channel.fileno()).st_ino for child in children}
    burst.until_exited(3)
    assert burst.status == {0: 10, 1: 11, 2: 12}
    said = sorted((event.fields for event in burst.heard), key=lambda fields: fields["index"])
    assert [fields["index"] for fields in said] == [0, 1, 2]
    children_ends = {fields["own"] for fields in said}
    assert len(children_ends) == 3
    for fields in said:
        held = set(fields["held"])
        assert fields["own"] in held
        assert not held & parent_ends, "a child kept a parent's end"
        assert not held & (children_ends - {fields["own"]}), "a child kept a sibling's end"
    assert [child.channel for child in children] == [None, None, None]  # closed once reaped


def test_a_burst_whose_fork_fails_watches_the_children_forked_before_it(monkeypatch):
    """A fake: os.fork refuses the second child (the real one cannot be made to fail here,
    as root). The first child is watched and returned, the second's channel is closed; a
    burst whose first fork fails raises."""
    burst = Burst(2)
    real_fork, forks = os.fork, []

    def fork() -> int:
        forks.append(1)
        if len(forks) == 2:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real_fork()

    monkeypatch.setattr(os, "fork", fork)
    before = _socket_inodes()
    plans = [burst.plan(n, lambda channel: 0) for n in range(2)]
    children = start_watched_many(burst.loop, plans)
    assert len(children) == 1
    burst.until_exited(1)
    assert burst.status == {0: 0}
    assert _socket_inodes() == before  # the failed pair and the reaped child's channel

    forks.clear()
    forks.append(1)  # the next fork is the "second": it fails
    with pytest.raises(BlockingIOError):
        start_watched_many(burst.loop, [burst.plan(2, lambda channel: 0)])
    assert _socket_inodes() == before


def test_a_burst_child_whose_pidfd_cannot_be_opened_is_killed_with_the_later_ones(monkeypatch):
    """A fake: pidfd_open fails (ENOMEM) for the second of three children; the real call
    cannot be made to fail here, its descriptor being the one just freed. The first child is
    watched and returned; the second and third, which no one would watch, are killed and
    reaped, their channels closed; a burst whose first pidfd fails raises."""
    burst = Burst(3)
    real_fork, real_pidfd_open = os.fork, os.pidfd_open
    forked: list[int] = []

    def fork() -> int:
        pid = real_fork()
        if pid:
            forked.append(pid)
        return pid

    def pidfd_open(pid: int, flags: int = 0) -> int:
        if pid == forked[fail_at]:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        return real_pidfd_open(pid, flags)

    monkeypatch.setattr(os, "fork", fork)
    monkeypatch.setattr(os, "pidfd_open", pidfd_open)
    before = _socket_inodes()
    fail_at = 1
    sleeping = [burst.plan(n, lambda channel: time.sleep(DEADLINE) or 0) for n in range(3)]
    children = start_watched_many(burst.loop, sleeping)
    assert [child.pid for child in children] == forked[:1]
    for pid in forked[1:]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # killed and reaped: not even a zombie
    os.kill(forked[0], signal.SIGTERM)
    burst.until_exited(1)
    assert burst.status == {0: -signal.SIGTERM}
    assert _socket_inodes() == before

    forked.clear()
    fail_at = 0
    with pytest.raises(OSError, match="Cannot allocate memory"):
        start_watched_many(burst.loop, [burst.plan(3, lambda channel: 0)])
    with pytest.raises(ProcessLookupError):
        os.kill(forked[0], 0)
    assert _socket_inodes() == before


def test_a_parent_never_waits_for_a_child_that_does_not_read_and_what_waited_arrives_in_order():
    """A member of group henbackup can make the master send to a worker at will; a worker
    that does not read (hung, stopped) once made the master's loop wait in sendall."""
    parent = Parent()
    go_r, go_w = os.pipe()
    count = 2_000  # ~200 KB: far more than the socket buffer takes (~280 small messages)

    def body(channel: Channel) -> int:
        os.close(go_w)
        os.read(go_r, 1)  # not reading the channel until the parent has sent them all
        channel.sock.settimeout(DEADLINE)
        received: list[ChannelMessage] = []
        while len(received) < count:
            batch = channel.receive(lambda error: None)
            assert batch is not None
            received += batch
        in_order = [m.operation for m in received] == [f"j{n}" for n in range(count)]
        return 0 if in_order else 1

    child = parent.start(body)
    os.close(go_r)
    for number in range(count):
        assert child.send(JobState("idle", None, f"j{number}"))  # returns at once
    assert child.channel is not None and child.channel.unsent, "the socket took it all"
    os.write(go_w, b"!")
    assert parent.until_exited() == 0
    assert child.channel is None and child._room is None
    os.close(go_w)


def test_a_child_that_left_a_megabyte_unread_is_told_nothing_more():
    parent = Parent()
    go_r, go_w = os.pipe()

    def body(channel: Channel) -> int:
        os.read(go_r, 1)
        return 0

    child = parent.start(body)
    big = JobEvent("job.x", "x" * 60_000, {}, ())
    sent = 0
    while child.send(big):
        sent += 1
        assert sent < 100, "never refused"
    assert sent >= 17  # 1 MiB was taken before the refusal
    os.write(go_w, b"!")
    assert parent.until_exited() == 0
    for fd in (go_r, go_w):
        os.close(fd)


def test_a_signal_to_a_child_just_forked_never_reaches_the_parent_s_handlers():
    """A reload stops a worker forked an instant before: the SIGTERM is the child's (it
    dies of it), never written to the parent's signal wake-up as if the parent got it (the
    master would stop). Many registered descriptors widen the window the child needs."""
    parent = Parent()
    told: list[int] = []
    parent.loop.on_signal(signal.SIGTERM, lambda: told.append(signal.SIGTERM))
    pipes = [os.pipe() for _ in range(150)]
    for read_end, _ in pipes:
        parent.loop.add_reader(read_end, lambda: None)
    try:
        for _ in range(20):
            parent.status = None
            child = parent.start(lambda channel: time.sleep(30) or 0)
            os.kill(child.pid, signal.SIGTERM)
            assert parent.until_exited() == -signal.SIGTERM
            for _ in range(3):  # a byte in the wake-up pipe is read within a turn
                parent.loop.call_later(0.01, lambda: None)
                parent.loop.run_once()
            assert told == []
    finally:
        for read_end, write_end in pipes:
            parent.loop.remove_reader(read_end)
            os.close(read_end)
            os.close(write_end)
        parent.loop.close()
