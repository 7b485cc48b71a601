"""Pure parsers for the config's small languages: durations, rates, sizes, priorities...

Each raises ValueError with a short reason that never repeats the value: the value may be
a secret (expanded from the environment), so the caller decides whether to show it. Every
reason reads well after "VALUE is ", e.g. '"5x" is not a duration: use ...'.
"""

from __future__ import annotations

import re

from henbackup.config.model import PRIORITY_VALUES, Priority

_DURATION_UNITS: tuple[tuple[str, float], ...] = (
    ("w", 7 * 86400.0),
    ("d", 86400.0),
    ("h", 3600.0),
    ("m", 60.0),
    ("s", 1.0),
    ("ms", 0.001),
)
# One optional group per unit, largest first; `m(?!s)` keeps "500ms" from reading as minutes.
# The patterns here are compiled at their first use (re's cache), not at every start.
_DURATION_RE = "".join(
    rf"(?:(?P<{unit}>[0-9]{{1,15}}){unit}{'(?!s)' if unit == 'm' else ''})?"
    for unit, _ in _DURATION_UNITS
)
LONGEST_DURATION = 5200 * 7 * 86400
_DURATION_HINT = 'use a number and a unit (ms, s, m, h, d, w), largest first, e.g. "1h30m"'

_BINARY_FACTORS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
# Bounded digits: a huge number is a typo, and must not overflow float or int conversion.
_NUMBER = r"([0-9]{1,15}(?:\.[0-9]{1,9})?|\.[0-9]{1,9})"
_QUANTITY_RE = "(?i)" + _NUMBER + "([KMGT]?)"
_PERCENT_RE = _NUMBER + "%"

_SPECIAL_PRIORITIES = {
    "immediate": Priority(Priority.IMMEDIATE_BAND),
    "next": Priority(Priority.NEXT_BAND),
    "on-idle": Priority(Priority.ON_IDLE_BAND),
}
_PRIORITY_HINT = "use immediate, next, superior, normal, inferior, on-idle or an integer"
_INT_RE = r"[+-]?[0-9]{1,18}"
# Ordinary priorities stay well inside the integers HENBACKUP_PRIORITY gives the bands
# (on-idle -2**31, next 2**31-2, immediate 2**31-1), so an ordinary one is never taken for
# one of them (preemption, the queue's view); and a bigger one is a typo.
PRIORITY_LIMIT = 1_000_000

_LISTEN_HINT = 'use HOST:PORT, e.g. "127.0.0.1:9811" or "[::1]:9811"'
_HOST_RE = r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?"
_IPV6_RE = r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(%[A-Za-z0-9_.-]+)?"


def parse_duration(s: object) -> float:
    """Seconds in a duration string such as "500ms", "5m" or "1h30m"; raises ValueError.

    Units are ms, s, m, h, d (24 h) and w (7 d), each at most once, largest first.
    """
    match = re.fullmatch(_DURATION_RE, s) if isinstance(s, str) and s else None
    if match is None:
        raise ValueError(f"not a duration: {_DURATION_HINT}")
    seconds = sum(int(match[unit]) * factor for unit, factor in _DURATION_UNITS if match[unit])
    if seconds > LONGEST_DURATION:  # a typo, and more than the kernel's timers can hold
        raise ValueError("too long: use at most 5200w (100 years)")
    return seconds


def format_duration(seconds: float) -> str:
    """A duration in the configuration's own notation: 90 -> "1m30s", 0.5 -> "500ms"."""
    units = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    milliseconds = round(seconds * 1000)
    parts = []
    for unit, size in units:
        count, milliseconds = divmod(milliseconds, size * 1000)
        if count:
            parts.append(f"{count}{unit}")
    if milliseconds or not parts:
        parts.append(f"{milliseconds}ms")
    return "".join(parts)


def _parse_quantity(v: object, suffixes: str, what: str) -> int:
    """Bytes in an integer or a string with a binary suffix among `suffixes`."""
    hint = f'use a number of bytes, or a string such as "50K" ({", ".join(suffixes)}: x1024)'
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ValueError(f"not a {what}: {hint}")
    if isinstance(v, int):
        number = v
    else:
        match = re.fullmatch(_QUANTITY_RE, v)
        if match is None or match[2].upper() not in ("", *suffixes):
            raise ValueError(f"not a {what}: {hint}")
        number = int(float(match[1]) * _BINARY_FACTORS[match[2].upper()])
    if number <= 0:
        raise ValueError(f"too small: a {what} must be at least 1 byte")
    return number


def parse_rate(v: object) -> int:
    """Bytes per second in 51200 or "50K" (K, M, G are binary: 1K = 1024); raises ValueError."""
    return _parse_quantity(v, "KMG", "rate")


def parse_size(v: object) -> int:
    """Bytes in 1048576 or "1M" (K, M, G, T are binary); raises ValueError."""
    return _parse_quantity(v, "KMGT", "size")


def parse_priority(v: object) -> Priority:
    """The Priority for a name (immediate, next, superior, normal, inferior, on-idle) or an
    integer, also written as a string such as "-3"; raises ValueError."""
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ValueError(f"not a priority: {_PRIORITY_HINT}")
    if isinstance(v, int):
        return _ordinary(v)
    name = v.strip().lower()
    if name in _SPECIAL_PRIORITIES:
        return _SPECIAL_PRIORITIES[name]
    if name in PRIORITY_VALUES:
        return Priority.ordinary(PRIORITY_VALUES[name])
    if re.fullmatch(_INT_RE, name):
        return _ordinary(int(name))
    raise ValueError(f"not a priority: {_PRIORITY_HINT}")


def _ordinary(value: int) -> Priority:
    if abs(value) > PRIORITY_LIMIT:
        raise ValueError(f"out of range: use an integer from -{PRIORITY_LIMIT} to {PRIORITY_LIMIT}")
    return Priority.ordinary(value)


def parse_percent(s: object) -> float:
    """The fraction in a percentage: "50%" -> 0.5, "250%" -> 2.5; raises ValueError unless
    it is more than 0."""
    match = re.fullmatch(_PERCENT_RE, s) if isinstance(s, str) else None
    if match is None:
        raise ValueError('not a percentage: use a string such as "50%"')
    fraction = float(match[1]) / 100
    if fraction <= 0:
        raise ValueError("too small: a percentage must be more than 0%")
    return fraction


_SUBSET_FRACTION_RE = r"([0-9]{1,18})/([0-9]{1,18})"
_SUBSET_SIZE_RE = r"(?i)[0-9]{1,18}[KMGT]?"
SUBSET_HINT = 'use a percentage ("5%"), a fraction ("1/10") or a size ("500M")'


def parse_subset(s: object) -> str:
    """restic's --read-data-subset: "5%", "1/10" or a size such as "500M"; returned as
    given, or ValueError saying what is wrong."""
    if not isinstance(s, str):
        raise ValueError(f"not a data subset: {SUBSET_HINT}")
    if s.endswith("%"):
        if parse_percent(s) > 1:
            raise ValueError("too large: use at most 100%")
    elif match := re.fullmatch(_SUBSET_FRACTION_RE, s):
        if not 1 <= int(match[1]) <= int(match[2]):
            raise ValueError(f"not a fraction n/m with 1 <= n <= m: {SUBSET_HINT}")
    elif not re.fullmatch(_SUBSET_SIZE_RE, s) or int(s.rstrip("KMGTkmgt")) == 0:
        raise ValueError(f"not a data subset: {SUBSET_HINT}")
    return s


def parse_listen(s: object) -> tuple[str, int]:
    """(host, port) in "127.0.0.1:9811", "localhost:9811" or "[::1]:9811" (brackets
    removed from the host); raises ValueError."""
    host, sep, port = s.rpartition(":") if isinstance(s, str) else ("", "", "")
    if not sep or not host or not (port.isascii() and port.isdigit() and len(port) <= 5):
        raise ValueError(f"not an address: {_LISTEN_HINT}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not re.fullmatch(_IPV6_RE, host):
            raise ValueError(
                f"not an address: put an IPv6 address between the brackets, {_LISTEN_HINT}"
            )
    elif ":" in host:
        raise ValueError(f"not an address: an IPv6 address needs brackets, {_LISTEN_HINT}")
    elif not re.fullmatch(_HOST_RE, host):
        raise ValueError(f"not an address: the host is not a name or an IP address, {_LISTEN_HINT}")
    if not 1 <= int(port) <= 65535:
        raise ValueError("not an address: the port must be between 1 and 65535")
    return host, int(port)
