"""The Excluder agrees with real restic (0.14 and 0.18) on every path of a tricky tree."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from henbackup.excludes import Excluder

# Names chosen to hit every rule; bytes so that undecodable names are possible.
TREE = [
    b".git/config",
    b".git/objects/ab/cd",
    b"src/main.go",
    b"src/main.tmp",
    b"src/node_modules/pkg/index.js",
    b"src/deep/node_modules/x.js",
    b"cache/blob",
    b"build",
    b"logs/a.log",
    b"logs/important.log",
    b"sub/other/file",
    b"sub/keep/file",
    b"skipdir/inner/file",
    b"data/one/deep/file",
    b"data/one/shallow",
    b"keep/x/drop/file",
    b"keep/x/y/drop",
    b"keep/stay",
    b"x/a/b/y/file",
    b"a.txt",
    b"ab.txt",
    b"a.dat",
    b"c.dat",
    b"ax.bin",
    b"cx.bin",
    b"b-range",
    b"d-range",
    b"*star",
    b"star",
    "r1/€".encode(),  # 3 bytes: `*??` matches it in Go (see excludes.py)
    "r1/ab€".encode(),
    "r1/é".encode(),  # 2 bytes: `*??` does not
    b"r1/a",
    b"r2/q",
    "r2/ü".encode(),
    b"r2/xy",
    "r3/ü".encode(),
    b"r3/a",
    "été/file".encode(),
    b"sp ace/file",
    b"bad\xff\xfename/file",
    b"bad\xffx",
    b"[literal]",
]

PATTERN_SETS = {
    "names": [".git", "*.tmp", "cache/", "./build", "a/../logs"],
    "globs": [
        "**/node_modules",
        "{root}/keep/**/drop",
        "x/**/y",
        "?.txt",
        "[ab]*.dat",
        "[^c]x.bin",
        "[a-c]-range",
        "\\*star",
        "data/*/deep",
        "\\[literal]",
    ],
    "negations": [
        "*.log",
        "!important.log",
        "sub/*",
        "!sub/keep",
        "skipdir",
        "!skipdir/inner",  # cannot come back: restic never enters skipdir
        "!ab.txt",
    ],
    "runes": ["r1/*??", "r2/?", "r3/[à-ü]", "ét*", "sp ace", "bad?x", "bad[^a]*"],
    "anchored": ["{root}/src", "{root}/data/one/*", "*/data/one/deep", "/tmp/**/sub/keep"],
}


def make_tree(root: Path) -> None:
    for relative in TREE:
        path = os.path.join(os.fsencode(root), relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as stream:
            stream.write(b"x")


def restic_walk(root: bytes, excluder: Excluder) -> set[bytes]:
    """What restic saves below `root` (itself included): check each path before entering."""
    if excluder.excluded(os.fsdecode(root)):
        return set()
    kept, stack = {root}, [root]
    while stack:
        directory = stack.pop()
        for entry in os.scandir(directory):
            path = os.path.join(directory, entry.name)
            if excluder.excluded(os.fsdecode(path)):
                continue
            kept.add(path)
            if entry.is_dir(follow_symlinks=False):
                stack.append(path)
    return kept


def restic_saved(restic: str, repo: Path, root: Path, patterns: list[str], tag: str) -> set[bytes]:
    env = {**os.environ, "RESTIC_PASSWORD": "x", "RESTIC_REPOSITORY": str(repo)}
    excludes = [f"--exclude={p}" for p in patterns]
    subprocess.run(
        [restic, "backup", "-q", "--no-cache", "--tag", tag, *excludes, str(root)],
        env=env,
        check=True,
        capture_output=True,
    )
    listing = subprocess.run(
        [restic, "ls", "-q", "--no-cache", "--tag", tag, "latest"],
        env=env,
        check=True,
        capture_output=True,
    ).stdout
    under = os.fsencode(root)
    lines = listing.split(b"\n")
    return {line for line in lines if line == under or line.startswith(under + b"/")}


@pytest.mark.slow
def test_the_excluder_agrees_with_restic_on_every_path(restic, tmp_path):
    root = tmp_path / "tree"
    make_tree(root)
    repo = tmp_path / "repo"
    env = {**os.environ, "RESTIC_PASSWORD": "x"}
    subprocess.run([restic, "init", "-q", "-r", str(repo)], env=env, check=True)
    for tag, template in PATTERN_SETS.items():
        patterns = [p.format(root=root) for p in template]
        expected = restic_walk(os.fsencode(root), Excluder(patterns))
        saved = restic_saved(restic, repo, root, patterns, tag)
        assert saved == expected, (tag, sorted(saved ^ expected))
        assert len(expected) > 5, tag  # every set leaves something to compare


def test_restic_refuses_what_the_excluder_refuses(restic, tmp_path):
    env = {**os.environ, "RESTIC_PASSWORD": "x"}
    repo = tmp_path / "repo"
    subprocess.run([restic, "init", "-q", "-r", str(repo)], env=env, check=True)
    for bad in ["[", "foo/[a", "x\\"]:
        with pytest.raises(ValueError):
            Excluder([bad])
        done = subprocess.run(
            [restic, "-r", str(repo), "backup", "-q", f"--exclude={bad}", str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode != 0 and "invalid pattern" in done.stderr, done.stderr
