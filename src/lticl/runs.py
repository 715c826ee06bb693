"""Training in run directories (see `rundir`): one config or a group, resumable
after any interruption, locally or as Ray tasks.

Every file is written atomically, so a run killed at any instant (SIGKILL included)
leaves either the previous checkpoint or the new one, and resuming repeats exactly
the compiled calls an uninterrupted run makes: the parameters come out bit for bit
the same.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from .config import TrainConfig
from .curves import CURVE, curve, write_curve
from .engine import compile_ahead
from .io import read_json, save_npz
from .metrics import Evaluation
from .rundir import (CHECKPOINT, CONFIG, METRIC_KEYS, METRICS, MODEL, SEEDS, continuation_seeds, finish, fresh,
                     prepare, previous_start, save_checkpoint, save_seeds, write_json)
from .selection import select_best, tail_limit
from .train import CHECKED, Origin, TrainResult, train_group


def metrics_of(result: TrainResult, seconds: float) -> dict:
    ev = result.evaluation
    return {
        "adjusted_loss": ev.mean,
        "loss": ev.mean + result.oracle_loss.mean,
        "oracle_loss": result.oracle_loss.mean,
        "seed": result.seed,
        "usable": result.usable,
        "steps": result.config.steps,
        "recoveries": result.recoveries.tolist(),
        "skipped_steps": result.skipped.tolist(),
        "evaluation": ev.to_dict(),
        "validation": [v.to_dict() for v in result.validation],
        "tail": [v.to_dict() for v in result.tail],
        "polished": list(result.polished),
        "started": list(result.started),
        "seconds": seconds,
    }


def combine_runs(runs: list[dict], d: int, pool: float) -> dict:
    """One config's metrics over runs of consecutive seeds (`first_seed`, in order):
    those of the run whose chosen seed `train.select_best` prefers, with the per-seed
    lists (validation, tail, recoveries, skipped steps, polished, started) joined and `seed` indexing
    them; `pool`: the sequences a tail set is drawn from (`select_best`). Each run
    chose by the same rule, so this is the seed it would choose among all of them at
    once."""
    if len(runs) == 1:
        return runs[0]
    chosen = lambda field: [Evaluation(**m[field][m["seed"]]) for m in runs]
    try:
        best = select_best(chosen("validation"), [not m["usable"] for m in runs], chosen("tail"), tail_limit(d), pool)
    except RuntimeError:  # no run has a usable seed
        best = 0
    joined = {field: [x for m in runs for x in m[field]]
              for field in ("validation", "tail", "recoveries", "skipped_steps")}
    # runs written before the polish (the kept start) was recorded: none of their seeds was polished (kept it)
    for field in ("polished", "started"):
        joined[field] = [x for m in runs for x in m.get(field, [False] * len(m["validation"]))]
    return {**runs[best], **joined, "seed": sum(len(m["validation"]) for m in runs[:best]) + runs[best]["seed"]}


def run_group(runs: list[tuple[TrainConfig, Path]], resume: bool = True,
              progress: Callable[[int, np.ndarray], None] | None = None, stop_on_failure: bool = True,
              force: bool = False, prepared: list | None = None) -> list[dict]:
    """Train configs that share one program (see train.train_group) in their run
    directories, side by side, and return each one's metrics. Finished directories
    are read back; with `resume`, checkpoints are continued (grouped by their step).
    A sweep passes stop_on_failure=False: a run none of whose seeds can be
    recovered then finishes as unusable instead of raising. `prepared`: what
    `rundir.prepare` already returned for each run, so it is not done twice."""
    prepared = prepared or [prepare(c, Path(d), resume, force) for c, d in runs]
    todo = [i for i, (metrics, _) in enumerate(prepared) if metrics is None]
    _align(runs, prepared, todo)
    by_step: dict[int, list[int]] = {}
    for i in todo:
        by_step.setdefault(_step(prepared[i][1]), []).append(i)
    for members in by_step.values():
        started = time.perf_counter()

        def on_chunk(j, state, losses, members=members):
            save_checkpoint(Path(runs[members[j]][1]) / CHECKPOINT, runs[members[j]][0], state, losses)

        origins = [origin(runs[i][0], Path(runs[i][1]).parent) for i in members]
        results = train_group([runs[i][0] for i in members], progress, [prepared[i][1] for i in members], on_chunk,
                              stop_on_failure, origins)
        seconds = (time.perf_counter() - started) / len(members)
        for i, result in zip(members, results):
            directory = Path(runs[i][1])
            save_npz(result.params, directory / MODEL)
            save_seeds(directory / SEEDS, result.all_params)
            metrics = metrics_of(result, seconds)
            write_json(directory / METRICS, metrics)
            write_curve(directory / CURVE, curve(runs[i][0], result.losses))
            finish(directory, runs[i][0])
            prepared[i] = (metrics, None)
    return [metrics for metrics, _ in prepared]


def origin(config: TrainConfig, runs_dir: Path) -> Origin | None:
    """For a continuation, the models it starts from (rundir.continuation_seeds), with
    its parent's evaluations of them where the parent's are the same models on the same
    validation and tail sets (a cell's own model: no layer grown, no other variant)."""
    if not config.continues:
        return None
    parent_dir = runs_dir / config.continues
    seeds = continuation_seeds(config, parent_dir)
    parent, mine = read_json(parent_dir / CONFIG, ("config",))["config"], config.to_dict()
    if any(parent.get(f) != mine[f] for f in ("variant", "layers", *CHECKED)):
        return Origin(seeds)
    m = read_json(parent_dir / METRICS, METRIC_KEYS)
    return Origin(seeds, tuple([Evaluation(**e) for e in m[field]] for field in ("validation", "tail")))


def _step(start) -> int:
    return 0 if start is None else start[1].shape[1]


def _align(runs, prepared: list, todo: list[int]) -> None:
    """A group killed between its members' checkpoint writes stands one chunk apart:
    each member ahead resumes from its previous checkpoint (or its start), so that the
    group trains in the same calls as an uninterrupted run, bit for bit."""
    behind = min((_step(prepared[i][1]) for i in todo), default=0)
    for i in todo:
        if _step(prepared[i][1]) > behind:
            previous = previous_start(Path(runs[i][1]), runs[i][0]) if behind else None
            if _step(previous) == behind:
                prepared[i] = (None, previous)


EXECUTORS = ("local", "ray")


def require_ray():
    """The ray module, or a ValueError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError("the ray executor needs Ray: pip install 'lticl[ray]'") from None
    return ray


def run_groups(groups: list[list[tuple[TrainConfig, Path]]], resume: bool = True, executor: str = "local",
               progress: Callable[[int, int, int], None] | None = None) -> list[list[dict]]:
    """Each group's metrics (see run_group; a run that cannot be recovered comes
    back unusable, it does not stop the sweep). "local" trains the groups one after
    another in this process, `progress(group, step, steps)` after every chunk;
    "ray" submits each group as a Ray task to the cluster `ray.init()` finds (the
    RAY_ADDRESS variable, else a local instance it starts), `progress(group, steps,
    steps)` as each finishes. With Ray, OUT must be on storage every worker sees."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; expected one of {', '.join(EXECUTORS)}")
    report = progress or (lambda *a: None)
    if executor == "local":
        results = []
        for i, g in enumerate(groups):
            if i + 1 < len(groups) and all(fresh(Path(d)) for _, d in groups[i + 1]):
                compile_ahead([c for c, _ in groups[i + 1]])  # while this group trains
            results.append(run_group(g, resume, lambda step, _, i=i, total=g[0][0].steps: report(i, step, total),
                                     False))
        return results
    ray = require_ray()
    if not ray.is_initialized():
        with warnings.catch_warnings():  # Ray starts its own processes; JAX warns of any fork
            warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    task = ray.remote(run_group)
    refs = [task.remote(g, resume, None, False) for g in groups]
    index, pending = {ref: i for i, ref in enumerate(refs)}, list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        i = index[ready[0]]
        report(i, groups[i][0][0].steps, groups[i][0][0].steps)
    return ray.get(refs)


def run(config: TrainConfig, directory: Path, resume: bool = True,
        progress: Callable[[int, np.ndarray], None] | None = None, force: bool = False,
        prepared: tuple | None = None) -> dict:
    """Train `config` in `directory` and return its metrics (see run_group); `force`
    removes the run files already there first."""
    return run_group([(config, directory)], resume, progress, force=force,
                     prepared=None if prepared is None else [prepared])[0]
