"""restore-snapshot's answers: where a restore may go (a fresh 0700 directory, never through
a link nor below a directory someone but root may change), --in-place, snapshot ids."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from henbackup.jobs import restore

from .stand_in import Conversation, answer, ask, usage

# --- restore ----------------------------------------------------------------------------


def test_a_relative_target_is_refused(master: Any) -> None:
    reply = ask(master, "restore-snapshot", repository="aws", snapshot="abcd1234", target="out")
    assert reply == usage("--target 'out': give an absolute path")
    assert master.one_offs == []


def test_in_place_goes_to_a_job_that_writes_over_slash(master: Any) -> None:
    """Nothing is made: the job checks what it writes over just before restic runs."""
    request = {"repository": "aws", "snapshot": "abcd1234", "in_place": True, "wait": True}
    assert ask(master, "restore-snapshot", **request) is None
    ((job, _, _),) = master.one_offs
    assert job == {
        "command": "restore-snapshot",
        "repository": "aws",
        "snapshot": "abcd1234",
        "target": "/",
        "include": [],
        "priority": None,
        "in_place": True,
    }
    assert not (master.state_dir / "restores").exists()


def test_in_place_and_a_target_are_a_usage_error(master: Any, tmp_path: Path) -> None:
    target = str(tmp_path / "out")
    request = {"repository": "aws", "snapshot": "abcd1234", "in_place": True, "target": target}
    assert ask(master, "restore-snapshot", **request) == usage(
        "--in-place and --target: give one of them"
    )
    assert (master.one_offs, (tmp_path / "out").exists()) == ([], False)


def test_in_place_is_true_or_false(master: Any) -> None:
    request = {"repository": "aws", "snapshot": "abcd1234", "in_place": "false"}
    assert ask(master, "restore-snapshot", **request) == usage(
        "malformed request: 'in_place' of restore-snapshot must be true or false, not a string"
    )
    assert master.one_offs == []


def test_a_target_that_does_not_exist_is_made_and_restored_into(
    master: Any, tmp_path: Path
) -> None:
    conversation = Conversation()
    request = {
        "command": "restore-snapshot",
        "repository": "aws",
        "snapshot": "abcd1234",
        "target": f"{tmp_path}/srv//x/",
        "include": ["/home/me/Pictures/2023", "notes.txt"],
        "priority": "superior",
        "wait": True,
    }
    assert answer(master, request, conversation) is None
    ((job, given, wait),) = master.one_offs
    made = tmp_path / "srv" / "x"
    assert (made.is_dir(), made.is_symlink(), os.listdir(made)) == (True, False, [])
    assert made.stat().st_mode & 0o7777 == 0o700
    assert (tmp_path / "srv").stat().st_mode & 0o777 == 0o700  # what was missing, made 0700
    assert job == {
        "command": "restore-snapshot",
        "repository": "aws",
        "snapshot": "abcd1234",
        "target": str(made),
        "include": ["/home/me/Pictures/2023", "notes.txt"],
        "priority": "superior",
    }
    assert (given, wait) == (conversation, True)


def test_a_target_that_exists_gets_a_new_directory_inside(master: Any, tmp_path: Path) -> None:
    """What exists may hold links someone planted: restic gets a directory made fresh."""
    existing = tmp_path / "out"
    existing.mkdir(mode=0o755)
    reply = ask(
        master, "restore-snapshot", repository="aws", snapshot="abcd1234", target=f"{existing}/"
    )
    assert reply == {
        "ok": True,
        "request": "r00000001",
        "accepted": "restore-snapshot",
        "target_existed": True,
    }
    ((job, _, _),) = master.one_offs
    made = Path(job["target"])
    assert made.parent == existing
    assert re.fullmatch(r"aws-abcd1234-\d{8}-\d{6}", made.name)
    assert (made.is_dir(), made.is_symlink(), os.listdir(made)) == (True, False, [])
    assert made.stat().st_mode & 0o7777 == 0o700
    assert job["target_existed"] is True


def restore_into(master: Any, target: Path) -> Any:
    return ask(master, "restore-snapshot", repository="aws", snapshot="ab12", target=str(target))


def test_a_target_through_a_symbolic_link_is_refused(master: Any, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for target in (tmp_path / "link", tmp_path / "link" / "deeper"):
        reply = ask(
            master, "restore-snapshot", repository="aws", snapshot="ab12", target=str(target)
        )
        assert reply == usage(
            f"--target: {tmp_path / 'link'} is a symbolic link or not a directory: a restore"
            " never follows links; give the real path of a directory"
        )
    assert (master.one_offs, os.listdir(tmp_path / "real")) == ([], [])


@pytest.mark.parametrize(
    ("owner", "mode", "who"),
    [(1000, 0o755, "uid 1000"), (0, 0o777, "everyone"), (0, 0o775, "group 100")],
)
def test_a_target_someone_else_may_change_is_refused(
    master: Any, tmp_path: Path, owner: int, mode: int, who: str
) -> None:
    """They could move the restore's directory away and put a link in its place."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, owner, 100)
    theirs.chmod(mode)
    for target in (theirs, theirs / "below"):
        reply = ask(
            master, "restore-snapshot", repository="aws", snapshot="ab12", target=str(target)
        )
        assert reply == usage(
            f"--target: {theirs} can be changed by {who}, who could redirect the restore:"
            " restore into a directory only root can change (the default, or another --target)"
        )
    assert (master.one_offs, os.listdir(theirs)) == ([], [])


def test_a_sticky_directory_of_roots_may_hold_the_target(master: Any, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp: others add entries, but cannot move root's
    reply = ask(master, "restore-snapshot", repository="aws", snapshot="abcd", target=str(shared))
    assert reply == {
        "ok": True,
        "request": "r00000001",
        "accepted": "restore-snapshot",
        "target_existed": True,
    }
    ((job, _, _),) = master.one_offs
    assert Path(job["target"]).parent == shared


def test_the_default_target_is_a_new_directory_under_the_state_directory(
    master: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    formats = []

    def strftime(form: str) -> str:
        formats.append(form)
        return "20240309-160000"

    monkeypatch.setattr(restore, "time", SimpleNamespace(strftime=strftime))
    ask(master, "restore-snapshot", repository="aws", snapshot="abcd1234ef")
    ask(master, "restore-snapshot", repository="aws", snapshot="abcd1234ef")  # same second
    restores = master.state_dir / "restores"
    targets = [job["target"] for job, _, _ in master.one_offs]
    assert targets == [
        str(restores / "aws-abcd1234-20240309-160000"),
        str(restores / "aws-abcd1234-20240309-160000-2"),
    ]
    assert all(Path(target).is_dir() for target in targets)  # made, so that none is shared
    assert (restores.stat().st_mode & 0o777) == 0o700
    assert formats == ["%Y%m%d-%H%M%S"] * 2
    assert [wait for _, _, wait in master.one_offs] == [False, False]


@pytest.mark.parametrize("snapshot", ["", "abcd/../x", "ab cd", "-h", "abcd1234*", "abc"])
def test_a_snapshot_id_is_four_letters_or_digits_or_more(master: Any, snapshot) -> None:
    reply = ask(master, "restore-snapshot", repository="aws", snapshot=snapshot)
    shown = repr(snapshot)
    assert reply == usage(
        f"{shown} is not a snapshot id: give at least its first 4 characters"
        " (see henbackupctl list-snapshots aws)"
    )
    assert master.one_offs == []
