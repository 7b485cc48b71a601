"""Numbers as people read them, shared by STATUS= and henbackupctl."""

from __future__ import annotations

_UNITS = (("d", 86400), ("h", 3600), ("min", 60))


def _span(seconds: float) -> str:
    """`40 s`, `12 min`, `3 h`, `2 d`: the largest whole unit."""
    for unit, size in _UNITS:
        if seconds >= size:
            return f"{seconds // size:.0f} {unit}"
    return f"{seconds:.0f} s"


def relative(seconds: float) -> str:
    """A delay from now: `now`, `in 40 s`, `in 12 min`, `in 3 h`, `in 2 d`."""
    return "now" if seconds < 1 else f"in {_span(seconds)}"


def ago(seconds: float) -> str:
    """A moment in the past, `seconds` before now: `just now`, `40 s ago`, `2 h ago`."""
    return "just now" if seconds < 1 else f"{_span(seconds)} ago"


def duration(seconds: float) -> str:
    """How long something took: `0.4 s`, `12 s`, `3 min 20 s`, `2 h 5 min`."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _iec(count: float) -> tuple[float, str]:
    """`count` bytes scaled to the largest IEC unit below it (up to PiB)."""
    unit = "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024:
            break
        count, unit = count / 1024, bigger
    return count, unit


def size(count: float) -> str:
    """Bytes measured, in IEC units: `512 B`, `1.50 KiB`, `12.0 MiB`, `3.21 GiB`."""
    value, unit = _iec(count)
    if unit == "B":
        return f"{value:.0f} B"
    return f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}"


def size_setting(count: int) -> str:
    """Bytes configured, as short as they were likely written: `50 KiB`, `1.5 MiB`."""
    value, unit = _iec(count)
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"
