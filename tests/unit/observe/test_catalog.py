"""The journal catalog explains every event kind, under its MESSAGE_ID."""

import re
import subprocess
from pathlib import Path

from henbackup.observe.events import MESSAGE_IDS

CATALOG = Path(__file__).resolve().parents[3] / "systemd" / "henbackup.catalog"


def entries() -> dict[str, str]:
    text = CATALOG.read_text()
    parts = re.split(r"^-- ([0-9a-f]{32})\n", text, flags=re.MULTILINE)[1:]
    return dict(zip(parts[::2], parts[1::2], strict=True))


def test_every_event_kind_has_one_entry():
    assert sorted(entries()) == sorted(MESSAGE_IDS.values())


def test_every_entry_has_a_subject_and_an_explanation():
    for message_id, body in entries().items():
        header, _, explanation = body.partition("\n\n")
        assert re.search(r"^Subject: \S", header, re.MULTILINE), message_id
        assert "Defined-By: henbackup" in header
        assert explanation.strip(), message_id


def test_journalctl_reads_every_entry(tmp_path):
    # journalctl itself builds the catalog database, in a root of our own.
    catalog_dir = tmp_path / "usr" / "lib" / "systemd" / "catalog"
    catalog_dir.mkdir(parents=True)
    (catalog_dir / CATALOG.name).write_text(CATALOG.read_text())
    root = f"--root={tmp_path}"
    subprocess.run(["journalctl", root, "--update-catalog"], check=True, capture_output=True)
    listed = subprocess.run(
        ["journalctl", root, "--list-catalog"], check=True, capture_output=True, text=True
    ).stdout
    found = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert found == set(MESSAGE_IDS.values())
