"""Shared fixtures: the real restic binaries, and the rule that CI skips nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from henbackup.observe.events import EmitFunction, Event, FieldValue, make_event

ROOT = Path(__file__).resolve().parent.parent
RESTIC_TRIXIE = ROOT / ".cache" / "restic-trixie" / "usr" / "bin" / "restic"


def _restic_binaries() -> dict[str, str | None]:
    """Debian 12's restic (0.14) from PATH and Debian 13's (0.18) fetched by `make test`."""
    return {
        "restic-0.14": shutil.which("restic"),
        "restic-0.18": str(RESTIC_TRIXIE) if RESTIC_TRIXIE.exists() else None,
    }


@pytest.fixture(params=sorted(_restic_binaries()), scope="session")
def restic(request: pytest.FixtureRequest) -> str:
    """Path of a real restic binary; every test using it runs once per version."""
    path = _restic_binaries()[request.param]
    if path is None:
        pytest.skip(f"{request.param} is not installed: run `make test` to set it up")
    expected = request.param.removeprefix("restic-")
    version = subprocess.run([path, "version"], capture_output=True, text=True, check=True)
    assert f"restic {expected}" in version.stdout, version.stdout
    return path


@pytest.fixture
def events() -> EmitFunction:
    """An emit function that keeps every event it builds in `.recorded`, in order."""
    recorded: list[Event] = []

    def emit(kind: str, message: str, **fields: FieldValue) -> Event:
        event = make_event(kind, message, **fields)
        recorded.append(event)
        return event

    emit.recorded = recorded  # type: ignore[attr-defined]
    return emit


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """With CI=true a skipped test is a set-up bug: report it as a failure."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (a component is missing): {report.longrepr}"
