"""Shell completion, in real bash with Debian's bash-completion: the scripts the package
installs (generated as debian/rules does), found by bash-completion's own loader by the
command's name, completing verbs, options and names; names from the running daemon, else
from the configuration; a socket that does not answer costs a second, never a hang nor a
message on the user's line.

A TAB press is what bash does on one: COMP_WORDS, COMP_CWORD and the completion function
bash-completion registered for the command, then COMPREPLY. zsh gets real key presses on a
pseudo-terminal (ZSH_DRIVER)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import PASSWORD, Daemon, henbackupctl, ok, restic_command

from henbackup.cli.completion import SLOW

pytestmark = pytest.mark.integration

BASH_COMPLETION = "/usr/share/bash-completion/bash_completion"
SESSION = (
    "source {bash_completion}\n"
    "COMP_LINE={line}\n"
    "COMP_POINT=${{#COMP_LINE}}\n"
    'read -ra COMP_WORDS <<< "$COMP_LINE"\n'
    '[[ $COMP_LINE == *" " ]] && COMP_WORDS+=("")\n'
    "COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))\n"
    "__load_completion {program} || exit 9\n"
    "function=$(complete -p {program} | sed -E 's/.* -F ([^ ]+) .*/\\1/')\n"
    '"$function" {program} "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"\n'
    "printf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
)


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scripts as the package builds them; bash-completion's user directory holds them
    under completions/, named after the command, as /usr/share/bash-completion does."""
    out = tmp_path_factory.mktemp("completion")
    subprocess.run([sys.executable, "-m", "henbackup.cli.completion_scripts", str(out)], check=True)
    (out / "completions").symlink_to(out / "bash")
    return out


def tab(scripts: Path, line: str, **env: str) -> tuple[list[str], str]:
    """The candidates bash offers for `line` (TAB at its end), and its stderr."""
    program = line.split()[0]
    session = SESSION.format(
        bash_completion=BASH_COMPLETION, line=shlex.quote(line), program=program
    )
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HENBACKUP_")},
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # henbackupctl
        "BASH_COMPLETION_USER_DIR": str(scripts),
        **env,
    }
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", session],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return sorted(filter(None, done.stdout.split("\n"))), done.stderr


def write_config(base: Path, repositories: dict[str, Path], backups: dict[str, str]) -> Path:
    """Backups by name, each to the repository named beside it."""
    lines = []
    for name, location in repositories.items():
        lines += [f"[repositories.{name}]", f'location = "{location}"', f'password = "{PASSWORD}"']
    for name, repository in backups.items():
        lines += [f"[backups.{name}]", f'paths = ["{base}"]', f'repositories = ["{repository}"]']
    config = base / "henbackup.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    repositories = {"local": tmp_path / "r1", "usb-disk": tmp_path / "r2"}
    return write_config(tmp_path, repositories, {"pictures": "local", "docs": "usb-disk"})


def test_verbs_and_options(scripts: Path) -> None:
    assert tab(scripts, "henbackupctl ba") == (["backup"], "")
    assert tab(scripts, "henbackupctl l")[0] == ["list-snapshots", "logs"]
    assert tab(scripts, "henbackupctl backup --")[0] == sorted(
        ["--help", "--json", "--repository", "--priority", "--no-wait"]
    )
    assert tab(scripts, "henbackup ")[0] == ["backup", "check-config", "run", "schema"]
    assert tab(scripts, "henbackup --c")[0] == ["--config"]


def test_names_from_the_config_when_no_daemon_runs(
    scripts: Path, config: Path, tmp_path: Path
) -> None:
    nobody = {"HENBACKUP_CONFIG": str(config), "HENBACKUP_SOCKET": str(tmp_path / "none.sock")}
    assert tab(scripts, "henbackupctl backup ", **nobody) == (["docs", "pictures"], "")
    assert tab(scripts, "henbackupctl backup p", **nobody)[0] == ["pictures"]
    assert tab(scripts, "henbackupctl check ", **nobody)[0] == ["local", "usb-disk"]
    assert tab(scripts, "henbackupctl backup docs --repository u", **nobody)[0] == ["usb-disk"]
    assert tab(scripts, "henbackupctl logs -b ", **nobody)[0] == ["docs", "pictures"]
    # henbackup's own --config on the line, as `henbackup backup` will read it
    line = f"henbackup --config {config} backup "
    assert tab(scripts, line, HENBACKUP_SOCKET=str(tmp_path / "none.sock")) == (
        ["docs", "pictures"],
        "",
    )


def test_a_socket_that_never_answers_falls_back_to_the_config_quickly(
    scripts: Path, config: Path, tmp_path: Path
) -> None:
    """A daemon that is stuck (it listens, the kernel accepts, nobody reads)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stuck:
        stuck.bind(str(tmp_path / "stuck.sock"))
        stuck.listen(8)
        started = time.monotonic()
        found = tab(
            scripts,
            "henbackupctl cancel ",  # jobs: only the daemon knows them
            HENBACKUP_CONFIG=str(config),
            HENBACKUP_SOCKET=str(tmp_path / "stuck.sock"),
        )
        assert found == ([], "")
        found = tab(
            scripts,
            f"henbackupctl --socket {tmp_path / 'stuck.sock'} backup ",
            HENBACKUP_CONFIG=str(config),
        )
        assert found == (["docs", "pictures"], "")
        # each asks for at most QUICK seconds; generous for a busy machine
        assert time.monotonic() - started < 4 * SLOW


def test_nothing_to_say_prints_nothing(scripts: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[backups.x\n")
    env = {"HENBACKUP_CONFIG": str(broken), "HENBACKUP_SOCKET": str(tmp_path / "none.sock")}
    assert tab(scripts, "henbackupctl backup ", **env) == ([], "")
    done = subprocess.run(
        [sys.executable, "-m", "henbackup.cli.ctl", "--complete", "backups"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=30,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


@pytest.mark.slow
def test_names_from_the_running_daemon(scripts: Path, tmp_path: Path) -> None:
    """The daemon's names win over a configuration file that says otherwise; its queue's
    jobs, and the snapshots of the repository before the cursor, come from it too. restic
    does not matter here: Debian 12's only."""
    restic = shutil.which("restic")
    assert restic is not None
    repository = tmp_path / "repository"
    restic_command(restic, repository, "init")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "hello.txt").write_text("hello\n")
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "random.bin").write_bytes(os.urandom(16 << 20))
    config = tmp_path / "daemon.toml"
    config.write_text(
        f'[daemon]\nrestic = "{restic}"\n'
        f'[repositories.main]\nlocation = "{repository}"\npassword = "{PASSWORD}"\n'
        f'[backups.home]\npaths = ["{tmp_path / "data"}"]\nrepositories = ["main"]\n'
        f'[backups.slow]\npaths = ["{tmp_path / "big"}"]\nrepositories = ["main"]\n'
        'upload_limit = "256K"\n'  # its job runs a minute: long enough to be seen queued
    )
    other = write_config(tmp_path, {"elsewhere": tmp_path / "x"}, {"not-running": "elsewhere"})
    with Daemon(config, tmp_path / "base") as daemon:
        daemon.wait_worker("home", lambda worker: worker["state"] == "running")
        at = {"HENBACKUP_SOCKET": str(daemon.socket), "HENBACKUP_CONFIG": str(other)}
        assert tab(scripts, "henbackupctl backup ", **at) == (["home", "slow"], "")
        assert tab(scripts, "henbackupctl prune ", **at)[0] == ["main"]
        ok(henbackupctl(daemon, "backup", "home"))
        listed = json.loads(ok(henbackupctl(daemon, "--json", "list-snapshots")))
        snapshots = sorted(row["short_id"] for row in listed["snapshots"])
        assert len(snapshots) == 1
        assert tab(scripts, "henbackupctl restore-snapshot main ", **at) == (snapshots, "")
        ok(henbackupctl(daemon, "backup", "slow", "--no-wait"))

        def queued() -> list[str]:
            jobs = json.loads(ok(henbackupctl(daemon, "--json", "queue")))["jobs"]
            return [job["job"] for job in jobs]

        assert daemon.pump_until(lambda: queued() != [], timeout=60), daemon.report()
        assert tab(scripts, "henbackupctl cancel ", **at) == (queued(), "")
        ok(henbackupctl(daemon, "cancel", queued()[0]))


# zsh completes only inside its line editor: an interactive zsh on a pseudo-terminal (zpty)
# gets each line then TAB, and ^T writes the line as completion left it (then clears it).
ZSH_DRIVER = """\
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z 'fpath=($COMPLETIONS $fpath); autoload -Uz compinit; compinit -u -D'
zpty -w z 'show() { print -r -- "$BUFFER" >> $OUT; BUFFER= }; zle -N show; bindkey "^T" show'
for line in "$@"; do zpty -w -n z "$line"$'\\t\\x14'; done
zpty -w z exit
while zpty -r z chunk; do :; done
"""


def test_zsh_completes_verbs_options_and_names(scripts: Path, config: Path, tmp_path: Path) -> None:
    out = tmp_path / "lines"
    lines = [
        "henbackupctl ba",
        "henbackupctl backup p",
        "henbackupctl check u",
        "henbackupctl backup --rep",
        "henbackupctl backup docs --repository u",
        f"henbackup --config {config} backup d",
    ]
    done = subprocess.run(
        ["zsh", "-f", "-c", ZSH_DRIVER, "zsh", *lines],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "COMPLETIONS": str(scripts / "zsh"),
            "OUT": str(out),
            "HENBACKUP_CONFIG": str(config),
            "HENBACKUP_SOCKET": str(tmp_path / "none.sock"),
        },
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text().splitlines() == [
        "henbackupctl backup ",
        "henbackupctl backup pictures ",
        "henbackupctl check usb-disk ",
        "henbackupctl backup --repository ",
        "henbackupctl backup docs --repository usb-disk ",
        f"henbackup --config {config} backup docs ",
    ]
