"""The commands start fast: `henbackup` and `henbackupctl` load what a command needs when
it runs (issue 18), checked in a fresh interpreter."""

from __future__ import annotations

import json
import os
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


def test_henbackupctl_loads_no_dataclass_nor_typing_nor_the_daemons_messages() -> None:
    # Importing dataclasses (inspect, ast, dis...) and declaring the channel's messages cost
    # henbackupctl about a third of its start-up, typing a tenth: the control protocol is
    # enough.
    loaded = loaded_by("henbackup.cli.ctl")
    heavy_ones = ("dataclasses", "typing", "henbackup.channel", "henbackup.status_rows")
    for heavy in (*heavy_ones, "datetime"):
        assert heavy not in loaded


def test_the_command_lines_are_read_without_shutil_nor_locale() -> None:
    # argparse imports them to lay help out and to translate its words: 4 to 5 ms of each
    # command's start, for a help page or a catalogue nobody asked for.
    for module, command in (("henbackup.cli.ctl", "status"), ("henbackup.cli.daemon", "run")):
        code = (
            f"import sys, {module} as cli; cli.get_parser().parse_args([{command!r}]); "
            "print('read', *sorted({'shutil', 'locale'} & set(sys.modules)))"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.stdout.split() == ["read"], done


def test_henbackup_run_imports_the_engines_of_its_repositories_before_it_forks(
    tmp_path: Path,
) -> None:
    # Every job process is forked from its worker: an engine module the master did not
    # import before forking would be imported again by each job (6 to 9 ms of each).
    config = tmp_path / "henbackup.toml"
    config.write_text(
        '[repositories.local]\nlocation = "/srv/borg"\nengine = "borg"\n'
        'password = "not-shown"\n'
        '[backups.pictures]\npaths = ["/home/me/Pictures"]\nrepositories = ["local"]\n'
    )
    config.chmod(0o600)
    program = (
        "import sys; from henbackup.master import supervisor; "
        "supervisor.Master.run = lambda self: print(sorted(m for m in sys.modules "
        "if m.startswith('henbackup.engine.') and m.endswith(('restic', 'borg')))) or 0; "
        f"from henbackup.cli.daemon import main; main(['--config', {str(config)!r}, 'run'])"
    )
    dirs = {f"{kind}_DIRECTORY": str(tmp_path / kind) for kind in ("RUNTIME", "STATE", "CACHE")}
    env = {**os.environ, **dirs, "HENBACKUP_EVENTS": "json"}
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env)
    assert done.stdout.splitlines() == ["['henbackup.engine.borg']"], done.stderr


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
