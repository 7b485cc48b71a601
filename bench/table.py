"""A tiny aligned-table printer shared by every benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def cell(value: object) -> str:
    """Floats with 3 decimals, everything else as str."""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _numeric(text: str) -> bool:
    try:
        float(text.rstrip("sx%"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Table:
    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[object, ...], ...]
    notes: tuple[str, ...] = ()

    def render(self) -> str:
        """The title, a header line, a rule, the rows (numbers right-aligned), the notes."""
        body = [[cell(value) for value in row] for row in self.rows]
        widths = [
            max([len(header)] + [len(row[i]) for row in body])
            for i, header in enumerate(self.headers)
        ]
        right = [bool(body) and all(_numeric(row[i]) for row in body) for i in range(len(widths))]

        def line(cells: Sequence[str]) -> str:
            parts = (
                c.rjust(w) if r else c.ljust(w)
                for c, w, r in zip(cells, widths, right, strict=True)
            )
            return "  ".join(parts).rstrip()

        out = [self.title, line(self.headers), "  ".join("-" * w for w in widths)]
        out += [line(row) for row in body]
        out += list(self.notes)
        return "\n".join(out)
