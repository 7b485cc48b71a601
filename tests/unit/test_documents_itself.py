"""The README and the man pages are the whole contract: nothing in the project points a reader
at a document it does not ship, and the README installs into no system Python."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOT_THE_PROJECT = {".git", ".venv", ".cache", ".demo", "build", "__pycache__", ".pytest_cache"}
# Documents of the project's authors that its users do not have.
OUTSIDE = re.compile(r"\bSPEC\b|\bDESIGN\b|SPEC\.md|DESIGN\.md|shared folder|/work/shared")


def project_files() -> Iterator[Path]:
    for directory, subdirectories, files in os.walk(ROOT):
        subdirectories[:] = [
            d for d in subdirectories if d not in NOT_THE_PROJECT and not d.endswith(".egg-info")
        ]
        for name in files:
            path = Path(directory, name)
            if path != Path(__file__) and not name.endswith((".pyc", ".png")):
                yield path


def test_nothing_refers_to_a_document_outside_the_project() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in project_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert found == []


def test_the_readme_installs_into_a_virtual_environment_only() -> None:
    # Debian 12 refuses `pip install` into its Python (externally-managed-environment).
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    installs = [line for block in blocks for line in block.splitlines() if "pip install" in line]
    assert installs, "the README shows no pip install"
    assert [line for line in installs if not re.match(r"\S+/bin/pip install ", line)] == []
