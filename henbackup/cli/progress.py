"""What a waiting henbackupctl shows while its job runs.

On a terminal: one line per step (queued, started, ended) and, under them, a progress bar
redrawn in place with percent, bytes read and sent, the rate achieved and ETA. Elsewhere (a
log, a pipe): the steps only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TextIO

from henbackup.cli import reader_left
from henbackup.humanize import duration, size
from henbackup.printable import printable

STEPS = ("job.queued", "job.started", "job.stalled", "job.succeeded", "job.failed", "job.cancelled")
HOOK_STEPS = ("hook.succeeded", "hook.failed")
BAR_WIDTH = 24


def bar(event: Mapping[str, Any]) -> str:
    """`pictures→aws  [#########-----]  38%  1.10 GiB/2.90 GiB read  900 MiB sent  150 KiB/s
    ETA 3 min` (a restore: `1.10 GiB/2.90 GiB  12.0 MiB/s  ETA 3 min`)."""
    title = "→".join(str(event[k]) for k in ("backup", "repository") if event.get(k))
    fraction = min(max(float(event.get("percent") or 0) / 100, 0.0), 1.0)
    filled = round(fraction * BAR_WIDTH)
    parts = [title, f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}]", f"{fraction * 100:3.0f}%"]
    return "  ".join(parts + transfer(event))


def transfer(fields: Mapping[str, Any]) -> list[str]:
    """A job's transfer as its progress says it: what was read (of the total), what was
    sent, the rate really achieved (sent lately; without an upload, read on average) and
    the time left; each part only when known."""
    done, total = fields.get("bytes_done"), fields.get("total_bytes")
    sent = fields.get("bytes_sent")
    parts = []
    if done is not None:
        read = f"{size(done)}/{size(total)}" if total else size(done)
        parts.append(read if sent is None else f"{read} read")
    if sent is not None:
        parts.append(f"{size(sent)} sent")
    rate = fields.get("send_rate")
    elapsed = float(fields.get("seconds_elapsed") or 0)
    if sent is None and done is not None and elapsed > 0:
        rate = done / elapsed
    if rate is not None:
        parts.append(f"{size(rate)}/s")
    remaining = fields.get("seconds_remaining")
    if remaining is not None:
        parts.append(f"ETA {duration(float(remaining))}")
    return parts


class ProgressDisplay:
    """Shows the events of a job a client waits for on `stream`."""

    def __init__(self, stream: TextIO, terminal: bool) -> None:
        self.stream, self.terminal = stream, terminal
        self.drawn = False  # a bar is on the last line

    def __call__(self, event: Mapping[str, Any]) -> None:
        kind = event.get("kind")
        try:
            if kind == "job.progress" and self.terminal:
                self._draw(bar(event))
            elif kind in STEPS or kind in HOOK_STEPS:
                self._clear()
                print(printable(str(event.get("message", kind))), file=self.stream, flush=True)
        except BrokenPipeError:  # the reader left: the client waits on for the job's end
            reader_left(self.stream)

    def _draw(self, line: str) -> None:
        self.stream.write(f"\r\x1b[K{printable(line)}")
        self.stream.flush()
        self.drawn = True

    def _clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.drawn = False

    def close(self) -> None:
        self._clear()
        self.stream.flush()
