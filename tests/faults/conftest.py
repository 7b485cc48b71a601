"""Fault tests run the daemon as the integration tests do: their helpers and fixtures, imported
from tests/integration (daemon_helpers.py, and conftest.py's `repository`), never copied."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))

from integration.conftest import _initialized, pytest_configure, repository

__all__ = ["_initialized", "pytest_configure", "repository"]
