"""What an in-place restore may write over (jobs/restore.py): trees only root may change, all
the way down from /, with no link in them. Real directories, owners and modes (as root)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from henbackup.errors import UnsafeTarget, UsageError
from henbackup.jobs.restore import (
    check_in_place,
    fresh_directory,
    in_place_roots,
    restore_directory,
    seen_otherwise,
)

FRESH = "restore into a fresh directory with --target DIR instead"
NOBODY = 65534


@pytest.fixture
def srv(tmp_path: Path) -> Path:
    """A tree as /srv holds one: root's, 0755, with a file and a folder."""
    tmp_path.chmod(0o755)
    tree = tmp_path / "srv"
    (tree / "www").mkdir(parents=True)
    (tree / "www" / "index.html").write_text("hello\n")
    (tree / "notes.txt").write_text("notes\n")
    return tree


def refusal(path: Path, why: str) -> str:
    return f"--in-place: {path} {why}: {FRESH}"


def nobody_may_write(default: bool = False) -> bytes:
    """An ACL as `setfacl -m u:nobody:rwx` (with -d: its default ACL) sets."""

    def entry(tag: int, perm: int, qualifier: int = 0xFFFFFFFF) -> bytes:
        return struct.pack("<HHI", tag, perm, qualifier)

    user_obj, user, group_obj, mask, other = 0x01, 0x02, 0x04, 0x10, 0x20
    return b"".join(
        (
            struct.pack("<I", 2),
            entry(user_obj, 7),
            entry(user, 7, NOBODY),
            entry(group_obj, 5),
            entry(mask, 7),
            entry(other, 5),
        )
    )


def grant_nobody(directory: Path) -> None:
    """An access ACL as `setfacl -m u:nobody:rwx` sets on a root:root 0755 directory: the
    mode then shows 0775, its group bits the ACL's mask, though the group is root."""
    os.setxattr(directory, "system.posix_acl_access", nobody_may_write())
    assert (directory.stat().st_mode & 0o7777, directory.stat().st_gid) == (0o775, 0)


def acls(path: Path) -> list[str]:
    return sorted(name for name in os.listxattr(path) if name.startswith("system.posix_acl"))


ACL_WHO = "whoever its ACL lets write (setfacl -b removes it)"


def test_a_directory_whose_acl_lets_someone_write_is_refused(srv: Path) -> None:
    """Its group is root's, but nobody may rename what is in it."""
    grant_nobody(srv / "www")
    with pytest.raises(UnsafeTarget) as raised:
        check_in_place([str(srv)], [])
    why = f"can be changed by {ACL_WHO}, who could plant a link while restic writes"
    assert str(raised.value) == refusal(srv / "www", why)
    with pytest.raises(UnsafeTarget) as raised:
        fresh_directory(str(srv / "www" / "restores"), "snap")
    assert str(raised.value) == (
        f"{srv / 'www'} can be changed by {ACL_WHO}, who could redirect the restore:"
        " restore into a directory only root can change (the default, or another --target)"
    )
    assert sorted(os.listdir(srv / "www")) == ["index.html"]  # nothing made in it


def test_a_default_acl_where_restic_makes_things_in_place_is_refused(srv: Path) -> None:
    """What restic makes there would inherit it: with the group-write bits of a directory
    restored, nobody could plant a link in it."""
    os.setxattr(srv.parent, "system.posix_acl_default", nobody_may_write())
    check_in_place([str(srv)], [])  # above what restic writes: it makes nothing there
    why = "has a default ACL, which may let others change what restic makes in it"
    with pytest.raises(UnsafeTarget) as raised:
        check_in_place([str(srv.parent / "gone")], [])
    assert str(raised.value) == refusal(srv.parent, f"{why} (setfacl -k removes it)")
    os.setxattr(srv / "www", "system.posix_acl_default", nobody_may_write())
    with pytest.raises(UnsafeTarget) as raised:
        check_in_place([str(srv)], [])
    assert str(raised.value) == refusal(srv / "www", f"{why} (setfacl -k removes it)")


def test_a_fresh_directory_inherits_no_acl_so_neither_does_what_restic_makes(
    srv: Path,
) -> None:
    os.setxattr(srv, "system.posix_acl_default", nobody_may_write())
    (srv / "shared").mkdir(mode=0o755)
    assert acls(srv / "shared") == ["system.posix_acl_access", "system.posix_acl_default"]
    fresh = fresh_directory(str(srv), "snap")
    assert acls(fresh) == []
    (fresh / "pictures").mkdir(mode=0o775)  # as restic makes a group-writable directory
    assert acls(fresh / "pictures") == []
    made = restore_directory(str(srv / "new" / "target"), "snap")  # made, its parent too
    assert (made, acls(srv / "new"), acls(made)) == (srv / "new" / "target", [], [])


def test_a_group_writable_directory_of_group_root_without_acl_will_do(srv: Path) -> None:
    (srv / "admins").mkdir(mode=0o775)
    assert fresh_directory(str(srv / "admins"), "snap").parent == srv / "admins"


def test_a_tree_only_root_may_change_may_be_restored_in_place(srv: Path) -> None:
    os.chown(srv / "notes.txt", 1000, 1000)  # a file of someone's: restic overwrites it
    (srv / "admins").mkdir(mode=0o775)  # writable by group root only
    check_in_place([str(srv), str(srv.parent / "gone" / "too")], [])


def test_a_sticky_directory_of_roots_will_do_on_the_way_if_what_is_below_exists(
    srv: Path,
) -> None:
    """As /tmp: others cannot move or remove what exists in it, but may add what does not."""
    srv.parent.chmod(0o1777)
    check_in_place([str(srv)], [])
    with pytest.raises(UnsafeTarget) as raised:
        check_in_place([str(srv.parent / "gone" / "too")], [])
    why = "can be changed by everyone, who could plant a link while restic writes"
    assert str(raised.value) == refusal(srv.parent, why)


def test_a_file_of_someone_elses_in_a_sticky_directory_is_refused(srv: Path) -> None:
    """Its owner may still remove it there, and put a link (to /etc/passwd) in its place."""
    srv.parent.chmod(0o1777)
    (srv.parent / "report.txt").write_text("root's\n")
    check_in_place([str(srv.parent / "report.txt")], [])
    os.chown(srv.parent / "report.txt", NOBODY, NOBODY)
    with pytest.raises(UnsafeTarget) as raised:
        check_in_place([str(srv.parent / "report.txt")], [])
    why = f"can be changed by uid {NOBODY}, who could plant a link while restic writes"
    assert str(raised.value) == refusal(srv.parent / "report.txt", why)


@pytest.mark.parametrize(
    ("owner", "mode", "who"),
    [
        (1000, 0o755, "uid 1000"),
        (0, 0o777, "everyone"),
        (0, 0o775, "group 100"),
        (0, 0o1777, "everyone"),  # sticky: others may add what restic writes there
    ],
)
def test_a_directory_someone_else_may_change_is_refused(
    srv: Path, owner: int, mode: int, who: str
) -> None:
    """They could plant a link in it while restic writes."""
    theirs = srv / "www" / "uploads"
    theirs.mkdir()
    os.chown(theirs, owner, 100)
    theirs.chmod(mode)
    with pytest.raises(UnsafeTarget) as raised:
        check_in_place([str(srv)], [])
    expected = refusal(
        theirs, f"can be changed by {who}, who could plant a link while restic writes"
    )
    assert str(raised.value) == expected


def test_a_directory_on_the_way_someone_else_may_change_is_refused(srv: Path) -> None:
    os.chown(srv.parent, 1000, 1000)
    with pytest.raises(UnsafeTarget) as raised:
        check_in_place([str(srv / "www")], [])
    assert str(raised.value) == refusal(
        srv.parent, "can be changed by uid 1000, who could plant a link while restic writes"
    )


@pytest.mark.parametrize(
    ("link", "path"),
    [
        ("www/index.html", ""),  # in the tree
        ("www", "www/index.html"),  # on the way
        ("www", "www"),  # the path itself
    ],
)
def test_a_symbolic_link_is_refused_and_not_followed(srv: Path, link: str, path: str) -> None:
    """restic 0.14 writes through a link in place of a file or a directory."""
    elsewhere = srv.parent / "elsewhere"
    elsewhere.mkdir()
    os.chown(elsewhere, 1000, 1000)  # were it followed, this would be refused instead
    (srv / "www" / "index.html").unlink()
    if link == "www":
        (srv / "www").rmdir()
    (srv / link).symlink_to(elsewhere)
    with pytest.raises(UnsafeTarget) as raised:
        check_in_place([str(srv / path)], [])
    assert str(raised.value) == refusal(srv / link, "is a symbolic link, which restic could follow")


def test_includes_narrow_the_trees_looked_at(srv: Path) -> None:
    (srv / "www" / "uploads").mkdir()
    os.chown(srv / "www" / "uploads", 1000, 1000)
    check_in_place([str(srv)], [str(srv / "notes.txt")])  # www is not written: not looked at
    with pytest.raises(UnsafeTarget):
        check_in_place([str(srv)], [str(srv / "notes.txt"), "*.html"])  # a pattern: all of srv


def test_the_roots_are_the_deeper_of_each_include_and_path() -> None:
    paths = ["/srv/www", "/etc"]
    assert in_place_roots(paths, []) == ("/srv/www", "/etc")
    assert in_place_roots(paths, ["/srv/www/img", "/etc", "/home"]) == ("/srv/www/img", "/etc")
    assert in_place_roots(paths, ["/srv"]) == ("/srv/www",)
    assert in_place_roots(paths, ["/srv/wwwx"]) == ()
    for unplain in ("img", "/srv/www/*.png", "/srv/../etc", "/srv/www/"):
        assert in_place_roots(paths, ["/etc", unplain]) == ("/srv/www", "/etc")


def test_a_target_the_daemon_sees_otherwise_is_named(tmp_path: Path) -> None:
    """The unit's PrivateTmp= gives the daemon its own /tmp: the client's /tmp is another."""
    seen = tmp_path.stat()
    base = {"path": str(tmp_path), "device": seen.st_dev, "inode": seen.st_ino}
    assert seen_otherwise(base, str(tmp_path / "restore")) is None
    assert seen_otherwise(None, str(tmp_path / "restore")) is None  # an older henbackupctl
    other = {**base, "inode": seen.st_ino + 1}
    assert seen_otherwise(other, str(tmp_path / "restore")) == str(tmp_path)
    gone = {**base, "path": str(tmp_path / "gone")}
    assert seen_otherwise(gone, str(tmp_path / "gone" / "restore")) == str(tmp_path / "gone")


@pytest.mark.parametrize(
    "base",
    [
        {"path": "/srv", "device": 1, "inode": 2},  # not above the target
        {"path": "/tmp", "device": "1", "inode": 2},
        {"path": "/tmp", "device": 1, "inode": True},
        {"path": "/tmp", "device": 1},
        {"path": 5, "device": 1, "inode": 2},
    ],
)
def test_a_target_base_of_another_shape_is_a_usage_error(base: dict[str, object]) -> None:
    with pytest.raises(UsageError) as raised:
        seen_otherwise(base, "/tmp/restore")
    assert str(raised.value) == (
        "target_base: give the path, device and inode of a directory at or above --target"
    )
