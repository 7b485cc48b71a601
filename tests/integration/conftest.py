"""Integration tests run the real thing; `slow` marks the ones that take seconds each."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from daemon_helpers import restic_command


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes several seconds (deselect with -m 'not slow')")


@pytest.fixture(scope="session")
def _initialized() -> dict[str, Path]:
    """One initialized empty repository per restic binary, made on first use: `restic init`
    takes ~3 s (it calibrates its key derivation); a copy takes milliseconds."""
    return {}


@pytest.fixture
def repository(
    restic: str,
    tmp_path: Path,
    _initialized: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """An initialized, empty repository of the test's own (password daemon_helpers.PASSWORD)."""
    template = _initialized.get(restic)
    if template is None:
        template = tmp_path_factory.mktemp("template") / "repository"
        restic_command(restic, template, "init")
        _initialized[restic] = template
    copy = tmp_path / "repository"
    shutil.copytree(template, copy)
    return copy


@pytest.fixture(scope="session")
def _templates() -> dict[str, Path]:
    """One initialised empty repository per restic binary (`init` takes seconds; a copy,
    milliseconds)."""
    return {}
