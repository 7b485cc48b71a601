"""henbackup as a user runs it: the copy `make bench-henbackup` installs (not editable, on
Debian's python3), else the dev venv's editable install, which costs every command more."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTALLED = ROOT / ".cache" / "bench-henbackup" / "bin"
BIN = INSTALLED if (INSTALLED / "henbackupctl").exists() else Path(sys.executable).parent


def environment(env: dict[str, str]) -> dict[str, str]:
    """`env` for henbackup's programs: the installed copy runs its own henbackup, not one
    found on PYTHONPATH."""
    return {k: v for k, v in env.items() if k != "PYTHONPATH"} if BIN == INSTALLED else env
