"""Matplotlib on a headless backend, and one way to save a figure (PNG and PDF)."""

from __future__ import annotations

from pathlib import Path

from .io import atomic_write


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, out: Path, name: str) -> list[Path]:
    """Write `fig` as out/name.png and out/name.pdf, then close it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for p in paths:  # replaced, never written in place (io.atomic_write)
        atomic_write(p, lambda f: fig.savefig(f, format=p.suffix[1:], dpi=130, bbox_inches="tight"))
    pyplot().close(fig)
    return paths
