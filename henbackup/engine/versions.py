"""An engine's version, asked once per binary rather than once per job.

Each job runs in a process of its own (forked by a worker, or `henbackup backup` by hand),
so the answer is kept in a small JSON file in the cache directory, keyed by the binary's
path and identity (device, inode, size, mtime): an upgraded or replaced binary is asked
again. What cannot be read of that file counts as absent; a file that cannot be written
only costs the next job another `restic version` (or `borg --version`: one file for both,
keyed by path).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from henbackup.errors import EngineError
from henbackup.files import read_record, write_atomically

CACHE_FILE = "henbackup-restic-versions.json"

# The answers this process already has, by path and identity.
_known: dict[tuple[str, tuple[int, ...]], str] = {}


def version_text(
    binary: str, cache_dir: Path | None, ask: Callable[[str], str], tool: str = "restic"
) -> str:
    """What `ask(path)` (the engine's version command, restic.py or borg.py) says of
    `binary`, kept from an earlier call when the binary is the same. Raises EngineError
    (naming `tool`) if it cannot run."""
    path = shutil.which(binary) or binary
    try:
        found = os.stat(path)
    except OSError as error:
        raise EngineError(f"cannot run {tool} ({binary}): {error.strerror or error}") from None
    identity = (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)
    if (path, identity) in _known:
        return _known[(path, identity)]
    cache = cache_dir / CACHE_FILE if cache_dir is not None else None
    kept = _read(cache) if cache is not None else {}
    entry = kept.get(path)
    if isinstance(entry, dict) and entry.get("identity") == list(identity):
        text = entry.get("version")
        if isinstance(text, str):
            _known[(path, identity)] = text
            return text
    text = ask(path)
    _known[(path, identity)] = text
    if cache is not None:
        kept[path] = {"identity": list(identity), "version": text}
        with contextlib.suppress(OSError):  # the next job asks again
            write_atomically(cache, (json.dumps(kept, indent=1) + "\n").encode(), 0o644)
    return text


def _read(cache: Path) -> dict[str, object]:
    """The kept answers; none from what is no small regular file (a FIFO hung every job)."""
    try:
        kept = json.loads(read_record(cache))  # an entry a binary: 64 KiB hold hundreds
    except (OSError, ValueError, RecursionError):
        return {}
    return kept if isinstance(kept, dict) else {}
