"""Progress of long commands, for a terminal and for a log.

In a terminal: rich's bars on stderr. Otherwise (nohup, a cluster job, a pipe):
plain lines on stderr, one per task at most every PLAIN_EVERY seconds and at its
end, flushed. Either way, with an output directory, every update is also a JSON
line in OUT/log.jsonl, so a job can be followed with `tail -f`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..io import atomic_write

PLAIN_EVERY = 10.0  # seconds between two plain lines of one task
LOG = "log.jsonl"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Tracker:
    """The subset of rich.progress.Progress that lticl's commands use (add_task,
    update), reported as the module says."""

    def __init__(self, console: Console, out: Path | None = None, loss: bool = True):
        self.loss, self.started = loss, time.monotonic()
        self.tasks: dict[int, dict] = {}
        self.bars = None
        if console.is_terminal:
            columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
                       *([TextColumn("loss {task.fields[loss]}")] if loss else []), TimeElapsedColumn(),
                       TimeRemainingColumn()]
            self.bars = Progress(*columns, console=console)
        self.log = None
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            log = Path(out) / LOG
            if log.exists() and log.stat().st_nlink > 1:  # a hard-linked copy's: append to its own
                atomic_write(log, lambda f: f.write(log.read_bytes()))
            self.log = open(log, "a", encoding="utf-8")

    def __enter__(self) -> "Tracker":
        if self.bars is not None:
            self.bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.bars is not None:
            self.bars.__exit__(*exc)
        if self.log is not None:
            self.log.close()

    def add_task(self, description: str, total: int) -> int:
        task = len(self.tasks)
        bar = self.bars.add_task(escape(description), total=total, loss="–") if self.bars is not None else None
        self.tasks[task] = dict(name=description, total=total, step=0, loss=None, bar=bar, began=time.monotonic(),
                                printed=-math.inf)
        self._report(task, force=True)
        return task

    def update(self, task: int, completed: int, loss: float | None = None, visible: bool = True) -> None:
        t = self.tasks[task]
        t["step"], t["loss"] = completed, loss if loss is not None else t["loss"]
        if self.bars is not None:
            fields = {"loss": "–" if t["loss"] is None else f"{t['loss']:.4g}"} if self.loss else {}
            self.bars.update(t["bar"], completed=completed, visible=visible, **fields)
        self._report(task, force=completed >= t["total"])

    def _report(self, task: int, force: bool) -> None:
        t, now = self.tasks[task], time.monotonic()
        spent = now - t["began"]
        eta = spent / t["step"] * (t["total"] - t["step"]) if t["step"] else None
        record = dict(time=datetime.now(timezone.utc).isoformat(timespec="seconds"), task=t["name"], step=t["step"],
                      steps=t["total"], best_loss=t["loss"], elapsed_s=round(now - self.started, 1),
                      eta_s=None if eta is None else round(eta, 1))
        if self.log is not None:
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()
        if self.bars is None and (force or now - t["printed"] >= PLAIN_EVERY):
            t["printed"] = now
            loss = "" if t["loss"] is None else f", best loss {t['loss']:.4g}"
            print(f"{t['name']}: step {t['step']}/{t['total']}{loss}, elapsed {_clock(now - self.started)}, "
                  f"eta {'–' if eta is None else _clock(eta)}", file=sys.stderr, flush=True)
