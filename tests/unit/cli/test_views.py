"""henbackupctl's tables for people: exact lines for given replies and a fixed `now`."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from henbackup.cli import views

NOW = 1_710_000_000.0  # 2024-03-09 16:00:00 UTC
ZONE = "Asia/Kolkata"  # +05:30, no DST: a time shown in UTC or the snapshot's zone cannot pass


@pytest.fixture
def zone() -> Iterator[None]:
    """Local time is ZONE's for the test (snapshot times are shown in local time)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = ZONE
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def row(repository: str, **fields: object) -> dict[str, object]:
    """One backup→repository row as `status` replies it (commands._row)."""
    empty = {
        "repository": repository,
        "state": "idle",
        "job": None,
        "position": None,
        "percent": None,
        "last_attempt": None,
        "last_success": None,
        "result": None,
        "duration": None,
        "error": None,
        "snapshot": None,
        "snapshots": None,
    }
    return {**empty, **fields}


STATUS = {
    "ok": True,
    "status": "2 backups; running: pictures→aws 42%; queued: 1",
    "daemon": {
        "pid": 123,
        "config": "/etc/henbackup/henbackup.toml",
        "watcher": None,
        "config_rejected": None,
    },
    "backups": [
        {
            "name": "pictures",
            "worker": "running",
            "run": "running",
            "next_run": NOW + 3600,
            "repositories": [
                row(
                    "aws",
                    state="running",
                    job="j1",
                    percent=42.0,
                    last_attempt=NOW - 7200,
                    last_success=NOW - 7200,
                    result="succeeded",
                    duration=75.0,
                    snapshot="abcd1234",
                ),
                row(
                    "local",
                    state="queued",
                    job="j2",
                    position=1,
                    last_attempt=NOW - 90_000,
                    result="failed",
                    duration=3.5,
                    error="repository is locked",
                ),
            ],
        },
        {
            "name": "music",
            "worker": "backoff",
            "run": "idle",
            "next_run": NOW - 5,  # overdue
            "repositories": [row("aws")],
        },
    ],
    "repositories": [
        {
            "name": "aws",
            "worker": "running",
            "run": "idle",
            "next_run": NOW + 2 * 86400,
            "operations": [
                row(
                    "aws",
                    operation="check",
                    last_attempt=NOW - 30,
                    last_success=NOW - 30,
                    result="cancelled",
                    duration=600,
                ),
                row("aws", operation="prune", state="running"),
            ],
        },
        {"name": "local", "worker": None, "run": "idle", "next_run": None, "operations": []},
    ],
}


def test_status_is_the_status_line_then_one_row_per_run() -> None:
    assert views.status(STATUS, NOW) == [
        "2 backups; running: pictures→aws 42%; queued: 1",
        "",
        "BACKUP    REPOSITORY  STATE           LAST RUN  TOOK        LAST SUCCESS  NEXT RUN  "
        "RESULT",
        "pictures  aws         running 42%     2 h ago   1 min 15 s  2 h ago       in 1 h    "
        "succeeded",
        "pictures  local       queued (1)      1 d ago   3.5 s       -             in 1 h    "
        "failed: repository is locked",
        "music     aws         worker backoff  -         -           -             now       -",
        "(check)   aws         idle            30 s ago  10 min 0 s  30 s ago      in 2 d    "
        "cancelled",
        "(prune)   aws         running         -         -           -             in 2 d    -",
    ]


def test_a_running_row_shows_what_was_read_and_sent_the_rate_and_the_time_left() -> None:
    running = row(
        "aws",
        state="running",
        percent=30.0,
        bytes_done=3 * 1024**3,
        total_bytes=3 * 1024**3,
        bytes_sent=900 * 1024**2,
        send_rate=150 * 1024.0,
        seconds_remaining=14700.0,
    )
    reply = {**STATUS, "backups": [{**STATUS["backups"][0], "repositories": [running]}]}
    state = "running 30%, 3.00 GiB/3.00 GiB read, 900.0 MiB sent, 150.0 KiB/s, ETA 4 h 5 min"
    assert views.status(reply, NOW)[3].startswith(f"pictures  aws         {state}  ")


def test_status_of_a_daemon_without_anything_is_its_header() -> None:
    reply = {"ok": True, "status": "0 backups; idle", "backups": [], "repositories": []}
    assert views.status(reply, NOW) == [
        "0 backups; idle",
        "",
        "BACKUP  REPOSITORY  STATE  LAST RUN  TOOK  LAST SUCCESS  NEXT RUN  RESULT",
    ]


def test_status_shows_states_without_details_as_they_are() -> None:
    reply = {
        "status": "1 backup; idle",
        "backups": [
            {
                "name": "b",
                "next_run": None,
                "repositories": [
                    row("queued-nowhere", state="queued"),  # no position known yet
                    row("r", state="running", percent=99.5, last_attempt=NOW - 0.5),
                    row("f", result="failed", error=None, duration=12.4),
                ],
            }
        ],
        "repositories": [],
    }
    assert views.status(reply, NOW)[2:] == [
        "BACKUP  REPOSITORY      STATE          LAST RUN  TOOK  LAST SUCCESS  NEXT RUN  RESULT",
        "b       queued-nowhere  queued         -         -     -             -         -",
        "b       r               running 99.5%  just now  -     -             -         -",
        "b       f               idle           -         12 s  -             -         failed",
    ]


def snapshot(short_id: str, when: str, **fields: object) -> dict[str, object]:
    """One snapshot as `list-snapshots` replies it (jobs.snapshots.snapshot_row)."""
    base = {
        "id": short_id * 8,
        "short_id": short_id,
        "time": when,
        "backup": "pictures",
        "repository": "aws",
        "host": "rpi01",
        "paths": ["/home/me/Pictures"],
        "tags": ["backup-pictures"],
        "bytes_added": 1536,
    }
    return {**base, **fields}


def test_snapshots_in_local_time_with_their_age(zone: None) -> None:
    reply = {
        "ok": True,
        "snapshots": [
            # 14:30:00.5 UTC, 1 h 29 min before NOW, written with another offset
            snapshot("1a2b3c4d", "2024-03-09T15:30:00.500000+01:00"),
            snapshot(
                "5e6f7a8b",
                "2024-03-07T16:00:00+00:00",
                backup=None,
                repository="ovh-frankfurt",
                host="nas",
                paths=["/srv/a", "/srv/b"],
                bytes_added=None,
            ),
            snapshot("9c0d1e2f", "2023-03-09T16:00:00+00:00", bytes_added=3 * 1024**3),
        ],
        "errors": [],
    }
    assert views.snapshots(reply, NOW) == [
        "ID        TIME                          BACKUP    REPOSITORY     HOST   ADDED     PATHS",
        "1a2b3c4d  2024-03-09 20:00 (1 h ago)    pictures  aws            rpi01  1.50 KiB  "
        "/home/me/Pictures",
        "5e6f7a8b  2024-03-07 21:30 (2 d ago)    -         ovh-frankfurt  nas    -         "
        "/srv/a, /srv/b",
        "9c0d1e2f  2023-03-09 21:30 (366 d ago)  pictures  aws            rpi01  3.00 GiB  "
        "/home/me/Pictures",
    ]


def test_a_snapshot_time_beyond_the_local_calendar_is_shown_as_written(zone: None) -> None:
    """The repository's word: whoever may write it made restic say year 9999, which is
    year 10000 here: the listing came out as a traceback."""
    far = "9999-12-31T23:59:59+00:00"
    reply = {"ok": True, "snapshots": [snapshot("1a2b3c4d", far)], "errors": []}
    assert views.snapshots(reply, NOW)[1].startswith(f"1a2b3c4d  {far}  pictures")


def test_no_snapshots_says_so() -> None:
    assert views.snapshots({"ok": True, "snapshots": [], "errors": []}, NOW) == ["no snapshots"]


def ticket(job: str, state: str, position: int | None, **fields: object) -> dict[str, object]:
    """One job as `queue` replies it (commands._ticket_row)."""
    base = {
        "job": job,
        "state": state,
        "position": position,
        "operation": "backup",
        "backup": "pictures",
        "repository": "aws",
        "priority": "normal",
        "pid": 4242,
        "queued_at": NOW - 125,
        "percent": None,
    }
    return {**base, **fields}


def test_queue_running_then_waiting_in_order() -> None:
    reply = {
        "ok": True,
        "jobs": [
            ticket("j1", "running", None, percent=12.5),
            ticket("j2", "running", None, operation="check", backup=None, priority="inferior"),
            ticket("j3", "waiting", 1, repository="local", priority="next", queued_at=NOW),
            ticket("j4", "waiting", 2, operation="prune", backup=None, priority="-3"),
        ],
    }
    assert views.queue(reply, NOW) == [
        "POS  JOB  STATE          OPERATION  BACKUP    REPOSITORY  PRIORITY  SINCE",
        "-    j1   running 12.5%  backup     pictures  aws         normal    2 min ago",
        "-    j2   running        check      -         aws         inferior  2 min ago",
        "1    j3   waiting        backup     pictures  local       next      just now",
        "2    j4   waiting        prune      -         aws         -3        2 min ago",
    ]


def test_an_empty_queue_says_so() -> None:
    assert views.queue({"ok": True, "jobs": []}, NOW) == ["no job is waiting or running"]


def test_restored_says_where_and_how_much() -> None:
    reply = {
        "ok": True,
        "snapshot": "1a2b3c4d5e6f7a8b9c0d",
        "backup": "pictures",
        "target": "/var/lib/henbackup/restores/aws-1a2b3c4d-20240309-160000",
        "files_restored": 12,
        "bytes_restored": 5 * 1024**2 + 512 * 1024,
    }
    assert views.restored(reply) == [
        "restored snapshot 1a2b3c4d of pictures into "
        "/var/lib/henbackup/restores/aws-1a2b3c4d-20240309-160000: 12 files, 5.50 MiB"
    ]
    anonymous = {**reply, "backup": None, "target": "/", "files_restored": 0, "bytes_restored": 0}
    assert views.restored(anonymous) == ["restored snapshot 1a2b3c4d into /: 0 files, 0 B"]
    inside = {**reply, "target": "/srv/out/aws-1a2b3c4d-20240309-160000", "target_existed": True}
    assert views.restored(inside) == [
        "restored snapshot 1a2b3c4d of pictures into /srv/out/aws-1a2b3c4d-20240309-160000"
        " (new: /srv/out exists): 12 files, 5.50 MiB"
    ]


def test_table_aligns_on_the_widest_cell_without_trailing_blanks() -> None:
    assert views.table([("A", "LONG HEADER", "C"), ("wide cell", "x", "")]) == [
        "A          LONG HEADER  C",
        "wide cell  x",
    ]
