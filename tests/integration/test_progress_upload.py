"""Progress that tells the truth under a bandwidth limit, on real restic (both versions).

restic reads a few MiB at once and says 100 %, while its upload, limited to LIMIT bytes per
second to a real REST server (`rclone serve restic` on 127.0.0.1), goes on for seconds:
the job.progress events say what was read and what was sent, the rate really achieved,
and a percent that is not 100 before the upload is done; the last one agrees with restic's
summary. Through the real daemon, `henbackupctl status` says the same while it runs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from integration import backends
from integration.backends import RestServer, S3Server
from integration.daemon_helpers import PASSWORD, Daemon, henbackupctl

from henbackup.config.model import PasswordSource
from henbackup.engine.base import BackupRequest, BackupResult, Target
from henbackup.engine.restic import ResticEngine
from henbackup.jobs.job import Job, ProgressReporter, run_job
from henbackup.observe.events import EmitFunction, Event, FieldValue

pytestmark = pytest.mark.integration
rest_repository, s3_server = backends.rest_repository, backends.s3_server  # the fixtures

LIMIT = 256 << 10  # upload bytes/s
SOURCE = 3 << 20  # random bytes: ~12 s at LIMIT, read in well under a second
PACK_SLACK = 64 << 10  # what restic sends besides the data: headers, the tree, the index


def make_source(tmp_path: Path, size: int = SOURCE) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(size))
    return source


def backup(restic: str, target: Target, tmp_path: Path, events: EmitFunction, size: int = SOURCE):
    """One throttled backup job of `size` random bytes; its progress events with when each
    came, the result, when it ended (monotonic), and how much more than the result's bytes
    the progress may have counted sent (`unseen_pack`)."""
    source = make_source(tmp_path, size)
    engine = ResticEngine(restic, cache_dir=tmp_path / "cache")
    request = BackupRequest("pictures", (str(source),), host="testhost")
    progress: list[tuple[float, dict[str, str]]] = []

    def emit(kind: str, message: str, **fields: FieldValue) -> Event:
        event = events(kind, message, **fields)
        if kind == "job.progress":
            progress.append((time.monotonic(), dict(event.fields)))
        return event

    job = Job("backup", target.name, "pictures")
    reporter = ProgressReporter(job, emit)
    result: BackupResult = run_job(
        job, emit, lambda: engine.backup(target, request, reporter), engine=engine
    )
    return progress, result, time.monotonic(), unseen_pack(engine, result)


def unseen_pack(engine: ResticEngine, result: BackupResult) -> int:
    """restic 0.17+ may write a pack, copy its blobs into the pack it sends and delete it:
    a busy machine's first look may come after that, and the bytes written to it count
    as sent (the meter cannot tell them from a pack sent meanwhile). Its blobs are the
    backup's: it holds no more than the data added."""
    return result.bytes_added if engine.features.version >= (0, 17, 0) else 0


def number(fields: dict[str, str], name: str) -> float:
    return float(fields[f"HENBACKUP_{name.upper()}"])


def rest_target(server: RestServer) -> Target:
    password = PasswordSource("password", PASSWORD)
    return Target("rest", server.location, password, upload_limit=LIMIT)


def s3_target(server: S3Server, prefix: str, limit: int) -> Target:
    """restic reads each pack back at once to send it to S3: its position in the file
    says nothing of what was sent."""
    password = PasswordSource("password", PASSWORD)
    env = tuple(server.env.items())
    return Target("s3", server.location(prefix), password, env=env, upload_limit=limit)


def test_a_throttled_upload_shows_what_was_read_and_sent_and_its_real_pace(
    restic: str, rest_repository: RestServer, tmp_path: Path, events: EmitFunction
) -> None:
    assert_truthful(*backup(restic, rest_target(rest_repository), tmp_path, events))


@pytest.mark.parametrize(
    ("size", "limit"),
    [(SOURCE, LIMIT), (20 << 20, 1 << 20)],  # one pack; two packs sent side by side
    ids=["one-pack", "packs-side-by-side"],
)
def test_a_throttled_upload_to_s3_shows_what_was_sent_and_its_real_pace(
    restic: str,
    s3_server: S3Server,
    tmp_path: Path,
    events: EmitFunction,
    size: int,
    limit: int,
) -> None:
    target = s3_target(s3_server, f"progress-{tmp_path.name}", limit)
    assert ResticEngine(restic, cache_dir=tmp_path / "cache").ensure_initialized(target)
    assert_truthful(*backup(restic, target, tmp_path, events, size), size, limit)


def assert_truthful(
    progress: list[tuple[float, dict[str, str]]],
    result: BackupResult,
    ended: float,
    unseen: int,
    size: int = SOURCE,
    limit: int = LIMIT,
) -> None:
    """What a throttled upload of `size` bytes at `limit` bytes/s showed was true."""
    assert len(progress) >= 4, progress  # ~12 s of upload, one event a second
    read = [number(fields, "bytes_done") for _, fields in progress]
    sent = [number(fields, "bytes_sent") for _, fields in progress]
    percent = [number(fields, "percent") for _, fields in progress]
    assert sent == sorted(sent) and sent[-1] > sent[0], sent

    # restic read everything long before it was sent: today's "100 %" is the upload's
    # (on a busy machine the first event may come late: then less is left to wait)
    ahead = [i for i, done in enumerate(read) if done == size and sent[i] < 0.95 * size]
    assert ahead, list(zip(read, sent, strict=True))
    assert all(percent[i] <= 100 * sent[i] / size + 10 for i in ahead), (percent, sent)
    assert all(p < 100 for p, s in zip(percent, sent, strict=True) if s < 0.9 * size)

    # sent grows at about the limit (never much faster; a busy machine may make it slower)
    (first_at, _), (last_at, last) = progress[0], progress[-1]
    pace = (sent[-1] - sent[0]) / (last_at - first_at)
    assert limit / 4 < pace < limit * 1.5, pace
    rates = [
        number(fields, "send_rate") for _, fields in progress if "HENBACKUP_SEND_RATE" in fields
    ]
    assert rates and all(rate < limit * 2 for rate in rates), rates
    assert any(rate > limit / 4 for rate in rates), rates

    # the last progress before the summary agrees with it
    assert read[-1] == result.bytes_processed == size
    assert result.bytes_added >= size
    assert sent[-1] <= result.bytes_added + PACK_SLACK + unseen, (sent, result)
    unsent = max(0, result.bytes_added - sent[-1])
    # restic's limiter is a token bucket holding one second of tokens: after a pause (one
    # pack done, the next not begun) the tail may go out in one burst of up to `limit` bytes
    burst = limit
    assert unsent <= limit * 1.5 * (ended - last_at) + burst + PACK_SLACK, (unsent, ended - last_at)
    # what waits includes what restic sends besides the data; a busy machine slows the pace,
    # and the time left follows the pace the job measured last (its send rate), not the limit
    eta = number(last, "seconds_remaining")
    pace_last = min(limit / 4, float(last.get("HENBACKUP_SEND_RATE") or limit / 4))
    assert eta <= (unsent + PACK_SLACK) / pace_last + 3, (eta, unsent, pace_last)

    # never (almost) no time left while seconds of bytes wait, even at twice the limit
    etas = [
        (number(fields, "seconds_remaining"), result.bytes_added - sent[i])
        for i, (_, fields) in enumerate(progress)
        if "HENBACKUP_SECONDS_REMAINING" in fields and result.bytes_added - sent[i] > 2 * limit
    ]
    assert not [(eta, waiting) for eta, waiting in etas if eta < waiting / (limit * 2)], etas


def test_status_shows_what_a_throttled_backup_read_and_sent_while_it_runs(
    restic: str, rest_repository: RestServer, tmp_path: Path
) -> None:
    source = make_source(tmp_path)
    config = tmp_path / "henbackup.toml"
    config.write_text(
        f"[daemon]\nrestic = {json.dumps(restic)}\nhostname = 'testhost'\n\n"
        f"[repositories.rest]\nlocation = {json.dumps(rest_repository.location)}\n"
        f"password = {json.dumps(PASSWORD)}\nupload_limit = '{LIMIT >> 10}K'\n\n"
        f"[backups.pictures]\npaths = [{json.dumps(str(source))}]\nrepositories = ['rest']\n"
    )
    rows: list[dict] = []

    def read_all_sent_some() -> bool:
        call = henbackupctl(daemon, "--json", "status")
        assert call.returncode == 0, call.stderr
        (row,) = json.loads(call.stdout)["backups"][0]["repositories"]
        rows.append(row)
        return row["bytes_done"] == SOURCE and 0 < (row["bytes_sent"] or 0) < SOURCE / 2

    with Daemon(config, tmp_path / "daemon") as daemon:
        daemon.wait_for("daemon.started")
        assert henbackupctl(daemon, "backup", "pictures", "--no-wait").returncode == 0
        job = daemon.wait_for("job.started", backup="pictures")["HENBACKUP_JOB"]
        assert daemon.pump_until(read_all_sent_some, 60), rows
        shown = henbackupctl(daemon, "status").stdout.splitlines()
        daemon.wait_for("job.succeeded", timeout=120, job=job)
    row = rows[-1]
    assert (row["state"], row["job"], row["total_bytes"]) == ("running", job, SOURCE)
    assert row["percent"] < 50, row  # restic's own said 100
    assert row["send_rate"] is None or row["send_rate"] < LIMIT * 2, row
    (line,) = [line for line in shown if line.startswith("pictures  rest")]
    assert ", 3.00 MiB/3.00 MiB read, " in line and " sent" in line, shown
