"""Run directories: one trained configuration, resumable after any interruption.

    DIR/config.json       the TrainConfig, its hash and the library versions
    DIR/checkpoint.npz    the whole training state after the last finished chunk
    DIR/model.npz         the best seed (io.save_npz's format)    } written when
    DIR/metrics.json      adjusted loss, oracle loss, recoveries… } training ends
    DIR/seeds.npz         every seed, leading axis K              }

A directory with metrics.json is finished. Every file is written atomically, so a
run killed at any instant (SIGKILL included) leaves either the previous checkpoint
or the new one, and resuming repeats exactly the compiled calls an uninterrupted
run makes: the parameters come out bit for bit the same.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from .io import atomic_write, save_npz
from .metrics import Evaluation
from .params import Params, check_params
from .provenance import environment
from .config import TrainConfig
from .engine import TrainState, init_state
from .selection import select_best, tail_limit
from .train import TrainResult, train_group

CHECKPOINT, CONFIG, METRICS, MODEL, SEEDS = "checkpoint.npz", "config.json", "metrics.json", "model.npz", "seeds.npz"


def config_hash(config: TrainConfig) -> str:
    """12 hex digits of SHA-256 over the config's canonical JSON. While importance
    sampling is off (wide_fraction 0) its two fields change nothing, and are left out."""
    fields = config.to_dict()
    if fields["wide_fraction"] == 0:
        del fields["wide_fraction"], fields["wide_scale"]
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_name(config: TrainConfig) -> str:
    """A readable, unique directory name: e.g. full-L7-H1-uniform5-<hash>."""
    slug = "".join(c for c in config.noise if c.isalnum() or c == ".")
    return f"{config.variant}-L{config.layers}-H{config.heads}-{slug}-{config_hash(config)}"


def write_json(path: Path, data) -> None:
    """`data` as JSON, written atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2).encode()))


def _leaves(state: TrainState) -> list[np.ndarray]:
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            for x in jax.tree.leaves(state)]


def save_checkpoint(path: Path, config: TrainConfig, state: TrainState, losses: np.ndarray) -> None:
    arrays = {f"leaf{i}": a for i, a in enumerate(_leaves(state))}
    atomic_write(Path(path), lambda f: np.savez(f, config_hash=np.asarray(config_hash(config)), losses=losses, **arrays))


def load_checkpoint(path: Path, config: TrainConfig) -> tuple[TrainState, np.ndarray]:
    """The state and loss history saved by `save_checkpoint` for this very config."""
    template = init_state(config)
    with np.load(path, allow_pickle=False) as f:
        if str(f["config_hash"]) != config_hash(config):
            raise ValueError(f"{path} belongs to another configuration (hash {f['config_hash']}, "
                             f"this one {config_hash(config)})")
        leaves, treedef = jax.tree.flatten(template)
        if len(f.files) != len(leaves) + 2:
            raise ValueError(f"{path} does not hold a training state of this library version")
        restored = []
        for i, like in enumerate(leaves):
            a = f[f"leaf{i}"]
            if jax.dtypes.issubdtype(like.dtype, jax.dtypes.prng_key):
                restored.append(jax.random.wrap_key_data(a, impl=jax.random.key_impl(like)))
            else:
                if a.shape != like.shape or a.dtype != like.dtype:
                    raise ValueError(f"{path}: leaf {i} has {a.shape} {a.dtype}, expected {like.shape} {like.dtype}")
                restored.append(jax.numpy.asarray(a))
        return jax.tree.unflatten(treedef, restored), f["losses"]


def save_seeds(path: Path, params: Params) -> None:
    """Every seed's parameters, stacked on a leading axis, in the library's own layout."""
    atomic_write(Path(path), lambda f: np.savez(f, variant=np.asarray(params.variant), d=np.asarray(params.d),
                                            p=np.asarray(params.p), q=np.asarray(params.q)))


def load_seeds(path: Path) -> Params:
    with np.load(path, allow_pickle=False) as f:
        params = Params(str(f["variant"]), int(f["d"]), jax.numpy.asarray(f["p"]), jax.numpy.asarray(f["q"]))
    check_params(jax.tree.map(lambda a: a[0], params))
    return params


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
        "seconds": seconds,
    }


def combine_runs(runs: list[dict], d: int) -> dict:
    """One config's metrics over runs of consecutive seeds (`first_seed`, in order):
    those of the run whose chosen seed `train.select_best` prefers, with the per-seed
    lists (validation, tail, recoveries, skipped steps) joined and `seed` indexing
    them. Each run chose by the same rule, so this is the seed it would choose among
    all of them at once."""
    if len(runs) == 1:
        return runs[0]
    chosen = lambda field: [Evaluation(**m[field][m["seed"]]) for m in runs]
    try:
        best = select_best(chosen("validation"), [not m["usable"] for m in runs], chosen("tail"), tail_limit(d))
    except RuntimeError:  # no run has a usable seed
        best = 0
    joined = {field: [x for m in runs for x in m[field]]
              for field in ("validation", "tail", "recoveries", "skipped_steps")}
    return {**runs[best], **joined, "seed": sum(len(m["validation"]) for m in runs[:best]) + runs[best]["seed"]}


def is_finished(directory: Path) -> bool:
    return (Path(directory) / METRICS).exists()


def _prepare(config: TrainConfig, directory: Path, resume: bool):
    """Check `directory` against `config`: 'finished' metrics, or a start (None or a
    checkpoint) to train from. Nothing is silently overwritten."""
    directory.mkdir(parents=True, exist_ok=True)
    recorded = directory / CONFIG
    if recorded.exists():
        stored = json.loads(recorded.read_text()).get("hash")
        if stored != config_hash(config):
            raise ValueError(f"{directory} holds a run of another configuration (hash {stored}); use another --out")
    if is_finished(directory):
        if not resume:
            raise ValueError(f"{directory} holds a finished run; pass --resume to reuse it or choose another --out")
        return json.loads((directory / METRICS).read_text()), None
    start = None
    if (directory / CHECKPOINT).exists():
        if not resume:
            raise ValueError(f"{directory} holds an unfinished run; pass --resume to continue it")
        start = load_checkpoint(directory / CHECKPOINT, config)
    write_json(recorded, {"config": config.to_dict(), "hash": config_hash(config), "environment": environment()})
    return None, start


def run_group(runs: list[tuple[TrainConfig, Path]], resume: bool = True,
              progress: Callable[[int, np.ndarray], None] | None = None, stop_on_failure: bool = True) -> list[dict]:
    """Train configs that share one program (see train.train_group) in their run
    directories, side by side, and return each one's metrics. Finished directories
    are read back; with `resume`, checkpoints are continued (grouped by their step).
    A sweep passes stop_on_failure=False: a run none of whose seeds can be
    recovered then finishes as unusable instead of raising."""
    prepared = [_prepare(c, Path(d), resume) for c, d in runs]
    todo = [i for i, (metrics, _) in enumerate(prepared) if metrics is None]
    by_step: dict[int, list[int]] = {}
    for i in todo:
        start = prepared[i][1]
        by_step.setdefault(0 if start is None else start[1].shape[1], []).append(i)
    for members in by_step.values():
        started = time.perf_counter()

        def on_chunk(j, state, losses, members=members):
            save_checkpoint(Path(runs[members[j]][1]) / CHECKPOINT, runs[members[j]][0], state, losses)

        results = train_group([runs[i][0] for i in members], progress, [prepared[i][1] for i in members], on_chunk,
                              stop_on_failure)
        seconds = (time.perf_counter() - started) / len(members)
        for i, result in zip(members, results):
            directory = Path(runs[i][1])
            save_npz(result.params, directory / MODEL)
            save_seeds(directory / SEEDS, result.all_params)
            metrics = metrics_of(result, seconds)
            write_json(directory / METRICS, metrics)
            prepared[i] = (metrics, None)
    return [metrics for metrics, _ in prepared]


EXECUTORS = ("local", "ray")


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
        return [run_group(g, resume, lambda step, _, i=i, total=g[0][0].steps: report(i, step, total), False)
                for i, g in enumerate(groups)]
    try:
        import ray
    except ImportError:
        raise ValueError("the ray executor needs Ray: pip install 'lticl[ray]'") from None
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
        progress: Callable[[int, np.ndarray], None] | None = None) -> dict:
    """Train `config` in `directory` and return its metrics (see run_group)."""
    return run_group([(config, directory)], resume, progress)[0]
