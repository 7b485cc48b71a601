"""The commands start fast: `henbackup` and `henbackupctl` load what a command needs when
it runs (issue 18), checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys


def loaded_by(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_henbackup_loads_no_command_before_it_runs() -> None:
    loaded = loaded_by("henbackup.cli.daemon")
    for heavy in ("master.supervisor", "worker.main", "jobs.entry", "engine.restic", "config.load"):
        assert f"henbackup.{heavy}" not in loaded


def test_henbackupctl_loads_neither_the_journal_nor_completion_before_it_is_asked() -> None:
    loaded = loaded_by("henbackup.cli.ctl")
    for heavy in ("henbackup.cli.logs", "henbackup.cli.completion", "systemd.journal"):
        assert heavy not in loaded
