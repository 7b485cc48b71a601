"""The man pages are generated from the parsers: they must build and render cleanly."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def pages():
    subprocess.run(["make", "-s", "-C", str(ROOT), "man"], check=True, capture_output=True)
    return sorted((ROOT / "build" / "man").iterdir())


def test_every_page_is_built(pages):
    assert [p.name for p in pages] == ["henbackup.8", "henbackup.toml.5", "henbackupctl.1"]


def test_mandoc_finds_nothing_worth_a_warning(pages):
    lint = subprocess.run(
        ["mandoc", "-T", "lint", "-W", "warning", *map(str, pages)], capture_output=True, text=True
    )
    assert (lint.returncode, lint.stdout, lint.stderr) == (0, "", "")


def test_the_pages_document_every_command(pages):
    text = {p.name: p.read_text() for p in pages}
    for command in ("run", "check\\-config", "schema", "backup"):
        assert f"henbackup {command}" in text["henbackup.8"]
    verbs = ("status", "list\\-snapshots", "restore\\-snapshot", "backup", "check", "prune")
    for command in (*verbs, "queue", "cancel", "logs"):
        assert f"henbackupctl {command}" in text["henbackupctl.1"]
