"""The Debian package's man pages (packaging/debian/manpages.py): Debian 12's
argparse-manpage has no --include, so the hand-written sections are merged there."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("manpages", ROOT / "packaging/debian/manpages.py")
assert spec is not None and spec.loader is not None
manpages = importlib.util.module_from_spec(spec)
spec.loader.exec_module(manpages)

GENERATED = [".SH SYNOPSIS", "s", ".SH DESCRIPTION", "generated", ".SH OPTIONS", "o"]


def test_markers_prepend_append_or_add_a_section(tmp_path: Path) -> None:
    include = tmp_path / "page.include"
    include.write_text("[<DESCRIPTION]\nfirst\n[>DESCRIPTION]\nlast\n[EXIT STATUS]\n0\n")
    assert manpages.merged(GENERATED, include) == [
        ".SH SYNOPSIS",
        "s",
        ".SH DESCRIPTION",
        "first",
        "generated",
        "last",
        ".SH OPTIONS",
        "o",
        '.SH "EXIT STATUS"',
        "0",
    ]


def test_the_packaged_pages_have_no_section_named_after_a_marker(tmp_path: Path) -> None:
    """henbackupctl(1) had a section headed "<DESCRIPTION", after OPTIONS."""
    subprocess.run(
        ["/usr/bin/python3", "packaging/debian/manpages.py", str(tmp_path)],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    for page in ("henbackup.8", "henbackupctl.1"):
        headings = [
            line for line in (tmp_path / page).read_text().splitlines() if line.startswith(".SH")
        ]
        assert not [h for h in headings if "<" in h or ">" in h], headings
    ctl = (tmp_path / "henbackupctl.1").read_text()
    assert ctl.index(".SH DESCRIPTION") < ctl.index("Every command but") < ctl.index(".SH OPTIONS")
