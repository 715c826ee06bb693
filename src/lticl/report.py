"""Tables of result rows (lists of dicts) for people: the terminal and Markdown."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from rich import box
from rich.markup import escape
from rich.table import Table

from .io import write_text


def number(v) -> str:
    """A cell's text: integers as they are, floats to 4 significant digits, None as –."""
    if v is None:
        return "–"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}" if np.isfinite(v) else str(v)
    return str(v)


def rich_table(rows: list[dict], title: str, columns: list[str] | None = None) -> Table:
    columns = columns or list(rows[0])
    table = Table(title=escape(title), box=box.SIMPLE_HEAD, pad_edge=False)
    for i, c in enumerate(columns):
        table.add_column(escape(c), justify="left" if i == 0 else "right", no_wrap=i == 0,
                         style="dim" if c.endswith("paper") else None)
    for r in rows:
        table.add_row(*(escape(number(r.get(c))) for c in columns))
    return table


def markdown(rows: list[dict], title: str, columns: list[str] | None = None) -> str:
    columns = columns or list(rows[0])
    lines = [title, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(number(r.get(c)) for c in columns) + " |" for r in rows]) + "\n"


def write_csv(path: Path, rows: list[dict]) -> Path:
    """Rows as CSV, the first row's keys as the header, numbers at full precision."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, text.getvalue())
