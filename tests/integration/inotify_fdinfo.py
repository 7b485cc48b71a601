"""What the kernel says an inotify instance watches (/proc/self/fdinfo)."""

from __future__ import annotations


def kernel_watches(fd: int) -> set[int]:
    """The watch descriptors inotify instance `fd` of this process holds."""
    with open(f"/proc/self/fdinfo/{fd}") as info:
        lines = [line.split() for line in info if line.startswith("inotify wd:")]
    return {int(fields[1].removeprefix("wd:"), 16) for fields in lines}  # printed in hex


def kernel_watched_inodes(fd: int) -> dict[int, int]:
    """The inode each watch descriptor of inotify instance `fd` of this process watches."""
    with open(f"/proc/self/fdinfo/{fd}") as info:
        lines = [line.split()[1:] for line in info if line.startswith("inotify wd:")]
    fields = [dict(field.split(":", 1) for field in line) for line in lines]
    return {int(f["wd"], 16): int(f["ino"], 16) for f in fields}  # printed in hex
