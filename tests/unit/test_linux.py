"""henbackup.linux against the real kernel: each wrapper works, and a refusal is an OSError
with the errno, the call's name and the path."""

from __future__ import annotations

import errno
import os
import select
import threading
from pathlib import Path

import pytest

from henbackup import linux
from henbackup.linux import IN_CREATE, IN_MODIFY, Inotify, inotify_events

PROC_SUPER_MAGIC = 0x9FA0


def test_set_comm_names_the_calling_thread_with_at_most_15_bytes():
    seen: list[str] = []

    def named() -> None:
        linux.set_comm("hb:a-rather-long-backup-name")
        seen.append(Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text())

    thread = threading.Thread(target=named)  # not our own main thread: pytest keeps its name
    thread.start()
    thread.join()
    assert seen == ["hb:a-rather-lon\n"]


def test_set_comm_cuts_between_characters_never_inside_one():
    seen: list[bytes] = []

    def named() -> None:
        linux.set_comm("hb:pictures-b→aws")  # the arrow is 3 bytes: bytes 14 to 16
        seen.append(Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_bytes())

    thread = threading.Thread(target=named)
    thread.start()
    thread.join()
    assert seen == [b"hb:pictures-b\n"]  # not b"hb:pictures-b\xe2\x86", the arrow cut


def test_inotify_reports_the_watch_the_mask_and_the_name(tmp_path):
    inotify = Inotify()
    try:
        assert inotify.read() == b""  # nothing yet, and no blocking
        directory = inotify.add_watch(tmp_path, IN_CREATE)
        (tmp_path / "new file").write_bytes(b"x")
        file = inotify.add_watch(str(tmp_path / "new file"), IN_MODIFY)
        (tmp_path / "new file").write_bytes(b"y")
        assert select.select([inotify], [], [], 10)[0] == [inotify]
        events = list(inotify_events(inotify.read()))
        assert events[0] == (directory, IN_CREATE, b"new file")
        assert (file, IN_MODIFY, b"") in events
        (tmp_path / "new file").write_bytes(b"z")
        assert inotify.drain() == {file}
        assert inotify.drain() == set()
    finally:
        inotify.close()
    inotify.close()  # twice is no error
    assert inotify.fileno() == -1


def test_inotify_refusals_are_oserrors_with_errno_and_path(tmp_path):
    inotify = Inotify()
    try:
        with pytest.raises(OSError) as refused:
            inotify.add_watch(tmp_path / "missing", IN_MODIFY)
        assert refused.value.errno == errno.ENOENT
        assert refused.value.strerror == f"inotify_add_watch: {os.strerror(errno.ENOENT)}"
        assert refused.value.filename == tmp_path / "missing"
        inotify.rm_watch(12345)  # already dropped by the kernel (EINVAL): no error
    finally:
        inotify.close()


def test_statfs_type_names_the_file_system(tmp_path):
    assert linux.statfs_type(b"/proc") == PROC_SUPER_MAGIC
    with pytest.raises(OSError) as refused:
        linux.statfs_type(os.fsencode(tmp_path / "missing"))
    assert refused.value.errno == errno.ENOENT
    assert refused.value.strerror.startswith("statfs: ")


def test_a_timerfd_rings_once_armed_and_refusals_say_which_call():
    fd = linux.timerfd_create(linux.CLOCK_REALTIME)
    try:
        linux.timerfd_settime(fd, 0, 0.01)  # relative: in 10 ms
        assert select.select([fd], [], [], 10)[0] == [fd]
        assert int.from_bytes(os.read(fd, 8), "little") == 1
        linux.timerfd_settime(fd, 0, 0.0)  # disarmed
        with pytest.raises(BlockingIOError):
            os.read(fd, 8)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as refused:
        linux.timerfd_settime(fd, 0, 1.0)
    assert refused.value.errno == errno.EBADF
    assert refused.value.strerror == f"timerfd_settime: {os.strerror(errno.EBADF)}"


def test_a_timer_past_what_a_c_long_holds_is_armed_at_its_end():
    """On a 32-bit machine, any time after 2038: the timer wakes early, and its owner arms
    it again (it raised struct.error, which killed the worker at each start)."""
    fd = linux.timerfd_create(linux.CLOCK_REALTIME)
    try:
        linux.timerfd_settime(fd, linux.TFD_TIMER_ABSTIME, 1e30)  # past any C long
    finally:
        os.close(fd)
