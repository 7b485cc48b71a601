#!/usr/bin/python3
"""Builds henbackup(8) and henbackupctl(1) at package build time with Debian 12's
argparse-manpage (1.2), which has none of the Makefile's options (section, title, version,
include): the page it writes gets its header, NAME line and the hand-written sections
(man/*.include, `[SECTION]` then roff) here. henbackup.toml(5) is hand-written mdoc."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


PAGES = [  # module, page, section, manual title, what it is
    ("henbackup.cli.daemon", "henbackup", "8", "System Administration", "supervise restic backups"),
    ("henbackup.cli.ctl", "henbackupctl", "1", "User Commands", "talk to the henbackup daemon"),
]


def merged(generated: list[str], include: Path) -> list[str]:
    """The page with the hand-written sections, as the Makefile's argparse-manpage merges
    them: `[X]` adds section X at the end (`.SH "X"`), `[<X]` puts its text at the start
    of the generated section X, `[>X]` at its end; the roff between markers stays."""
    page = list(generated)
    blocks: list[tuple[str, list[str]]] = []
    for line in include.read_text().splitlines():
        if line.startswith("[") and line.endswith("]"):
            blocks.append((line[1:-1], []))
        elif blocks:
            blocks[-1][1].append(line)
    for marker, text in blocks:
        if marker[0] in "<>":
            start = page.index(f".SH {marker[1:]}") + 1
            ends = (n for n in range(start, len(page)) if page[n].startswith(".SH"))
            at = start if marker[0] == "<" else next(ends, len(page))
            page[at:at] = text
        else:
            page += [f'.SH "{marker}"', *text]
    return page


def build(out: Path, version: str, date: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for module, page, section, title, what in PAGES:
        generated = subprocess.run(
            ["argparse-manpage", "--module", module, "--function", "get_parser"],
            check=True, capture_output=True, text=True,
        ).stdout.splitlines()
        assert generated[0].startswith(".TH") and generated[1:3] == [".SH NAME", page], generated[:3]
        header = [
            f'.TH {page.upper()} "{section}" "{date}" "henbackup {version}" "{title}"',
            ".SH NAME",
            f"{page} \\- {what}",
        ]
        body = header + merged(generated[3:], Path("man") / f"{page}.{section}.include")
        (out / f"{page}.{section}").write_text("\n".join(body) + "\n")
    shutil.copy("man/henbackup.toml.5", out / "henbackup.toml.5")


if __name__ == "__main__":
    from henbackup import __version__

    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    build(Path(sys.argv[1]), __version__, time.strftime("%B %-d, %Y", time.gmtime(epoch)))
