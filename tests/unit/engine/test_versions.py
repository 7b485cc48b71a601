"""`restic version` once per binary: kept in the cache directory by path and identity,
asked again for another binary in the same place, and never trusted blindly from disk.
`ask` stands in for restic only to count the questions (test_one_opening runs the real one)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from henbackup.engine import versions
from henbackup.errors import EngineError


class Asker:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, path: str) -> str:
        self.asked.append(path)
        return "restic 0.18.0 compiled with go1.24.4 on linux/amd64\n"


@pytest.fixture
def binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(versions, "_known", {})  # a fresh process, as each job is
    path = tmp_path / "bin" / "restic"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_a_binary_is_asked_once_then_read_from_the_cache_directory(
    binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ask, cache = Asker(), tmp_path / "cache"
    text = versions.version_text(str(binary), cache, ask)
    assert text.startswith("restic 0.18.0") and ask.asked == [str(binary)]
    monkeypatch.setattr(versions, "_known", {})  # the next job process
    assert versions.version_text(str(binary), cache, ask) == text
    assert ask.asked == [str(binary)]
    binary.write_text("#!/bin/sh\n# another build\n")  # upgraded in place
    versions.version_text(str(binary), cache, ask)
    assert ask.asked == [str(binary)] * 2


@pytest.mark.parametrize(
    "kept", [b"not json", b"[1, 2]", b'{"%s": {"identity": "x", "version": 3}}', b"[" * 100_000]
)
def test_a_cache_file_of_the_wrong_shape_counts_as_absent(
    binary: Path, tmp_path: Path, kept: bytes
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / versions.CACHE_FILE).write_bytes(kept.replace(b"%s", str(binary).encode()))
    ask = Asker()
    assert versions.version_text(str(binary), cache, ask).startswith("restic 0.18.0")
    assert ask.asked == [str(binary)]
    written = json.loads((cache / versions.CACHE_FILE).read_text())
    assert written[str(binary)]["version"].startswith("restic 0.18.0")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", ["fifo", "link", "huge"])
def test_a_cache_file_that_is_no_small_regular_file_counts_as_absent(
    binary: Path, tmp_path: Path, kind: str
) -> None:
    """A FIFO there hung every job; a link was followed; a huge file was read whole."""
    cache = tmp_path / "cache"
    cache.mkdir()
    path = cache / versions.CACHE_FILE
    kept = {str(binary): {"identity": list(_identity(binary)), "version": "restic 0.1"}}
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "link":
        (tmp_path / "elsewhere.json").write_text(json.dumps(kept))
        path.symlink_to(tmp_path / "elsewhere.json")
    else:
        path.write_text(json.dumps(kept) + " " * (1 << 16))
    ask = Asker()
    assert versions.version_text(str(binary), cache, ask).startswith("restic 0.18.0")
    assert ask.asked == [str(binary)]
    assert path.is_file() and not path.is_symlink()  # replaced by the answer


def _identity(binary: Path) -> tuple[int, ...]:
    found = binary.stat()
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)


def test_an_unwritable_cache_directory_costs_only_another_question(
    binary: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "a-file"
    cache.write_text("")  # no directory can be made here
    ask = Asker()
    versions.version_text(str(binary), cache, ask)
    assert ask.asked == [str(binary)]


def test_a_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"^cannot run restic \(/nowhere/restic\): No such file"):
        versions.version_text("/nowhere/restic", tmp_path, Asker())
    assert not os.path.exists(tmp_path / versions.CACHE_FILE)
