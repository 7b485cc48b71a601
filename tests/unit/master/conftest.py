"""The stand-in master (stand_in.py) as a fixture."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from henbackup.config.load import load_config
from henbackup.loop import Loop
from henbackup.master.clients import Clients
from henbackup.observe.status import StatusModel
from henbackup.scheduler import Scheduler

from .stand_in import CONFIG


@pytest.fixture
def master(tmp_path: Path) -> Any:
    config_path = tmp_path / "henbackup.toml"
    config_path.write_text(CONFIG.format(tmp=tmp_path))
    one_offs: list[tuple[dict[str, Any], Any, bool]] = []

    config = load_config(config_path, env={}, hostname="testhost")

    def start_one_off(given: Any, job: dict[str, Any], conversation: Any, wait: bool) -> Any:
        assert given is config
        one_offs.append((job, conversation, wait))
        return None if wait else {"ok": True, "request": "r00000001", "accepted": job["command"]}

    model, clients = StatusModel(), Clients()
    resumed: list[str] = []  # the tickets cancelled, for a paused job to resume
    return SimpleNamespace(
        config=config,
        config_path=config_path,
        children={},
        stopping=False,
        model=model,
        clients=clients,
        jobs=SimpleNamespace(
            model=model, clients=clients, start_one_off=start_one_off, resume_paused=resumed.append
        ),
        resumed=resumed,
        scheduler=Scheduler(tmp_path / "s"),
        loop=Loop(),
        state_dir=tmp_path / "state",
        one_offs=one_offs,
    )
