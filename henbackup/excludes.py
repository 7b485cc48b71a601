"""restic's `--exclude` matching, exactly: the watcher must skip what restic will skip.

A port of restic's `internal/filter` (identical in 0.14 and 0.18) over Go's
`path/filepath.Match`:

- A path is split into components; an absolute one starts with the component "/".
- A pattern is `filepath.Clean`ed and split the same way. `**` as a whole component matches
  any number of components (including none); `*`, `?` and `[...]` never cross a "/".
- A pattern starting with "/" matches from the root on; any other pattern matches a run of
  consecutive components anywhere below the root: "foo" matches /a/foo and /a/foo/b,
  "a/b" matches /x/a/b/c. Matching a directory thus matches everything below it.
- "!pattern" re-includes what an earlier pattern excluded; the last pattern that matches
  wins. Empty patterns are ignored.
- restic checks each path it walks, and never descends into an excluded directory (so
  "!" cannot bring back a path below an excluded directory): walk the same way.

Go compares bytes where Python compares characters. Both agree on ASCII names; `?` and
`[...]` read one UTF-8 rune (or one invalid byte), so for a non-ASCII name such a pattern
part goes through `_go_match`, a byte-level port of filepath.Match.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

_RUNE_ERROR = 0xFFFD
_SLASH, _STAR, _BACKSLASH, _LBRACKET, _RBRACKET = (ord(c) for c in "/*\\[]")
_CARET, _DASH, _QUESTION = ord("^"), ord("-"), ord("?")


@dataclass(frozen=True)
class _Part:
    """One pattern component. `text == ""` is restic's marker for `**`."""

    text: str
    regex: re.Pattern[str] | None  # None: a literal, compared with ==
    raw: bytes  # the UTF-8 bytes, for _go_match
    reads_runes: bool  # has `?` or `[`: a non-ASCII name needs _go_match

    def matches(self, name: str) -> bool:
        if self.regex is None:
            return self.text == name
        if (self.reads_runes and not name.isascii()) or name == "/":
            return _go_match(self.raw, os.fsencode(name))
        return self.regex.fullmatch(name) is not None


_ANY = _Part("*", re.compile(".*", re.DOTALL), b"*", False)  # what `**` expands into


@dataclass(frozen=True)
class _Pattern:
    original: str
    parts: tuple[_Part, ...]
    negated: bool

    @property
    def name_only(self) -> bool:
        """Whether it matches a path exactly when it matches one of the path's names."""
        return not self.negated and len(self.parts) == 1 and self.parts[0].text not in ("", "/")


class Excluder:
    """restic's --exclude decision for a list of patterns (see the module docstring)."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        """Raises ValueError naming the first malformed pattern (restic 0.18 refuses it too)."""
        self.patterns = tuple(patterns)
        self._compiled = tuple(_parse(p) for p in self.patterns if p != "")
        self._negations = any(p.negated for p in self._compiled)
        # True when no pattern looks past a single name: then a name in a directory that is
        # not excluded is excluded exactly when `excluded_name(name)` says so.
        self.name_only = all(p.name_only for p in self._compiled)
        firsts = [p.parts[0] for p in self._compiled]
        self._names = re.compile(  # every name-only pattern in one regex, for speed
            "|".join(re.escape(f.text) if f.regex is None else f.regex.pattern for f in firsts)
            or "(?!)",
            re.DOTALL,
        )
        self._names_read_runes = any(f.reads_runes for f in firsts)

    def __bool__(self) -> bool:
        return bool(self._compiled)

    def excluded(self, path: str) -> bool:
        """Whether restic excludes `path` (absolute, as restic sees it) by itself.

        A path below an excluded directory is excluded too, but this answers for the path
        alone, as restic's walk asks: check a directory before descending into it.
        """
        if not path or not self._compiled:
            return False
        components = path.split("/")
        if components[0] == "":
            components[0] = "/"
        matched = False
        for pattern in self._compiled:
            if pattern.negated:
                matched = matched and not _match(pattern.parts, components)
            elif not matched:
                matched = _match(pattern.parts, components)
                if matched and not self._negations:
                    return True
        return matched

    def excluded_name(self, name: str) -> bool:
        """For a name-only Excluder: whether `name`, inside a directory that is not itself
        excluded, is excluded. Raises ValueError when the Excluder is not name-only."""
        if not self.name_only:
            raise ValueError("excluded_name needs name-only patterns: use excluded(path)")
        if self._names_read_runes and not name.isascii():
            return any(pattern.parts[0].matches(name) for pattern in self._compiled)
        return self._names.fullmatch(name) is not None


def pattern_problem(pattern: str) -> str | None:
    """Why restic would refuse `pattern`, or None when it is valid."""
    try:
        _parse(pattern)
    except ValueError as error:
        return str(error)
    return None


def _match(parts: tuple[_Part, ...], components: list[str]) -> bool:
    """restic's filter.match: `parts` match a run of consecutive `components`."""
    star = next((i for i, part in enumerate(parts) if part.text == ""), -1)
    if star >= 0:  # `**`: try it as 0, 1, 2... single-name wildcards, as restic does
        before, after = parts[:star], parts[star + 1 :]
        return any(
            _match(before + (_ANY,) * count + after, components)
            for count in range(len(components) - len(parts) + 2)
        )
    if not parts or len(parts) > len(components):
        return not parts and not components
    first, last = 0, len(components) - len(parts)
    if parts[0].text == "/":
        last = 0  # anchored at the root
    elif components[0] == "/":
        first = 1  # a relative pattern never matches the root itself
    return any(
        all(part.matches(components[offset + i]) for i, part in enumerate(parts))
        for offset in range(last, first - 1, -1)
    )


def _parse(original: str) -> _Pattern:
    negated = original.startswith("!")
    text = _clean(original[1:] if negated else original)
    names = text.split("/")
    if names[0] == "":
        names[0] = "/"
    parts = tuple(_compile_part("" if name == "**" else name, original) for name in names)
    return _Pattern(original, parts, negated)


def _clean(path: str) -> str:
    """Go's filepath.Clean: no empty, "." or resolvable ".." components; "" becomes "."."""
    rooted = path.startswith("/")
    names: list[str] = []
    for name in path.split("/"):
        if name in ("", "."):
            continue
        if name != "..":
            names.append(name)
        elif names and names[-1] != "..":
            names.pop()
        elif not rooted:
            names.append("..")
    joined = "/".join(names)
    return "/" + joined if rooted else joined or "."


def _compile_part(text: str, original: str) -> _Part:
    """One component as a _Part; raises ValueError where Go's filepath.Match would."""
    raw = os.fsencode(text)
    if not any(c in text for c in "\\[]*?"):
        return _Part(text, None, raw, False)
    if not _valid_glob(raw):
        raise ValueError(f'exclude pattern "{original}" is malformed (see restic\'s --exclude)')
    regex = re.compile(_glob_regex(text), re.DOTALL)
    return _Part(text, regex, raw, "?" in text or "[" in text)


def _glob_regex(glob: str) -> str:
    """The regular expression of a valid Go glob over one name (no "/" in it)."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        char = glob[i]
        i += 1
        if char == "*":
            out.append(".*")
            while i < len(glob) and glob[i] == "*":
                i += 1
        elif char == "?":
            out.append(".")
        elif char == "[":
            regex, i = _class_regex(glob, i)
            out.append(regex)
        else:
            if char == "\\":
                char, i = glob[i], i + 1
            out.append(re.escape(char))
    return "".join(out)


def _class_regex(glob: str, i: int) -> tuple[str, int]:
    """The regex of the class whose body starts at `i` (after "["), and the index after "]"."""
    negated = glob[i] == "^"
    i += negated
    ranges: list[tuple[int, int]] = []
    while not (glob[i] == "]" and ranges):
        low, i = _class_char(glob, i)
        high = low
        if glob[i] == "-":
            high, i = _class_char(glob, i + 1)
        ranges.append((low, high))
    usable = [(low, high) for low, high in ranges if low <= high]  # Go accepts z-a: empty
    if any(low <= _RUNE_ERROR <= high for low, high in usable):
        usable.append((0xDC80, 0xDCFF))  # an undecodable byte: Go reads it as U+FFFD
    if not usable:
        return ("." if negated else "(?!)"), i + 1
    body = "".join(_range_regex(low, high) for low, high in usable)
    return f"[{'^' if negated else ''}{body}]", i + 1


def _class_char(glob: str, i: int) -> tuple[int, int]:
    """A possibly escaped character of a class: (its code point, the next index)."""
    if glob[i] == "\\":
        i += 1
    return ord(glob[i]), i + 1


def _range_regex(low: int, high: int) -> str:
    first = re.escape(chr(low))
    return first if low == high else f"{first}-{re.escape(chr(high))}"


def _decode_rune(data: bytes, i: int) -> tuple[int, int]:
    """Go's utf8.DecodeRune at data[i]: (rune, size), (U+FFFD, 1) when invalid."""
    lead = data[i]
    if lead < 0x80:
        return lead, 1
    size = 2 if 0xC2 <= lead <= 0xDF else 3 if 0xE0 <= lead <= 0xEF else 4 if lead <= 0xF4 else 0
    if size and lead >= 0xC2:
        try:
            return ord(data[i : i + size].decode()), size
        except UnicodeDecodeError:
            pass
    return _RUNE_ERROR, 1


def _scan_chunk(glob: bytes) -> tuple[bool, bytes, bytes]:
    """Go's scanChunk: (leading stars?, the chunk up to the next star, the rest)."""
    stripped = glob.lstrip(b"*")
    star, glob = len(stripped) != len(glob), stripped
    in_range = False
    i = 0
    while i < len(glob):
        byte = glob[i]
        if byte == _BACKSLASH and i + 1 < len(glob):
            i += 1
        elif byte == _LBRACKET:
            in_range = True
        elif byte == _RBRACKET:
            in_range = False
        elif byte == _STAR and not in_range:
            break
        i += 1
    return star, glob[:i], glob[i:]


def _class_escape(chunk: bytes, i: int) -> tuple[int, int] | None:
    """Go's getEsc: (rune, next index), or None where Go returns ErrBadPattern."""
    if i >= len(chunk) or chunk[i] in (_DASH, _RBRACKET):
        return None
    if chunk[i] == _BACKSLASH:
        i += 1
        if i >= len(chunk):
            return None
    rune, size = _decode_rune(chunk, i)
    if (rune == _RUNE_ERROR and size == 1) or i + size >= len(chunk):
        return None
    return rune, i + size


def _escape(chunk: bytes, i: int) -> tuple[int, int]:
    """_class_escape of a chunk already known valid."""
    escaped = _class_escape(chunk, i)
    if escaped is None:
        raise ValueError("malformed glob")  # _compile_part validated it: never happens
    return escaped


def _match_chunk(chunk: bytes, name: bytes) -> bytes | None:
    """Go's matchChunk for a valid chunk: the rest of `name` after it, or None."""
    failed = False
    i = 0
    while i < len(chunk):
        failed = failed or not name
        byte = chunk[i]
        if byte == _LBRACKET:
            rune = -1
            if not failed:
                rune, size = _decode_rune(name, 0)
                name = name[size:]
            i += 1
            negated = chunk[i] == _CARET
            i += negated
            matched, ranges = False, 0
            while not (chunk[i] == _RBRACKET and ranges):
                low, i = _escape(chunk, i)
                high = low
                if chunk[i] == _DASH:
                    high, i = _escape(chunk, i + 1)
                matched = matched or low <= rune <= high
                ranges += 1
            i += 1
            failed = failed or matched == negated
        elif byte == _QUESTION:
            if not failed:
                failed = name[0] == _SLASH
                name = name[_decode_rune(name, 0)[1] :]
            i += 1
        else:
            if byte == _BACKSLASH:
                i += 1
                byte = chunk[i]
            if not failed:
                failed = name[0] != byte
                name = name[1:]
            i += 1
    return None if failed else name


def _valid_chunk(chunk: bytes) -> bool:
    """Whether Go's matchChunk parses `chunk` without ErrBadPattern."""
    i = 0
    while i < len(chunk):
        byte = chunk[i]
        if byte == _BACKSLASH:
            if i + 1 >= len(chunk):
                return False
            i += 2
        elif byte == _LBRACKET:
            i += 1
            if i < len(chunk) and chunk[i] == _CARET:
                i += 1
            ranges = 0
            while not (i < len(chunk) and chunk[i] == _RBRACKET and ranges):
                escaped = _class_escape(chunk, i)
                if escaped is None:
                    return False
                i = escaped[1]
                if chunk[i] == _DASH:
                    escaped = _class_escape(chunk, i + 1)
                    if escaped is None:
                        return False
                    i = escaped[1]
                ranges += 1
            i += 1
        else:
            i += 1
    return True


def _valid_glob(glob: bytes) -> bool:
    """Whether Go's filepath.Match accepts `glob` (it checks every chunk)."""
    while glob:
        _, chunk, glob = _scan_chunk(glob)
        if not _valid_chunk(chunk):
            return False
    return True


def _go_match(glob: bytes, name: bytes) -> bool:
    """Go's filepath.Match (Unix) for a valid `glob`, on bytes."""
    while glob:
        star, chunk, glob = _scan_chunk(glob)
        if star and not chunk:
            return b"/" not in name
        rest = _match_chunk(chunk, name)
        if rest is not None and (not rest or glob):
            name = rest
            continue
        if not star:
            return False
        for i in range(len(name)):
            if name[i] == _SLASH:
                return False
            rest = _match_chunk(chunk, name[i + 1 :])
            if rest is not None and (glob or not rest):
                name = rest
                break
        else:
            return False
    return not name
