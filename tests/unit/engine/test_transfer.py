"""Progress that counts what was sent: the rate over a window, the time left from the slower
of reading and sending, a percent never whole before the upload is; and what restic's
/proc counters say it sent."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from henbackup.engine.base import TransferProgress
from henbackup.engine.restic import (
    LEAVING,
    TEMP_PACK,
    PackBook,
    dropped_since,
    share_out,
    upload_of,
)
from henbackup.engine.stall import OpenFile, files_and_sockets, open_files
from henbackup.engine.transfer import (
    NOT_DONE,
    Upload,
    UploadTracker,
    estimate,
    finished,
    sent_fraction,
    time_left,
    window_rate,
)

KIB, MIB = 1024, 1024**2


def read(fraction: float, remaining: float | None = None) -> TransferProgress:
    """restic's own word: 12 MiB to read, `fraction` of it read."""
    return TransferProgress(fraction, 1, 1, int(fraction * 12 * MIB), 12 * MIB, 1.0, remaining)


def test_the_rate_is_what_was_sent_between_the_window_ends() -> None:
    assert window_rate([]) is None
    assert window_rate([(5.0, 100)]) is None
    assert window_rate([(5.0, 100), (5.5, 900)]) is None  # too short to say
    assert window_rate([(5.0, 0), (6.0, 10), (9.0, 400 * KIB)]) == 100 * KIB
    assert window_rate([(5.0, 10), (7.0, 10)]) == 0.0


def test_the_time_left_is_the_later_of_reading_and_sending() -> None:
    assert time_left(30.0, 0, None) == 30.0  # nothing waits: restic's word
    assert time_left(None, 0, 1000.0) is None
    assert time_left(0.0, 2 * MIB, 200 * KIB) == pytest.approx(10.24)  # read all, sending
    assert time_left(60.0, 2 * MIB, 200 * KIB) == 60.0  # reading is slower
    assert time_left(None, 2 * MIB, 200 * KIB) == pytest.approx(10.24)
    assert time_left(5.0, 2 * MIB, 0.0) is None  # bytes wait, none left lately
    assert time_left(5.0, 2 * MIB, None) is None


def test_the_fraction_counts_what_is_sent_and_is_never_whole_while_bytes_wait() -> None:
    assert sent_fraction(0.4, Upload(sent=5, unsent=0)) == 0.4
    assert sent_fraction(1.0, Upload(sent=3 * MIB, unsent=9 * MIB)) == 0.25
    assert sent_fraction(0.5, Upload(sent=3 * MIB, unsent=1 * MIB)) == 0.375
    assert sent_fraction(1.0, Upload(sent=10**12, unsent=1)) == NOT_DONE
    assert sent_fraction(1.0, Upload(sent=12 * MIB, unsent=0)) == 1.0


def test_a_throttled_upload_read_at_once_goes_at_its_own_pace() -> None:
    """restic read 12 MiB in a second and says 100 %; 1 MiB/s leaves: what today's bar
    said as "100 % ... 5 MiB/s" is now the upload's percent, rate and time left."""
    tracker = UploadTracker(window=4.0)
    shown = []
    for second in range(13):
        sent = second * MIB
        upload = Upload(sent=sent, unsent=12 * MIB - sent)
        shown.append(tracker.apply(read(1.0, 0.0), upload, now=100.0 + second))
    first, later, last = shown[0], shown[6], shown[-1]
    assert (first.fraction, first.bytes_sent, first.send_rate) == (0.0, 0, None)
    assert first.seconds_remaining is None  # bytes wait, no rate yet
    assert later.bytes_done == 12 * MIB and later.bytes_sent == 6 * MIB
    assert later.fraction == 0.5
    assert later.send_rate == MIB  # over the last 4 seconds
    assert later.seconds_remaining == 6.0
    assert all(progress.fraction < 1.0 for progress in shown[:-1])
    assert (last.fraction, last.seconds_remaining) == (1.0, 0.0)  # all sent


def test_the_rate_window_forgets_what_is_older() -> None:
    tracker = UploadTracker(window=4.0)
    for second, sent in enumerate([0, 4, 8, 12, 16, 16, 16, 16, 16, 17]):
        progress = tracker.apply(read(1.0), Upload(sent * MIB, MIB), now=float(second))
    assert progress.send_rate == pytest.approx(MIB / 4)  # 16 MiB → 17 MiB in 4 s
    assert progress.seconds_remaining == 4.0


def test_what_is_shown_never_goes_back() -> None:
    tracker = UploadTracker()
    tracker.apply(read(0.5), Upload(sent=6 * MIB, unsent=0), now=0.0)
    # an estimate that wobbles down, a new pack that waits: sent and percent hold
    held = tracker.apply(read(0.6), Upload(sent=5 * MIB, unsent=4 * MIB), now=1.0)
    assert held.bytes_sent == 6 * MIB and held.fraction == 0.5
    assert held.send_rate == 0.0 and held.seconds_remaining is None


def test_without_a_measure_the_tool_s_word_stands() -> None:
    progress = read(0.3, 12.0)
    assert UploadTracker().apply(progress, None, now=0.0) is progress


def test_restic_s_upload_from_what_it_wrote_and_its_open_temporary_packs() -> None:
    # Measured on restic 0.14 to rclone's REST server at 1 MiB/s, 4 s in (KiB): a 12 MiB
    # pack written at once, 4480 KiB of it read back and sent.
    assert upload_of(16744 * KIB, [OpenFile(12289 * KIB, 4480 * KIB)]) == Upload(
        sent=4467 * KIB + 512, unsent=7809 * KIB
    )
    # restic 0.18: one pack sent, one written and kept open, never sent (not unsent)
    packs = [
        OpenFile(12289 * KIB, 6464 * KIB),
        OpenFile(KIB, KIB),
        OpenFile(3648 * KIB, 3648 * KIB),
    ]
    assert upload_of(22379 * KIB, packs) == Upload(sent=6452 * KIB + 512, unsent=5825 * KIB)
    assert upload_of(24589 * KIB, []) == Upload(sent=12294 * KIB + 512, unsent=0)  # all closed
    assert upload_of(100, [OpenFile(4 * MIB, 4 * MIB)]) == Upload(sent=0, unsent=0)  # writing


def test_restic_s_upload_to_s3_from_what_it_wrote_besides_its_packs() -> None:
    """Measured on restic 0.14 to moto's S3 at 256 KiB/s: a 3 MiB file in one pack, read
    back at once to be sent (its position stays at its end) and trickled to a socket."""
    book = PackBook()
    tree, data = OpenFile(1563, 1563, inode=50), OpenFile(3146088, 3146088, inode=37)
    assert book.see([tree, data], 2, 3420131, now=1.0) == (3147651, 3146088 + 1563 - 272480)
    assert book.see([data], 1, 3552770, now=1.5) == (3147651, 2742532)  # the tree pack sent
    packed, leaving = book.see([data], 1, 4470843, now=5.0)
    assert (packed, leaving) == (3147651, 3147651 - 1323192)
    # what left is what restic wrote besides its packs, not half of it; the rest waits
    assert upload_of(4470843, [data], 0, packed, leaving) == Upload(sent=1323192, unsent=1824459)
    assert upload_of(4470843, [data]) == Upload(sent=662377, unsent=0)  # as /proc says alone
    # bytes left lately: never nothing waiting, even past what the pack held
    assert book.see([data], 1, 6600000, now=12.0) == (3147651, 1)
    assert book.see([data], 1, 6600000, now=12.0 + LEAVING) == (3147651, 0)  # none since


def test_restic_0_18_s_pack_never_sent_does_not_wait_on_s3() -> None:
    """Measured on restic 0.18 to moto's S3 at 256 KiB/s: three packs written whole and
    left open, a 3 MiB one sent, a 1 MiB one never sent, a small one (the tree); one
    socket: what leaves is the largest pack's."""
    never = OpenFile(1087088, 1087088, inode=47)
    data = OpenFile(3146005, 3146005, inode=24)
    tree = OpenFile(747, 747, inode=29)
    book = PackBook()
    assert book.see([never, data, tree], 1, 4542941, now=1.0) == (4233840, 3146005 - 309101)
    assert book.see([never, data, tree], 1, 5918895, now=5.0) == (4233840, 1460950)
    packed, leaving = book.see([never, data, tree], 1, 7382108, now=11.5)
    assert (packed, leaving) == (4233840, 1)  # sent all but the bytes about to leave
    assert upload_of(7382108, [never, data, tree], 0, packed, leaving) == Upload(
        sent=3148268, unsent=1
    )


def test_what_leaves_is_shared_among_the_packs_being_sent() -> None:
    """Measured on restic 0.18 to moto's S3 at 1 MiB/s: 20 MiB in two packs sent side by
    side on two sockets; the small pack's share it did not need goes to the other."""
    left = {3: 7380001, 7: 13593085, 9: 5000}
    share_out(left, [3, 7], 2 * MIB)
    assert left == {3: 7380001 - MIB, 7: 13593085 - MIB, 9: 5000}
    share_out(left, [3, 7], 14 * MIB)
    assert left == {3: 0, 7: 13593085 + 7380001 - 16 * MIB, 9: 5000}


def test_packs_not_seen_are_counted_as_written_twice() -> None:
    """A fast repository (a local one) writes and sends packs between two looks: what was
    written besides the packs seen is not all sent, half of it is."""
    seen = OpenFile(4 * MIB, 4 * MIB, inode=3)
    assert upload_of(24 * MIB, [], packed=4 * MIB) == Upload(sent=12 * MIB, unsent=0)
    assert upload_of(9 * MIB, [seen], packed=4 * MIB) == Upload(sent=4 * MIB, unsent=0)


def test_a_pack_closed_unsent_counts_as_dropped_not_sent() -> None:
    waiting, sending = OpenFile(3 * MIB, 3 * MIB, inode=7), OpenFile(6 * MIB, MIB, inode=8)
    # restic 0.18 closes a written pack it never sent: little was written meanwhile
    assert dropped_since([waiting, sending], [sending], grown=100 * KIB) == 2972 * KIB
    # the pack was sent whole between the two looks: as much was written
    assert dropped_since([waiting, sending], [sending], grown=3 * MIB) == 0
    assert dropped_since([waiting, sending], [waiting], grown=0) == 0  # seen being sent
    assert dropped_since([waiting], [waiting, sending], grown=0) == 0
    written = 2 * 6 * MIB + 3 * MIB  # a pack sent and closed, the dropped one written once
    assert upload_of(written, [], dropped=3 * MIB) == Upload(sent=6 * MIB, unsent=0)


def test_open_files_of_a_process_deleted_ones_too() -> None:
    script = (
        "import os, socket, sys, tempfile\n"
        "client = socket.socket()\n"
        f"file = tempfile.NamedTemporaryFile(prefix={TEMP_PACK!r})\n"
        "os.unlink(file.name)\n"  # as restic does
        "file.write(b'x' * 5000); file.flush(); file.seek(1234)\n"
        "print('ready', flush=True); sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        (found,) = open_files(child.pid, TEMP_PACK) or [None]
        assert found is not None and (found.size, found.position) == (5000, 1234)
        assert found.inode > 0
        assert open_files(child.pid, "no-such-name") == []
        assert files_and_sockets(child.pid, "no-such-name") == ([], 1)
    finally:
        child.kill()
        child.wait()
    assert open_files(child.pid, TEMP_PACK) is None


def _read(files: int, size: int, seconds: float) -> TransferProgress:
    return TransferProgress(0.0, files, None, size, None, seconds)


def test_a_known_total_gives_a_percent_and_the_time_left_at_the_pace_so_far() -> None:
    progress = estimate(_read(1, 250, 10.0), files=4, size=1000)
    assert (progress.fraction, progress.total_files, progress.total_bytes) == (0.25, 4, 1000)
    assert progress.seconds_remaining == 30.0
    # only empty files: their count; read more than the total (it grew): whole, none left
    assert estimate(_read(1, 0, 1.0), files=4, size=0).fraction == 0.25
    assert estimate(_read(1, 0, 1.0), files=4, size=0).total_bytes is None
    grown = estimate(_read(5, 1200, 2.0), files=4, size=1000)
    assert (grown.fraction, grown.seconds_remaining) == (1.0, 0.0)
    assert estimate(_read(0, 0, 0.0), 0, 0).seconds_remaining is None


def test_a_backup_that_ended_well_ends_at_100_once() -> None:
    last = estimate(_read(1, 250, 10.0), files=4, size=1000)
    final = finished(last, 4, 1000, 12.0)
    assert final == replace(
        last,
        fraction=1.0,
        files_done=4,
        bytes_done=1000,
        seconds_elapsed=12.0,
        seconds_remaining=0.0,
    )
    assert finished(final, 4, 1000, 12.0) is None  # the tool said so itself
    assert finished(None, 2, 10, 1.0) == TransferProgress(1.0, 2, 2, 10, 10, 1.0, 0.0)
    # what was sent: at least what the repository gained, never less than measured
    sending = replace(last, bytes_sent=300)
    assert finished(sending, 4, 1000, 12.0, sent=900).bytes_sent == 900  # type: ignore[union-attr]
    assert finished(sending, 4, 1000, 12.0, sent=100).bytes_sent == 300  # type: ignore[union-attr]
