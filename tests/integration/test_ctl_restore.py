"""henbackupctl restore-snapshot end to end (one daemon per restic version): every way to
restore, compared byte for byte and mode for mode with the source tree."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import ctl_schemas
import pytest
from ctl_helpers import (
    FRESH_INSTEAD,
    JOB_TIMEOUT,
    PASSWORD,
    ctl,
    lines,
    make_tree,
    new_repository,
    regular_files,
    reply,
    restic_snapshots,
    restored,
    said,
    tree_state,
    write_config,
)
from daemon_helpers import Daemon, describe

from henbackup.humanize import size

pytestmark = [pytest.mark.integration, pytest.mark.slow]


# --- restore: byte for byte, on both restic versions ------------------------------------------


def test_restore_snapshot_gives_back_the_exact_tree(
    restic: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    _templates: dict[str, Path],
) -> None:
    repository = new_repository(restic, tmp_path / "local", _templates, tmp_path_factory)
    data = make_tree(tmp_path / "pictures")
    source = tree_state(data)
    files, total = regular_files(data)
    config = write_config(
        tmp_path,
        restic,
        {"local": (repository, PASSWORD)},
        {"pictures": {"paths": [str(data)], "repositories": ["local"]}},
    )
    daemon = Daemon(config, tmp_path / "daemon")
    with daemon:
        daemon.wait_for("daemon.started")
        backup = ctl(daemon, "backup", "pictures")
        assert backup.returncode == 0, said(backup)
        (snapshot,) = restic_snapshots(restic, repository)
        short, full = snapshot["short_id"], snapshot["id"]

        # no --target: a new directory under the state directory, printed
        default = ctl(daemon, "restore-snapshot", "local", short)
        assert (default.returncode, default.stderr) == (0, ""), said(default)
        *steps, summary = lines(default.stdout)
        match = re.fullmatch(
            rf"restored snapshot {short} of pictures into (/\S+): {files} files, "
            rf"{re.escape(size(total))}",
            summary,
        )
        assert match, default.stdout
        target = Path(match[1])
        assert target.parent == daemon.state / "restores"
        assert target.name.startswith(f"local-{short}-")
        assert steps == [
            "pictures→local: restore started",
            f"pictures→local: restore succeeded: snapshot {short} into {target}",
        ]
        assert tree_state(restored(target, data)) == source

        # --target DIR that does not exist (a full id), --json: DIR is made 0700, restored into
        made = tmp_path / "restored"
        js = ctl(daemon, "--json", "restore-snapshot", "local", full, "--target", str(made))
        assert (js.returncode, js.stderr) == (0, ""), said(js)
        answer = reply(js)
        ctl_schemas.validate(answer, ctl_schemas.RESTORED)
        assert made.stat().st_mode & 0o7777 == 0o700
        done = daemon.wait_for("job.succeeded", operation="restore", target=str(made))
        assert {k: v for k, v in answer.items() if k != "jobs"} == {
            "ok": True,
            "job": done["HENBACKUP_JOB"],
            "snapshot": full,
            "backup": "pictures",
            "target": str(made),
            "target_existed": False,
            "files_restored": files,
            "bytes_restored": total,
        }
        assert [(j["job"], j["result"], j["operation"]) for j in answer["jobs"]] == [
            (done["HENBACKUP_JOB"], "succeeded", "restore")
        ]
        assert tree_state(restored(made, data)) == source

        # --include PATH: that subtree only; a relative --target is the client's; one that
        # exists gets a new directory inside (it may hold links); --no-wait prints where
        cwd = tmp_path / "cwd"
        album, here = data / "album", cwd / "here"
        here.mkdir(parents=True)
        no_wait = ctl(
            daemon, "restore-snapshot", "local", short, "--target", "here",
            "--include", str(album), "--no-wait", cwd=cwd,
        )  # fmt: skip
        assert (no_wait.returncode, no_wait.stderr) == (0, ""), said(no_wait)
        match = re.fullmatch(
            rf"restore-snapshot requested, into ({re.escape(str(here))}/local-{short}-\S+)"
            rf" \(new: {re.escape(str(here))} exists\)\n",
            no_wait.stdout,
        )
        assert match, no_wait.stdout
        done = daemon.wait_for("job.succeeded", timeout=JOB_TIMEOUT, target=match[1])
        album_files, album_bytes = regular_files(album)
        assert (done["HENBACKUP_FILES_RESTORED"], done["HENBACKUP_BYTES_RESTORED"]) == (
            str(album_files),
            str(album_bytes),
        )
        assert sorted(p.name for p in restored(Path(match[1]), data).iterdir()) == ["album"]
        assert tree_state(restored(Path(match[1]), album)) == tree_state(album)

        # a snapshot that is not there: exit 1, and no empty directory left made for it
        before = sorted((daemon.state / "restores").iterdir())
        unknown = ctl(daemon, "restore-snapshot", "local", "deadbeef")
        assert unknown.returncode == 2, said(unknown)  # an unknown name
        assert "no snapshot" in unknown.stderr
        assert sorted((daemon.state / "restores").iterdir()) == before

        stop = daemon.stop()
    assert stop == 0, daemon.report()
    assert daemon.noise == [], daemon.report()
    failed = daemon.find("job.failed")
    assert failed == [], describe(failed)


def test_in_place_restores_over_the_original_paths_only_where_root_alone_may_write(
    restic: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    _templates: dict[str, Path],
) -> None:
    """--in-place, as root: refused (exit 2, one line, nothing changed) while the tree holds
    a link restic could follow or a directory someone else may change; then the snapshot
    comes back byte for byte over the changed tree, its link as a link. What was added since
    the snapshot stays (restic deletes nothing)."""
    repository = new_repository(restic, tmp_path / "local", _templates, tmp_path_factory)
    srv = make_tree(tmp_path / "srv")
    source = tree_state(srv)
    files, total = regular_files(srv)
    config = write_config(
        tmp_path,
        restic,
        {"local": (repository, PASSWORD)},
        {"pictures": {"paths": [str(srv)], "repositories": ["local"]}},
    )
    daemon = Daemon(config, tmp_path / "daemon")
    with daemon:
        daemon.wait_for("daemon.started")
        assert ctl(daemon, "backup", "pictures").returncode == 0
        (snapshot,) = restic_snapshots(restic, repository)
        short = snapshot["short_id"]

        (srv / "notes.txt").write_text("changed since the snapshot, and longer than it was\n")
        (srv / "album" / "cat.jpg").chmod(0o666)
        (srv / "added.txt").write_text("new since the snapshot\n")
        uploads = srv / "album" / "uploads"
        refusals = {
            "a link": (srv / "latest.jpg", "is a symbolic link, which restic could follow"),
            "a folder of uid 1000": (
                uploads,
                "can be changed by uid 1000, who could plant a link while restic writes",
            ),
        }
        for what, (path, why) in refusals.items():
            if what == "a folder of uid 1000":
                (srv / "latest.jpg").unlink()  # lost since the snapshot
                uploads.mkdir()
                os.chown(uploads, 1000, 1000)
            changed = tree_state(srv)
            refused = ctl(daemon, "restore-snapshot", "local", short, "--in-place")
            error = f"--in-place: {path} {why}: {FRESH_INSTEAD}"
            assert (refused.returncode, refused.stderr) == (2, f"henbackupctl: {error}\n"), what
            assert lines(refused.stdout) == [
                "pictures→local: restore started",
                f"pictures→local: restore failed: {error}",
            ]
            daemon.wait_for("job.failed", operation="restore", error=error)
            assert tree_state(srv) == changed, what

        # --include narrows what is looked at (her folder is elsewhere) and what is written
        notes = srv / "notes.txt"
        narrowed = ctl(
            daemon, "restore-snapshot", "local", short, "--in-place", "--include", str(notes)
        )
        assert (narrowed.returncode, narrowed.stderr) == (0, ""), said(narrowed)
        assert notes.read_bytes() == source["notes.txt"][2]
        assert (srv / "album" / "cat.jpg").stat().st_mode & 0o777 == 0o666  # not restored

        uploads.rmdir()
        done = ctl(daemon, "restore-snapshot", "local", short, "--in-place")
        assert (done.returncode, done.stderr) == (0, ""), said(done)
        now_files, now_bytes = regular_files(srv)  # counted on disk, as restic 0.14 says none
        assert (now_files, now_bytes - total) == (files + 1, len("new since the snapshot\n"))
        assert lines(done.stdout)[-1] == (
            f"restored snapshot {short} of pictures into /: {now_files} files, {size(now_bytes)}"
        )
        mode = stat.S_IMODE((srv / "added.txt").stat().st_mode)
        added = source | {"added.txt": ("file", mode, b"new since the snapshot\n")}
        assert tree_state(srv) == added
        assert (srv / "latest.jpg").is_symlink()
        stop = daemon.stop()
    assert stop == 0, daemon.report()
    assert daemon.noise == [], daemon.report()
