"""Aligned text tables, the one formatter behind every table nntrain prints or writes (plain or markdown).

Columns of numbers are right-aligned so that digits line up whatever their count (row 9 above row 10);
other columns are left-aligned. This module imports nothing from nntrain, so the engine can use it too.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

PLACEHOLDERS = frozenset({"", "-", "—"})  # cells that stand for "no value": they do not decide a column's side


def _text(cell: Any) -> str:
    return cell if isinstance(cell, str) else str(cell)


def is_number(cell: Any) -> bool:
    """A number, or text that reads as one: `12`, `-0.25`, `3.2e-05`, `1,234`, `97.5%`, `10.` (a rank)."""
    if isinstance(cell, bool):
        return False
    if isinstance(cell, numbers.Number):
        return True
    text = _text(cell).strip().removesuffix("%").replace(",", "")
    try:
        float(text)
    except ValueError:
        return False
    return "_" not in text


def column_alignment(rows: Sequence[Sequence[Any]]) -> str:
    """One letter per column, 'r' where every cell that is not a placeholder is a number, else 'l'."""
    width = len(rows[0]) if rows else 0
    sides = []
    for j in range(width):
        cells = [r[j] for r in rows if _text(r[j]).strip() not in PLACEHOLDERS]
        sides.append("r" if cells and all(is_number(c) for c in cells) else "l")
    return "".join(sides)


def format_table(header: Sequence[Any] | None, rows: Sequence[Sequence[Any]], align: str | None = None, *,
                 markdown: bool = False, rule: bool = False, indent: str = "") -> str:
    """The rows (and the header, unless None) as aligned text, lines joined by newlines, no newline at the end.

    Cells are strings or numbers (written with str(): format floats before). `align` has one letter per
    column, 'l' or 'r'; None right-aligns the columns of numbers (see `column_alignment`). Plain tables
    separate columns by two spaces, carry no trailing spaces, and put a line of dashes under the header
    when `rule`; every line starts with `indent`. `markdown` writes a pipe table (header required, '|'
    in cells escaped, right-aligned columns marked `---:`)."""
    body = [[_text(c) for c in r] for r in rows]
    head = None if header is None else [_text(c) for c in header]
    ncols = len(head) if head is not None else (len(body[0]) if body else 0)
    for i, r in enumerate(body):
        if len(r) != ncols:
            raise ValueError(f"row {i} has {len(r)} cells, expected {ncols}")
    sides = align if align is not None else column_alignment(body) if body else "l" * ncols
    if len(sides) != ncols or set(sides) - {"l", "r"}:
        raise ValueError(f"align must be {ncols} letters l or r, got {align!r}")
    if markdown:
        if head is None:
            raise ValueError("a markdown table needs a header")
        head = [c.replace("|", "\\|") for c in head]
        body = [[c.replace("|", "\\|") for c in r] for r in body]
    lines_of = ([head] if head is not None else []) + body
    widths = [max(len(r[j]) for r in lines_of) for j in range(ncols)]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if s == "r" else c.ljust(w) for c, w, s in zip(cells, widths, sides)]
        return "| " + " | ".join(padded) + " |" if markdown else "  ".join(padded).rstrip()

    out = [line(r) for r in lines_of]
    if markdown:
        out.insert(1, "|" + "|".join("-" * (w + 1) + (":" if s == "r" else "-") for w, s in zip(widths, sides)) + "|")
    elif rule and head is not None:
        out.insert(1, "-" * max(len(s) for s in out))
    return "\n".join((indent + s).rstrip() for s in out)


def rule_for(table: str, char: str = "-") -> str:
    """A line of `char` as wide as the widest line of `table` (to frame a table above and below)."""
    return char * max((len(s) for s in table.splitlines()), default=0)
