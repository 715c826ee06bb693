"""Learning curves: each run's per-step training loss, learning rate, skipped steps
and rollbacks, as a table (DIR/curve.csv) and as a figure (`lticl curves`).

The run's own record is the loss history in DIR/checkpoint.npz (nan where a step
was skipped). The rest follows from it and the config, as the engine decides
(`engine._run_steps`): `patience` skipped steps in a row roll a seed back to its
last good state, with its learning rate scaled by `lr_backoff`; the learning rate
of a step is the schedule at the count of updates taken so far, times that scale.
A step whose loss passed the check but whose update came out non-finite is counted
here as one that failed the check: the two differ only in which earlier update a
later rollback returns to.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .engine import schedule
from .io import atomic_write
from .rundir import CHECKPOINT, CONFIG, checkpoint_losses

CURVE = "curve.csv"
COLUMNS = ("seed", "step", "loss", "lr", "skipped", "rollbacks")


@dataclass(frozen=True)
class Curve:
    """(K, steps) per seed of a run: seeds first_seed … first_seed + K − 1."""

    seeds: np.ndarray  # (K,) seed indices
    loss: np.ndarray  # training loss, nan where the step was skipped
    lr: np.ndarray  # learning rate the step's update used (or would have)
    skipped: np.ndarray  # bool
    rollbacks: np.ndarray  # rollbacks up to and including the step

    @property
    def steps(self) -> np.ndarray:
        return np.arange(1, self.loss.shape[1] + 1)


def curve(config: TrainConfig, losses: np.ndarray) -> Curve:
    """A run's curve from its loss history (K, steps) (see the module's note)."""
    losses = np.asarray(losses, np.float64)
    counts, scales = np.zeros(losses.shape, np.int64), np.ones(losses.shape)
    rollbacks = np.zeros(losses.shape, np.int64)
    for k, row in enumerate(losses):
        count = good = streak = backs = 0
        for t, loss in enumerate(row):
            counts[k, t], scales[k, t] = count, config.lr_backoff**backs
            if np.isfinite(loss):
                good, count, streak = count, count + 1, 0
            else:
                streak += 1
                if streak >= config.patience:
                    count, streak, backs = good, 0, backs + 1
            rollbacks[k, t] = backs
    lr = np.asarray(schedule(config)(counts), np.float64) * scales
    seeds = np.arange(config.first_seed, config.first_seed + losses.shape[0])
    return Curve(seeds, losses, lr, ~np.isfinite(losses), rollbacks)


def write_curve(path: Path, c: Curve) -> None:
    """The curve as CSV, one row per (seed, step), written atomically."""
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(COLUMNS)
    for k, seed in enumerate(c.seeds):
        for t in range(c.loss.shape[1]):
            w.writerow([seed, t + 1, repr(float(c.loss[k, t])), repr(float(c.lr[k, t])), int(c.skipped[k, t]),
                        int(c.rollbacks[k, t])])
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def read_curve(path: Path) -> Curve:
    """A curve written by `write_curve`."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or tuple(rows[0]) != COLUMNS:
        raise ValueError(f"{path} is not a learning curve (expected the columns {', '.join(COLUMNS)})")
    seeds = np.array(sorted({int(r["seed"]) for r in rows}))
    grid = lambda name, kind: np.array([[kind(r[name]) for r in rows if int(r["seed"]) == s] for s in seeds])
    return Curve(seeds, grid("loss", float), grid("lr", float), grid("skipped", int).astype(bool),
                 grid("rollbacks", int))


def run_curve(directory: Path) -> Curve:
    """The curve of the run in `directory`, finished or not, from its config.json and
    checkpoint.npz."""
    directory = Path(directory)
    if not (directory / CONFIG).exists() or not (directory / CHECKPOINT).exists():
        raise ValueError(f"{directory} holds no run with a checkpoint (config.json and checkpoint.npz)")
    try:
        config = TrainConfig(**json.loads((directory / CONFIG).read_text())["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{directory / CONFIG}: not a run's config ({e})") from None
    return curve(config, checkpoint_losses(directory / CHECKPOINT, config))


def curves_figure(runs: list[tuple[str, Curve]], title: str):
    """Training loss (log) against step, one line per seed of each (label, curve);
    an × in the seed's colour marks each rollback, at its last loss before it."""
    from .plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    cmap = plt.get_cmap("viridis" if len(runs) > 10 else "tab10")
    lines = sum(len(c.seeds) for _, c in runs)
    i = 0
    for label, c in runs:
        for k, seed in enumerate(c.seeds):
            color = cmap(i / max(1, lines - 1)) if len(runs) > 10 else cmap(i % 10)
            ax.plot(c.steps, c.loss[k], lw=0.7, alpha=0.85, color=color,
                    label=label if list(c.seeds) == [0] else f"{label}, seed {seed}")
            back = np.flatnonzero(np.diff(np.concatenate([[0], c.rollbacks[k]])) > 0)
            if back.size:
                last = [c.loss[k, :t][np.isfinite(c.loss[k, :t])][-1:] for t in back]
                at = [(t + 1, v[0]) for t, v in zip(back, last) if v.size]
                if at:
                    ax.plot(*zip(*at), "x", color=color, ms=7, mew=2)
            i += 1
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.plot([], [], "x", color="0.3", ms=7, mew=2, label="rollback (the seed's colour)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the curves, never over them
    return fig
