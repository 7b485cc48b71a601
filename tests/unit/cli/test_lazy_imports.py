"""The commands start fast: `henbackup` and `henbackupctl` load what a command needs when
it runs (issue 18), checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


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


def test_henbackupctl_loads_no_dataclass_nor_the_daemons_messages() -> None:
    # Importing dataclasses (inspect, ast, dis...) and declaring the channel's messages cost
    # henbackupctl about a third of its start-up: the control protocol is enough.
    loaded = loaded_by("henbackup.cli.ctl")
    for heavy in ("dataclasses", "henbackup.channel", "henbackup.status_rows", "datetime"):
        assert heavy not in loaded


def test_the_programs_flush_their_output_and_skip_the_interpreters_teardown(
    tmp_path: Path,
) -> None:
    # The console scripts call command(): what it printed is whole (flushed), and nothing
    # runs at exit (the teardown that costs 10 to 20 ms per command is skipped).
    gone = tmp_path / "no.sock"
    for module, argv, code in (
        ("daemon", ["henbackup", "schema"], 0),
        ("ctl", ["henbackupctl", "--socket", str(gone), "status"], 3),  # unreachable
    ):
        program = (
            "import atexit, sys; atexit.register(print, 'teardown', file=sys.stderr); "
            f"sys.argv = {argv!r}; from henbackup.cli.{module} import command; command()"
        )
        done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
        assert done.returncode == code
        assert "teardown" not in done.stderr
        if module == "daemon":
            assert json.loads(done.stdout)["$schema"]
        else:
            assert done.stderr.startswith(f"henbackupctl: cannot reach the daemon at {gone}")
