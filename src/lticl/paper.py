"""The paper's Table 1 (adjusted evaluation loss, d = 10, n = 20), read from the
one data file that holds it: data/paper_table1.csv."""

from __future__ import annotations

import csv
from functools import cache
from importlib.resources import files

PAPER_N, PAPER_D = 20, 10


@cache
def _table() -> tuple[tuple[str, ...], dict[tuple[str, int | None], dict[str, float]]]:
    with files("lticl").joinpath("data/paper_table1.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    settings = tuple(rows[0][2:])
    table = {
        (model, int(layers) if layers else None): dict(zip(settings, map(float, values)))
        for model, layers, *values in rows[1:]
    }
    return settings, table


def paper_settings() -> tuple[str, ...]:
    """The ten noise settings of Table 1, as noise spec strings, in the paper's order."""
    return _table()[0]


def paper_value(model: str, setting: str, layers: int | None = None) -> float | None:
    """The paper's number for one cell, or None where the paper has none."""
    return _table()[1].get((model, layers), {}).get(setting)
