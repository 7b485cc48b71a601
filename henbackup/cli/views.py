"""henbackupctl's output for people: aligned tables, relative times, IEC sizes.

Each function takes the daemon's reply (what `--json` prints) and returns the text lines;
`now` is passed in so that the output is reproducible in tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from henbackup.cli.progress import transfer
from henbackup.humanize import ago, duration, relative, size
from henbackup.protocol import ControlReply

Row = dict[str, Any]  # one entry of a reply: a backup, a status row, a queued job
Shown = Callable[[ControlReply, float], list[str]]


def table(rows: Sequence[Sequence[object]]) -> list[str]:
    """Columns aligned on the widest cell, two spaces apart, no trailing blanks."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]


def _ago(epoch: float | None, now: float) -> str:
    return "-" if epoch is None else ago(now - epoch)


def _next(epoch: float | None, now: float) -> str:
    return "-" if epoch is None else relative(epoch - now)


def _worker(entry: Row, row: Row) -> Row:
    """The row, its state saying so when its worker is not running (backoff, fatal): then
    nothing runs on time, and that matters more than the row's own state."""
    worker = entry.get("worker")
    if worker in (None, "running", "starting") or row["state"] != "idle":
        return row
    return {**row, "state": f"worker {worker}"}


def _state(row: Row) -> str:
    """`idle`, `queued (2)`, `running 42%`, `worker fatal`."""
    state = row["state"]
    if state == "queued" and row.get("position"):
        return f"queued ({row['position']})"
    if state == "running" and row.get("percent") is not None:
        return ", ".join([f"running {row['percent']:g}%", *transfer(row)])
    return state


def _result(row: Row) -> str:
    result = row.get("result") or "-"
    return f"{result}: {row['error']}" if result == "failed" and row.get("error") else result


def status(reply: ControlReply, now: float) -> list[str]:
    """The STATUS= line, then one row per backup→repository and per repository operation."""
    rows: list[tuple[object, ...]] = [
        ("BACKUP", "REPOSITORY", "STATE", "LAST RUN", "TOOK", "LAST SUCCESS", "NEXT RUN", "RESULT")
    ]
    for backup in reply["backups"]:
        for row in backup["repositories"]:
            rows.append(_status_row(backup["name"], _worker(backup, row), backup["next_run"], now))
    for repository in reply["repositories"]:
        for row in repository["operations"]:
            name = f"({row['operation']})"
            rows.append(_status_row(name, _worker(repository, row), repository["next_run"], now))
    return [reply["status"], "", *table(rows)]


def _status_row(name: str, row: Row, next_run: float | None, now: float) -> tuple[object, ...]:
    took = "-" if row.get("duration") is None else duration(row["duration"])
    return (
        name,
        row["repository"],
        _state(row),
        _ago(row.get("last_attempt"), now),
        took,
        _ago(row.get("last_success"), now),
        _next(next_run, now),
        _result(row),
    )


def snapshots(reply: ControlReply, now: float) -> list[str]:
    """Newest first: id, age, backup, repository, host, size added, paths."""
    from datetime import datetime  # here: the other commands start without it

    rows: list[tuple[object, ...]] = [
        ("ID", "TIME", "BACKUP", "REPOSITORY", "HOST", "ADDED", "PATHS")
    ]
    for snapshot in reply["snapshots"]:
        moment = datetime.fromisoformat(snapshot["time"])
        try:
            when = f"{moment.astimezone():%Y-%m-%d %H:%M} ({ago(now - moment.timestamp())})"
        except OverflowError:  # year 9999 east of UTC: anyone who may write the repository
            when = snapshot["time"]
        added = snapshot.get("bytes_added")
        rows.append(
            (
                snapshot["short_id"],
                when,
                snapshot.get("backup") or "-",
                snapshot["repository"],
                snapshot["host"],
                "-" if added is None else size(added),
                ", ".join(snapshot["paths"]),
            )
        )
    if len(rows) == 1:
        return ["no snapshots"]
    return table(rows)


def queue(reply: ControlReply, now: float) -> list[str]:
    """Running jobs, then waiting ones in the order they will run."""
    rows: list[tuple[object, ...]] = [
        ("POS", "JOB", "STATE", "OPERATION", "BACKUP", "REPOSITORY", "PRIORITY", "SINCE")
    ]
    for job in reply["jobs"]:
        state = job["state"]
        if state == "running" and job.get("percent") is not None:
            state = f"running {job['percent']:g}%"
        rows.append(
            (
                job.get("position") or "-",
                job["job"],
                state,
                job["operation"],
                job.get("backup") or "-",
                job["repository"],
                job["priority"],
                _ago(job.get("queued_at"), now),
            )
        )
    return table(rows) if len(rows) > 1 else ["no job is waiting or running"]


def restored(reply: ControlReply) -> list[str]:
    """Where a restore went, and how much."""
    backup = f" of {reply['backup']}" if reply.get("backup") else ""
    return [
        f"restored snapshot {reply['snapshot'][:8]}{backup} into {restore_target(reply)}: "
        f"{reply['files_restored']} files, {size(reply['bytes_restored'])}"
    ]


def restore_target(reply: ControlReply) -> str:
    """The restore's directory, and why it is a new one when the --target given existed."""
    target = str(reply["target"])
    if not reply.get("target_existed"):
        return target
    return f"{target} (new: {os.path.dirname(target)} exists)"


def _accepted(reply: ControlReply, now: float) -> list[str]:
    """`backup requested`: what --no-wait says (`henbackupctl queue` follows it)."""
    where = f", into {restore_target(reply)}" if reply.get("target") else ""
    return [f"{reply['accepted']} requested{where}"]


def _done(reply: ControlReply, now: float) -> list[str]:
    """Nothing more once its steps were shown as they came; what --no-wait got otherwise."""
    return _accepted(reply, now) if "request" in reply else []


def _restored(reply: ControlReply, now: float) -> list[str]:
    if "request" in reply:
        return _accepted(reply, now)
    return restored(reply) if reply.get("ok") else []  # why failed: its steps, stderr


# What henbackupctl prints of each command's reply (without --json).
SHOW: dict[str, Shown] = {
    "status": status,
    "list-snapshots": snapshots,
    "restore-snapshot": _restored,
    "backup": _done,
    "check": _done,
    "prune": _done,
    "queue": queue,
    "cancel": lambda reply, now: [f"job {reply['job']}: cancel requested (it was {reply['was']})"],
}
