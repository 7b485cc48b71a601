"""The `systemd_harness` fixture: a fresh journald and systemd user manager for each test.

Function-scoped on purpose: start + teardown take about 0.2s together (median), which buys
every test an empty journal, no left-over units, and a leak check of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from user_manager import HarnessError, SystemdHarness


@pytest.fixture
def systemd_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemdHarness]:
    """A running harness; teardown fails the test if anything of it is left on the host."""
    with start_or_fail(tmp_path_factory.mktemp("systemd")) as harness:
        yield harness


def start_or_fail(workdir: Path) -> SystemdHarness:
    """A started harness, or a test failure saying why: never a skip, CI=true or not."""
    try:
        return SystemdHarness.start(workdir)
    except HarnessError as error:
        details = "\n".join([str(error), *getattr(error, "__notes__", [])])
    pytest.fail(f"the systemd harness cannot start: {details}", pytrace=False)
