"""The master's loop goes on after an internal error, and says so in the journal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from henbackup.config.load import load_config
from henbackup.master.supervisor import Master
from henbackup.observe.events import ERR

CONFIG = """\
[repositories.local]
location = "{tmp}/local"
password = "not a secret"
"""


def make_master(tmp_path: Path, emit: Any) -> Master:
    path = tmp_path / "henbackup.toml"
    path.write_text(CONFIG.format(tmp=tmp_path))
    return Master(path, load_config(path, env={}), emit, lambda *_: 0)


def bug() -> None:
    raise KeyError("backup:gone")


def test_an_internal_error_is_an_event_with_its_traceback_and_the_loop_goes_on(
    tmp_path: Path, events: Any
) -> None:
    master = make_master(tmp_path, events)
    ran = []
    master.loop.call_later(0, bug)
    master.loop.call_later(0, lambda: ran.append("next"))
    master.loop.run_once()
    assert ran == ["next"]
    (event,) = events.recorded
    fields = dict(event.fields)
    assert (event.kind, event.priority) == ("daemon.error", ERR)
    assert fields["HENBACKUP_SOURCE"] == "timer (bug)"
    assert fields["HENBACKUP_ERROR"] == "KeyError: 'backup:gone'"
    assert event.message == (
        "internal error in timer (bug), henbackup goes on: KeyError: 'backup:gone'"
    )
    trace = fields["HENBACKUP_TRACEBACK"]
    assert trace.startswith("Traceback (most recent call last):\n")
    assert 'raise KeyError("backup:gone")' in trace and trace.endswith("KeyError: 'backup:gone'\n")
    master.loop.close()


def test_with_no_way_to_write_an_event_the_traceback_goes_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def emit(kind: str, message: str, **fields: Any) -> Any:
        raise BrokenPipeError(32, "Broken pipe")  # stderr's reader is gone, say

    master = make_master(tmp_path, emit)
    master.loop.call_later(0, bug)
    master.loop.run_once()
    assert capsys.readouterr().err.endswith("KeyError: 'backup:gone'\n")
    master.loop.close()
