"""Progress that counts what was sent, not only what was read.

A backup tool reads ahead of a slow upload (a bandwidth limit, a slow link) and reports its
reading: restic said 100 % while most of its upload was still to go. The engine measures
what the tool has sent and what it has read and prepared but not sent yet (restic.py knows
how); this module turns that into the rate really achieved over a recent window, a fraction
that is never whole while bytes wait, and the time left from the slower of reading and
sending.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace

from henbackup.engine.base import TransferProgress

WINDOW = 10.0  # seconds over which the sent rate is measured
MIN_SPAN = 1.0  # a rate needs samples at least this far apart
NOT_DONE = 0.999  # the most a fraction says while bytes still wait to be sent


@dataclass(frozen=True)
class Upload:
    """What a running tool has sent to its repository, and what waits to be sent."""

    sent: int
    unsent: int  # read and prepared (packed), not sent yet


def window_rate(samples: Sequence[tuple[float, int]]) -> float | None:
    """Bytes per second between the first and the last (time, bytes) sample; None if
    they are less than MIN_SPAN apart."""
    if len(samples) < 2 or samples[-1][0] - samples[0][0] < MIN_SPAN:
        return None
    (start, first), (end, last) = samples[0], samples[-1]
    return max(0, last - first) / (end - start)


def time_left(read_left: float | None, unsent: int, rate: float | None) -> float | None:
    """The later of the two ends: reading's (what the tool says) and sending's (the bytes
    waiting, at the rate achieved). None if unknown: bytes wait and none left lately."""
    if unsent <= 0:
        return read_left
    if not rate:
        return None
    return max(read_left or 0.0, unsent / rate)


def sent_fraction(read_fraction: float, upload: Upload) -> float:
    """The share of the job that is sent: the fraction read times the share sent of what
    is read (what is still to read is to be sent alike); never whole while bytes wait."""
    if upload.unsent <= 0:
        return read_fraction
    return min(read_fraction * upload.sent / (upload.sent + upload.unsent), NOT_DONE)


class UploadTracker:
    """Turns a tool's progress reports, with the upload measured at each, into progress
    that tells what was sent. One per run; its numbers never go back."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()  # (monotonic time, bytes sent)
        self.sent = 0
        self.fraction = 0.0

    def apply(
        self, progress: TransferProgress, upload: Upload | None, now: float
    ) -> TransferProgress:
        if upload is None:  # not measured: the tool's own word
            return progress
        self.sent = max(self.sent, upload.sent)  # an estimate may wobble; what left, left
        self.samples.append((now, self.sent))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()
        rate = window_rate(self.samples)
        self.fraction = max(self.fraction, sent_fraction(progress.fraction, upload))
        if upload.unsent > 0:
            self.fraction = min(self.fraction, NOT_DONE)
        return replace(
            progress,
            fraction=self.fraction,
            seconds_remaining=time_left(progress.seconds_remaining, upload.unsent, rate),
            bytes_sent=self.sent,
            send_rate=rate,
        )


def estimate(progress: TransferProgress, files: int, size: int) -> TransferProgress:
    """`progress` against a known total of `files` files and `size` bytes: its fraction
    (of the bytes, else of the files) and the time left at the pace so far, as restic
    reckons them once its scan ended. A total of 0 is unknown, as restic says it."""
    done, of = (progress.bytes_done, size) if size else (progress.files_done, files)
    fraction = done / of if of else 0.0
    remaining = None
    if size and progress.bytes_done:
        left = max(0, size - progress.bytes_done)
        remaining = progress.seconds_elapsed * left / progress.bytes_done
    return replace(
        progress,
        fraction=min(1.0, fraction),
        total_files=files or None,
        total_bytes=size or None,
        seconds_remaining=remaining,
    )


def finished(
    last: TransferProgress | None, files: int, size: int, seconds: float, sent: int = 0
) -> TransferProgress | None:
    """The report of a backup that ended well, `files` files and `size` bytes read and
    (when sending was measured) at least `sent` bytes sent; None if the tool's last report
    `last` already said so (restic 0.18 does, restic 0.14 and borg do not)."""
    if last is not None and (last.fraction, last.files_done, last.bytes_done) == (1.0, files, size):
        return None
    base = last or TransferProgress(0.0, 0, None, 0, None, seconds)
    return replace(
        base,
        fraction=1.0,
        files_done=files,
        total_files=files or None,
        bytes_done=size,
        total_bytes=size or None,
        seconds_elapsed=max(base.seconds_elapsed, seconds),
        seconds_remaining=0.0,
        bytes_sent=None if base.bytes_sent is None else max(base.bytes_sent, sent),
    )
