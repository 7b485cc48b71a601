"""What a borg backup will read, for its percent and time left (restic's scanner's total).

borg counts what it has read, never what is still to read. So beside `borg create`, borg
itself walks the same paths with the same excludes in a dry run (`create --dry-run --list`,
borg.py's scan_args): its walk and its matcher, not a copy of them. It lists each item it
would save, henbackup adds up the regular files among them, as borg will read them (a file
hard-linked twice, once). The total is known once that listing ended well.
"""

from __future__ import annotations

import json
import os
import stat

# borg's exit codes that mean the listing is whole: 1 is a warning (a path not there).
_COMPLETE = (0, 1)


class ScanTotal:
    """The files and bytes of a dry run's listing (its `file_status` lines on stderr)."""

    def __init__(self) -> None:
        self.files = self.size = 0
        self.complete = False
        self._linked: set[tuple[int, int]] = set()  # (device, inode) of hard-linked files

    @property
    def total(self) -> tuple[int, int] | None:
        """(files, bytes) once the listing ended well; None until then (or ever)."""
        return (self.files, self.size) if self.complete else None

    def feed(self, line: str) -> None:
        """One line of the dry run: an item it would save (status "-") is counted."""
        if '"file_status"' not in line:
            return
        try:
            message = json.loads(line)
        except ValueError:
            return
        if not isinstance(message, dict) or message.get("status") != "-":
            return
        try:  # it may be gone already, or its name not UTF-8 (borg shows a "?" then)
            st = os.lstat(str(message.get("path")))
        except (OSError, ValueError):
            return
        if not stat.S_ISREG(st.st_mode):
            return
        if st.st_nlink > 1:
            if (st.st_dev, st.st_ino) in self._linked:
                return
            self._linked.add((st.st_dev, st.st_ino))
        self.files += 1
        self.size += st.st_size

    def end(self, returncode: int) -> None:
        self.complete = returncode in _COMPLETE
