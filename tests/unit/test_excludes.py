"""restic's --exclude semantics: Go's filepath.Match table, restic's filter table, and the
regex fast path checked against the byte-level port (tests/integration checks real restic)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from henbackup.excludes import (
    Excluder,
    _clean,
    _compile_part,
    _go_match,
    _valid_glob,
    pattern_problem,
)

# Go's path/filepath match_test.go (Unix): pattern, name, matches; None: ErrBadPattern.
GO_MATCH_TABLE = [
    ("abc", "abc", True),
    ("*", "abc", True),
    ("*c", "abc", True),
    ("a*", "a", True),
    ("a*", "abc", True),
    ("a*", "ab/c", False),
    ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True),
    ("ab[b-d]", "abc", True),
    ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False),
    ("ab[^b-d]", "abc", False),
    ("ab[^e-g]", "abc", True),
    ("a\\*b", "a*b", True),
    ("a\\*b", "ab", False),
    ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True),
    ("a???b", "a☺b", False),
    ("a[^a][^a][^a]b", "a☺b", False),
    ("[a-ζ]*", "α", True),  # noqa: RUF001 (Greek on purpose)
    ("*[a-ζ]", "A", False),
    ("a?b", "a/b", False),
    ("a*b", "a/b", False),
    ("[\\]a]", "]", True),
    ("[\\-]", "-", True),
    ("[x\\-]", "x", True),
    ("[x\\-]", "-", True),
    ("[x\\-]", "z", False),
    ("[\\-x]", "x", True),
    ("[\\-x]", "-", True),
    ("[\\-x]", "a", False),
    ("[]a]", "]", None),
    ("[-]", "-", None),
    ("[x-]", "x", None),
    ("[x-]", "-", None),
    ("[x-]", "z", None),
    ("[-x]", "x", None),
    ("[-x]", "-", None),
    ("[-x]", "a", None),
    ("\\", "a", None),
    ("[a-b-c]", "a", None),
    ("[", "a", None),
    ("[^", "a", None),
    ("[^bc", "a", None),
    ("a[", "a", None),
    ("a[", "ab", None),
    ("a[", "x", None),
    ("a/b[", "x", None),
    ("*x", "xxx", True),
]


@pytest.mark.parametrize(("pattern", "name", "expected"), GO_MATCH_TABLE)
def test_the_go_port_follows_gos_own_match_table(pattern, name, expected):
    raw = pattern.encode()
    assert _valid_glob(raw) == (expected is not None)
    if expected is not None:
        assert _go_match(raw, name.encode()) is expected


# restic's internal/filter/filter_test.go: pattern, path, excluded.
RESTIC_MATCH_TABLE = [
    ("*.go", "/foo/bar/test.go", True),
    ("*.c", "/foo/bar/test.go", False),
    ("*", "/foo/bar/test.go", True),
    ("foo*", "/foo/bar/test.go", True),
    ("bar*", "/foo/bar/test.go", True),
    ("/bar*", "/foo/bar/test.go", False),
    ("bar/*", "/foo/bar/test.go", True),
    ("baz/*", "/foo/bar/test.go", False),
    ("bar/test.go", "/foo/bar/test.go", True),
    ("bar/*.go", "/foo/bar/test.go", True),
    ("ba*/*.go", "/foo/bar/test.go", True),
    ("bb*/*.go", "/foo/bar/test.go", False),
    ("test.*", "/foo/bar/test.go", True),
    ("tesT.*", "/foo/bar/test.go", False),
    ("bar/*", "/foo/bar/baz", True),
    ("bar", "/foo/bar", True),
    ("/foo/bar", "/foo/bar", True),
    ("/foo/bar/", "/foo/bar", True),
    ("/foo/bar", "/foo/baz", False),
    ("/foo/bar", "/foo/baz/", False),
    ("/foo///bar", "/foo/bar", True),
    ("/foo/../bar", "/foo/bar", False),
    ("/foo/../bar", "/bar", True),
    ("/foo", "/foo/baz", True),
    ("/foo/", "/foo/baz", True),
    ("/foo/*", "/foo", False),
    ("/foo/*", "/foo/baz", True),
    ("bar", "/foo/bar/baz", True),
    ("bar", "/foo/bar/test.go", True),
    ("/foo/*test.*", "/foo/bar/test.go", False),
    ("/foo/*/test.*", "/foo/bar/test.go", True),
    ("/foo/*/bar/test.*", "/foo/bar/test.go", False),
    ("/*/*/bar/test.*", "/foo/bar/test.go", False),
    ("/*/*/bar/test.*", "/foo/bar/baz/test.go", False),
    ("/*/*/baz/test.*", "/foo/bar/baz/test.go", True),
    ("/*/foo/bar/test.*", "/foo/bar/baz/test.go", False),
    ("/foo/bar/test.*", "bar/baz/test.go", False),
    ("baz/test.*", "bar/baz/test.go", True),
    ("baz/tesT.*", "bar/baz/test.go", False),
    ("test.go", "bar/baz/test.go", True),
    ("*.go", "bar/baz/test.go", True),
    ("*.c", "bar/baz/test.go", False),
    ("sdk", "/foo/bar/sdk", True),
    ("sdk", "/foo/bar/sdk/test/sdk_foo.go", True),
    ("sdk/*/cpp/*/*vars*.html", "/usr/share/doc/libreoffice/sdk/docs/cpp/ref/a00517.html", False),
    ("foo/**/bar", "/home/user/foo/x/y/bar", True),
    ("foo/**/bar", "/home/user/foo/bar", True),
    ("foo/**/bar", "/home/user/foo/x/y/bar/z", True),
    ("foo/**/bar/*.go", "/home/user/foo/x/y/bar/main.go", True),
    ("/foo/**/bar/*.go", "/foo/bar/x/main.go", False),
    ("**/bar", "/home/user/foo/x/y/bar", True),
    ("/home/**", "/home/user/x", True),
    ("/home/**", "/var/x", False),
    ("user/**/important*", "/home/user/work/x/y/hidden/x", False),
    ("user/**/hidden*/**/c", "/home/user/work/x/y/hidden/z/a/b/c", True),
    ("/", "/anything/at/all", True),  # Clean("/") splits into "/" and "": a trailing **
    # A relative pattern never matches the root marker: 5 parts, 4 names.
    ("*/*/*/*/c", "/tmp/probe/t/c", False),
    ("*/*/*/c", "/tmp/probe/t/c", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), RESTIC_MATCH_TABLE)
def test_one_pattern_matches_as_restics_filter(pattern, path, expected):
    assert Excluder([pattern]).excluded(path) is expected


def test_negation_reincludes_and_the_last_matching_pattern_wins():
    excluder = Excluder(["*.log", "!important.log", "sub/*", "!sub/keep"])
    assert excluder.excluded("/x/a.log")
    assert not excluder.excluded("/x/important.log")
    assert excluder.excluded("/x/sub/other")
    assert not excluder.excluded("/x/sub/keep")
    # order matters: a negation before the positive pattern cannot undo it
    assert Excluder(["!important.log", "*.log"]).excluded("/x/important.log")


def test_a_negation_alone_excludes_nothing():
    assert not Excluder(["!foo"]).excluded("/a/foo")


def test_empty_patterns_are_ignored_as_restic_does():
    excluder = Excluder(["", ""])
    assert not excluder
    assert not excluder.excluded("/a/b")


@pytest.mark.parametrize(
    ("pattern", "cleaned"),
    [
        ("", "."),
        ("/", "/"),
        ("a//b/", "a/b"),
        ("./a", "a"),
        ("a/./b", "a/b"),
        ("a/../..", ".."),
        ("../a/..", ".."),
        ("/../a", "/a"),
        ("/a/b/../../..", "/"),
        ("//a", "/a"),
    ],
)
def test_patterns_are_cleaned_like_go_filepath_clean(pattern, cleaned):
    assert _clean(pattern) == cleaned


def test_malformed_patterns_are_refused_with_the_pattern_named():
    assert pattern_problem("*.tmp") is None
    problem = pattern_problem("foo/[a")
    assert problem is not None and '"foo/[a"' in problem
    with pytest.raises(ValueError, match="malformed"):
        Excluder(["ok", "bad\\"])


def test_name_only_patterns_decide_on_the_name_alone():
    excluder = Excluder([".git", "*.tmp", "cache/"])
    assert excluder.name_only
    assert excluder.excluded_name(".git") and excluder.excluded_name("x.tmp")
    assert excluder.excluded_name("cache") and not excluder.excluded_name("src")
    for patterns in (["a/b"], ["/abs"], ["!neg"], ["**"], ["x/**"]):
        assert not Excluder(patterns).name_only
        with pytest.raises(ValueError):
            Excluder(patterns).excluded_name("x")


def test_undecodable_names_are_matched_as_go_reads_them():
    weird = os.fsdecode(b"/data/a\xffb")
    assert Excluder(["a?b"]).excluded(weird)  # ? eats the invalid byte as one rune
    assert Excluder(["a[^x]b"]).excluded(weird)
    assert Excluder(["a[\ufffd]b"]).excluded(weird)  # Go reads it as U+FFFD
    assert not Excluder(["a[a-z]b"]).excluded(weird)
    assert Excluder(["a*b"]).excluded(weird)


def test_a_star_may_stop_inside_a_multibyte_rune_as_in_go():
    # "€" is 3 bytes: after `*` skips one, each `?` reads one invalid byte.
    assert Excluder(["*??"]).excluded("/x/€")
    assert not Excluder(["*???"]).excluded("/x/€")
    assert not Excluder(["*??"]).excluded("/x/é")  # 2 bytes: only one left after a skip


# Globs over a small alphabet that makes every syntax element likely.
_GLOB_CHARS = st.sampled_from(list("ab*?[]^-\\xé€"))
_NAME_CHARS = st.sampled_from(["a", "b", "x", "-", "]", "^", "*", "é", "€", "\udcff", "\\"])


@settings(max_examples=3000, deadline=None)
@given(glob=st.text(_GLOB_CHARS, max_size=8), name=st.text(_NAME_CHARS, max_size=6))
def test_the_regex_fast_path_agrees_with_the_go_port(glob, name):
    raw = glob.encode()
    if not _valid_glob(raw) or "/" in glob:
        return
    part = _compile_part(glob, glob)
    assert part.matches(name) == _go_match(raw, os.fsencode(name))
    if name.isascii() and part.regex is not None:  # the regex alone, where it is used
        assert (part.regex.fullmatch(name) is not None) == _go_match(raw, name.encode())


_NAME_PATTERNS = st.lists(
    st.sampled_from([".git", "*.tmp", "a?", "[é-ü]*", "*??", "x[^a]", "\\*", "cache/", "é"]),
    min_size=1,
    max_size=4,
)


@settings(max_examples=1000, deadline=None)
@given(patterns=_NAME_PATTERNS, name=st.text(_NAME_CHARS, min_size=1, max_size=5))
def test_the_name_shortcut_agrees_with_the_full_path_decision(patterns, name):
    excluder = Excluder(patterns)
    assert excluder.name_only
    if excluder.excluded("/data"):
        return
    assert excluder.excluded_name(name) == excluder.excluded("/data/" + name)
