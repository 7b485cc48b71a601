"""The README's install into a virtual environment, followed as it is written.

The marked block runs with sh in a copy of this checkout, its system paths (/opt, /etc,
/usr) moved below a temporary root; then the unit and drop-in it installed start under a
real systemd user manager and must reach READY running the venv's henbackup. Two things
differ from a reader's machine, both outside the block's words: pip finds nothing on the
network (no network beyond 127.0.0.1 in the tests), so it builds with the venv's own
setuptools instead of fetching them; and the default config path is the moved one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from user_manager import SystemdHarness

from henbackup import __version__

ROOT = Path(__file__).resolve().parents[2]
UNIT = "henbackup.service"
MARK = "<!-- venv-install:"
# What the Makefile's `make deb` leaves out of a copy of the checkout, too.
NOT_THE_CHECKOUT = (".git", ".venv", ".cache", ".demo", "build", "*.egg-info", "__pycache__")
# The directories every system has, below the temporary root.
SKELETON = ("opt", "usr/local/bin", "etc/systemd/system", "usr/lib/systemd/catalog")


def readme_block() -> str:
    """The shell block right after the README's mark."""
    readme = (ROOT / "README.md").read_text()
    assert MARK in readme, f"README.md has no {MARK} mark before the venv install block"
    found = re.match(r"[^\n]*-->\n```sh\n(.*?)\n```\n", readme.split(MARK, 1)[1], re.S)
    assert found, f"README.md: no ```sh block right after {MARK}"
    return found.group(1)


def rerooted(script: str, root: Path) -> str:
    """`script` with each absolute /opt, /etc and /usr path moved below `root`."""
    return re.sub(r"(?<![\w./-])/(opt|etc|usr)/", rf"{root}/\1/", script)


class Installed:
    """The README's block, run into `root` from a copy of the checkout."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.checkout = root / "checkout"
        self.config = root / "etc/henbackup/henbackup.toml"
        shutil.copytree(ROOT, self.checkout, ignore=shutil.ignore_patterns(*NOT_THE_CHECKOUT))
        for directory in SKELETON:
            (root / directory).mkdir(parents=True, exist_ok=True)
        self.path = f"{root}/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # Debian's python3
        self.done = subprocess.run(
            ["sh", "-euc", rerooted(readme_block(), root)],
            cwd=self.checkout,
            env={
                "PATH": self.path,
                "HOME": str(root),
                "LANG": "C.UTF-8",
                "PIP_NO_INDEX": "1",
                "PIP_NO_BUILD_ISOLATION": "0",  # pip's inverted switch: no isolation
                "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "HENBACKUP_CONFIG": str(self.config),
            },
            capture_output=True,
            text=True,
            timeout=600,
        )

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": self.path, "LANG": "C.UTF-8", "HENBACKUP_CONFIG": str(self.config)}
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    # In the checkout: the service sees it (pytest's tmp_path is hidden by PrivateTmp=).
    (ROOT / ".cache").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / ".cache", prefix="readme-") as tmp:
        yield Installed(Path(tmp))


def test_the_block_runs_to_its_end(installed: Installed) -> None:
    done = installed.done
    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    # Its last line, check-config on the example it copied, printed the plan.
    assert "Backup pictures" in done.stdout and "Repository aws-ireland" in done.stdout


def test_the_commands_are_the_venvs(installed: Installed) -> None:
    version = installed.run("henbackup", "--version")
    assert (version.returncode, version.stdout) == (0, f"henbackup {__version__}\n")
    venv = installed.root / "opt/henbackup/bin"
    for command in ("henbackup", "henbackupctl"):
        assert (installed.root / "usr/local/bin" / command).resolve() == venv / command
    assert installed.run("henbackupctl", "--help").returncode == 0


def test_the_files_are_where_systemd_and_man_look(installed: Installed) -> None:
    root = installed.root
    assert (root / "usr/lib/systemd/catalog/henbackup.catalog").is_file()
    assert "g henbackup -" in (root / "etc/sysusers.d/henbackup.conf").read_text()
    assert (root / "usr/local/share/man/man5/henbackup.toml.5").is_file()
    assert (root / "etc/henbackup/secrets").stat().st_mode & 0o777 == 0o700


def test_the_unit_runs_the_venv_and_reaches_ready(
    installed: Installed, systemd_harness: SystemdHarness
) -> None:
    root = installed.root
    data, repository = root / "data", root / "repository"
    data.mkdir()
    (data / "file.txt").write_text("precious\n")
    # The administrator's edit of the example: one backup to a local repository.
    installed.config.write_text(
        f'[repositories.local]\nlocation = "{repository}"\npassword = "pw-local"\n'
        f'[backups.documents]\npaths = ["{data}"]\nrepositories = ["local"]\nschedule = ["1h"]\n'
    )
    assert installed.run("henbackup", "check-config").returncode == 0

    units = root / "etc/systemd/system"
    systemd_harness.unit_dir.joinpath(f"{UNIT}.d").mkdir(parents=True)
    shutil.copy(units / f"{UNIT}.d/venv.conf", systemd_harness.unit_dir / f"{UNIT}.d")
    # Only for the test: the moved config path, a cache the service can see, the checkout.
    systemd_harness.unit_dir.joinpath(f"{UNIT}.d/test.conf").write_text(
        f'[Service]\nEnvironment="HENBACKUP_CONFIG={installed.config}"\n'
        f'Environment="CACHE_DIRECTORY={root / "cache"}"\n'
        f"BindPaths={ROOT}\n"  # the checkout may live under /tmp, which PrivateTmp= hides
    )
    systemd_harness.install_unit(UNIT, (units / UNIT).read_text())
    systemd_harness.systemctl("start", UNIT)
    systemd_harness.wait_show(UNIT, timeout=30, ActiveState="active", SubState="running")

    main_pid = systemd_harness.show(UNIT, "MainPID")["MainPID"]
    argv = Path(f"/proc/{main_pid}/cmdline").read_text().split("\0")
    assert argv[1:4] == [str(root / "opt/henbackup/bin/henbackup"), "run", ""]
    (started,) = systemd_harness.wait_journal({"HENBACKUP_EVENT": "daemon.started"}, timeout=30)
    assert started["MESSAGE"] == "henbackup started: 1 backup"
    (succeeded,) = systemd_harness.wait_journal(
        {"HENBACKUP_EVENT": "job.succeeded", "HENBACKUP_BACKUP": "documents"}, timeout=120
    )
    assert succeeded["HENBACKUP_REPOSITORY"] == "local"
