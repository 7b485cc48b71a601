"""Numbers as people read them, shared by STATUS= and henbackupctl."""

from __future__ import annotations


def relative(seconds: float) -> str:
    """A delay from now: `now`, `in 40 s`, `in 12 min`, `in 3 h`, `in 2 d`."""
    if seconds < 1:
        return "now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"in {seconds // size:.0f} {unit}"
    return f"in {seconds:.0f} s"
