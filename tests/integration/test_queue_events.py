"""The events the status model places jobs by: real restic, a real host-wide queue.

`henbackupctl status` and `queue` are answered from job events alone (no queue lock): a
waiting job's job.queued says its arrival number, its arrival time and its process; a
backup's forget runs under the backup's ticket and names it, so that the queue shows (and
`henbackupctl cancel` takes) the id the queue knows.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from daemon_helpers import PASSWORD, make_data

from henbackup.config.load import load_config
from henbackup.config.model import Priority
from henbackup.engine.restic import ResticEngine
from henbackup.jobs.pipeline import run_backup_pipeline
from henbackup.observe.events import Event, FieldValue, make_event
from henbackup.observe.status import StatusModel
from henbackup.scheduler import Scheduler, Ticket

pytestmark = pytest.mark.integration

ONE_RESTIC = pytest.mark.parametrize("restic", ["restic-0.14"], indirect=True)


@ONE_RESTIC
def test_a_waiting_backup_says_its_place_and_its_forget_names_the_backups_ticket(
    restic: str, repository: Path, tmp_path: Path
) -> None:
    config_path = tmp_path / "henbackup.toml"
    config_path.write_text(
        f"[repositories.local]\nlocation = '{repository}'\npassword = '{PASSWORD}'\n\n"
        f"[backups.pictures]\npaths = ['{make_data(tmp_path / 'pictures')}']\n"
        "repositories = ['local']\nretention = { keep_last = 1 }\n"
    )
    config = load_config(config_path, env={}, hostname="testhost")
    scheduler = Scheduler(tmp_path / "queue")
    holder = scheduler.submit(Ticket("holder", "elsewhere", Priority.ordinary(0)))
    assert holder.grant is not None  # the only slot: the backup has to wait
    model, said = StatusModel(), []

    def emit(kind: str, message: str, **fields: FieldValue) -> Event:
        said.append((kind, fields))
        model.apply(kind, fields, "backup:pictures")  # as the master takes it in
        if kind == "job.queued":
            (waiting,) = model.queue(scheduler.tickets())[1:]  # behind the holder
            said.append(("place", {"position": waiting.position, "job": waiting.ticket_id}))
            holder.grant.release()  # its turn comes
        return make_event(kind, message, **fields)

    engine = ResticEngine(restic, cache_dir=tmp_path / "cache")
    result = run_backup_pipeline(config, "pictures", engine, emit, scheduler=scheduler)

    assert result.status == "succeeded", said
    kinds = [kind for kind, _ in said if kind != "job.progress"]
    assert kinds == [
        "job.queued",
        "place",
        "job.started",
        "job.succeeded",
        "job.started",
        "job.succeeded",
    ]
    queued, place, backup, _, forget, _ = [f for k, f in said if k != "job.progress"]
    assert queued["sequence"] == holder.ticket.sequence + 1
    assert queued["queued_at"] >= holder.ticket.queued_at
    assert (queued["pid"], backup["pid"], forget["pid"]) == (os.getpid(),) * 3
    assert place == {"position": 1, "job": queued["job"]}
    assert backup["job"] == queued["job"] and "ticket" not in backup
    assert (forget["operation"], forget["ticket"]) == ("forget", backup["job"])
    assert forget["job"] != backup["job"]
    assert model.queue(scheduler.tickets()) == []
