"""What a run directory holds, and how it proves itself.

    DIR/config.json       the TrainConfig, its hash and the library versions
    DIR/checkpoint.npz    the whole training state after the last finished chunk
    DIR/model.npz         the best seed (io.save_npz's format)    } written when
    DIR/seeds.npz         every seed, leading axis K              } training ends,
    DIR/metrics.json      adjusted loss, oracle loss, recoveries… } in this order
    DIR/manifest.json     the config's hash and a SHA-256 of each of the three above, written last
    DIR/curve.csv         the learning curve (`curves`), a readable export of the checkpoint's losses

A directory is a finished run of a config when its manifest names that config and
every file it lists is there with its digest. Anything else of ours in a directory
(a model without a manifest, a checkpoint of another config, a damaged file) is
refused with a message that names the file and the fix; nothing is overwritten
unless `force` says so, and nothing is reused that does not prove itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jax
import numpy as np

from .config import TrainConfig
from .engine import TrainState, grown, init_state
from .io import atomic_write, load_npz, read_arrays, read_json, writable_directory
from .params import Params, as_diag, as_full, check_params
from .provenance import environment

CHECKPOINT, CONFIG, METRICS, MODEL, SEEDS = "checkpoint.npz", "config.json", "metrics.json", "model.npz", "seeds.npz"
MANIFEST = "manifest.json"
PREVIOUS = "checkpoint.prev.npz"  # the checkpoint one chunk before (see save_checkpoint)
RESULTS = (MODEL, SEEDS, METRICS)  # written when training ends, listed in the manifest
FILES = (CONFIG, CHECKPOINT, PREVIOUS, *RESULTS, MANIFEST)
METRIC_KEYS = ("adjusted_loss", "seed", "usable", "evaluation", "validation", "tail", "recoveries", "skipped_steps")
FIX = "pass --force to start over, or choose another --out"


def config_hash(config: TrainConfig) -> str:
    """12 hex digits of SHA-256 over the config's canonical JSON. While importance
    sampling is off (wide_fraction 0) its two fields change nothing, and are left out,
    as are the spike's two while spike_fraction is 0;
    so are the stratum's three while it is off (stratum 0), and n_min, normalised,
    continues, screen_sequences and grow_below at their defaults (0, False, "", 0,
    False), and the polish's four while polish is 0 (its score at "tail" always)."""
    fields = config.to_dict()
    if fields["wide_fraction"] == 0:
        del fields["wide_fraction"], fields["wide_scale"]
    if fields["spike_fraction"] == 0:
        del fields["spike_fraction"], fields["spike_scale"]
    if fields["stratum"] == 0:
        del fields["stratum"], fields["stratum_fraction"], fields["stratum_pool"]
    if fields["polish"] == 0:
        del fields["polish"], fields["polish_pool"], fields["polish_sequences"], fields["polish_score"]
    elif fields["polish_score"] == "tail":
        del fields["polish_score"]
    for name, default in (("n_min", 0), ("normalised", False), ("continues", ""), ("screen_sequences", 0),
                          ("grow_below", False)):
        if fields[name] == default:
            del fields[name]
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_name(config: TrainConfig) -> str:
    """A readable, unique directory name: e.g. full-L7-H1-uniform5-<hash>."""
    slug = "".join(c for c in config.noise if c.isalnum() or c == ".")
    return f"{config.variant}-L{config.layers}-H{config.heads}-{slug}-{config_hash(config)}"


def write_json(path: Path, data, strict: bool = False) -> None:
    """`data` as JSON, written atomically; `strict`: no NaN or Infinity."""
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2, allow_nan=not strict).encode()))


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------- checkpoints and seeds


def _leaves(state: TrainState) -> list[np.ndarray]:
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            for x in jax.tree.leaves(state)]


def save_checkpoint(path: Path, config: TrainConfig, state: TrainState, losses: np.ndarray) -> None:
    """The state and losses, atomically; the checkpoint that was there becomes PREVIOUS
    beside it. A group killed between its members' writes stands one chunk apart, and
    resumes together from the earlier step (`runs.run_group`), as it trained."""
    path = Path(path)
    if path.exists():
        os.replace(path, path.with_name(PREVIOUS))
    arrays = {f"leaf{i}": a for i, a in enumerate(_leaves(state))}
    atomic_write(Path(path), lambda f: np.savez(f, config_hash=np.asarray(config_hash(config)), losses=losses, **arrays))


def load_checkpoint(path: Path, config: TrainConfig) -> tuple[TrainState, np.ndarray]:
    """The state and loss history saved by `save_checkpoint` for this very config."""
    leaves, treedef = jax.tree.flatten(init_state(config))
    # the largest array a checkpoint of this config holds: the losses (seeds, steps) or a state leaf
    f = read_arrays(path, max(config.seeds * config.steps, *(np.size(x) for x in leaves)))
    if "config_hash" not in f or str(f["config_hash"]) != config_hash(config):
        raise ValueError(f"{path} belongs to another configuration (hash {f.get('config_hash')}, "
                         f"this one {config_hash(config)}); {FIX}")
    if sorted(f) != sorted(["config_hash", "losses", *(f"leaf{i}" for i in range(len(leaves)))]):
        raise ValueError(f"{path} does not hold a training state of this library version; {FIX}")
    losses = _losses(f, path, config)
    restored = []
    for i, like in enumerate(leaves):
        a = f[f"leaf{i}"]
        if jax.dtypes.issubdtype(like.dtype, jax.dtypes.prng_key):
            a = jax.random.wrap_key_data(a, impl=jax.random.key_impl(like))
        elif a.shape != like.shape or a.dtype != like.dtype:
            raise ValueError(f"{path}: leaf {i} has {a.shape} {a.dtype}, expected {like.shape} {like.dtype}; {FIX}")
        restored.append(jax.numpy.asarray(a))
    return jax.tree.unflatten(treedef, restored), losses


def _losses(f: dict, path: Path, config: TrainConfig) -> np.ndarray:
    losses = f["losses"]
    if losses.ndim != 2 or losses.shape[0] != config.seeds or losses.dtype.kind != "f":
        raise ValueError(f"{path}: losses of shape {losses.shape}, expected ({config.seeds}, steps); {FIX}")
    return losses


def checkpoint_losses(path: Path, config: TrainConfig) -> np.ndarray:
    """The loss history (seeds, steps done) of a checkpoint of this config, whatever
    version of the training state it holds beside (a learning curve needs no more)."""
    per_seed = max(config.steps, max(config.stratum, 1) * config.n * (config.d + 1),
                   2 * config.layers * config.heads * (config.d + 1) ** 2)  # the losses, the bank, P and Q
    f = read_arrays(path, config.seeds * per_seed)
    if "config_hash" not in f or str(f["config_hash"]) != config_hash(config):
        raise ValueError(f"{path} belongs to another configuration (hash {f.get('config_hash')}, "
                         f"this one {config_hash(config)})")
    return _losses(f, path, config)


def previous_start(directory: Path, config: TrainConfig):
    """The run's (state, losses) one chunk before its checkpoint, None where none is kept."""
    previous = Path(directory) / PREVIOUS
    return load_checkpoint(previous, config) if previous.exists() else None


def save_seeds(path: Path, params: Params) -> None:
    """Every seed's parameters, stacked on a leading axis, in the library's own layout."""
    atomic_write(Path(path), lambda f: np.savez(f, variant=np.asarray(params.variant), d=np.asarray(params.d),
                                                p=np.asarray(params.p), q=np.asarray(params.q),
                                                normalised=np.asarray(params.normalised)))


def load_seeds(path: Path) -> Params:
    f = read_arrays(path, 10**8)
    try:
        params = Params(str(f["variant"]), int(f["d"]), jax.numpy.asarray(f["p"]), jax.numpy.asarray(f["q"]),
                        bool(f.get("normalised", False)))
        check_params(jax.tree.map(lambda a: a[0], params))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ValueError(f"{path}: not the seeds of a run ({e})") from None
    return params


def continuation_seeds(config: TrainConfig, parent: Path) -> Params:
    """The models a continuation starts from: the final seeds of the finished run
    `parent`. A parent one layer shallower than the config is grown by a layer
    (engine.grown); a DIAG or GD++ parent of a FULL config becomes the FULL model it is
    (params.as_full), and a FULL parent of a DIAG config the DIAG model nearest it
    (params.as_diag)."""
    if not (parent / MANIFEST).exists():
        raise ValueError(f"{parent} is not a finished run, so the run that continues it cannot start")
    files = read_json(parent / MANIFEST, ("config_hash", "files"))["files"]
    if not (parent / SEEDS).exists() or not isinstance(files, dict) or files.get(SEEDS) != digest(parent / SEEDS):
        raise ValueError(f"{parent / SEEDS} is missing or differs from the file its run wrote; rerun that run "
                         "with --force")
    seeds = load_seeds(parent / SEEDS)
    if config.variant == "full" and seeds.variant != "full":
        seeds = as_full(seeds)
    elif config.variant == "diag" and seeds.variant == "full":
        seeds = as_diag(seeds)
    if seeds.p.ndim > 1 and seeds.p.shape[1] == config.layers - 1:
        seeds = grown(config, seeds)
    return seeds


def continuation_start(config: TrainConfig, parent: Path) -> tuple[TrainState, np.ndarray]:
    """The (state, no losses yet) a continuation starts from: `continuation_seeds`,
    with a fresh optimiser state (engine.init_state)."""
    return init_state(config, continuation_seeds(config, parent)), np.zeros((config.seeds, 0), np.float32)


# ---------------------------------------------------------------------- the directory as a unit


def finish(directory: Path, config: TrainConfig) -> None:
    """Seal a run whose RESULTS are written: the manifest, last and atomically."""
    write_json(directory / MANIFEST, {"config_hash": config_hash(config),
                                      "files": {name: digest(directory / name) for name in RESULTS}})


def _differences(stored: dict, config: TrainConfig) -> str:
    mine = config.to_dict()
    fields = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
    return ", ".join(f"{k} {stored.get(k)!r} (here {mine.get(k)!r})" for k in fields) or "its hash"


def _check_config(directory: Path, config: TrainConfig) -> None:
    """The directory's config.json, where there is one, is this config's."""
    if (directory / CONFIG).exists():
        stored = read_json(directory / CONFIG, ("config", "hash"))
        if stored["hash"] != config_hash(config):
            raise ValueError(f"{directory} holds a run of another configuration, which differs in "
                             f"{_differences(stored['config'], config)}; {FIX}")


def _finished(directory: Path, config: TrainConfig) -> dict:
    """The metrics of the finished run in `directory`, once its manifest proves it."""
    manifest = read_json(directory / MANIFEST, ("config_hash", "files"))
    if manifest["config_hash"] != config_hash(config):
        raise ValueError(f"{directory} holds a finished run of another configuration "
                         f"(hash {manifest['config_hash']}, this one {config_hash(config)}); {FIX}")
    files = manifest["files"]
    for name in RESULTS:
        path = directory / name
        if not path.exists() or not isinstance(files, dict) or files.get(name) != digest(path):
            what = "is missing" if not path.exists() else "differs from the file the run wrote"
            raise ValueError(f"{path} {what}; {FIX}")
    return read_json(directory / METRICS, METRIC_KEYS)


def fresh(directory: Path) -> bool:
    """Whether a run in `directory` would train from its first step: no finished run
    there and no checkpoint (a guess, before `prepare` checks the directory)."""
    return not any((directory / name).exists() for name in (MANIFEST, CHECKPOINT, PREVIOUS))


def prepare(config: TrainConfig, directory: Path, resume: bool, force: bool = False):
    """Check `directory` against `config` before any work: (metrics, None) for a
    finished run to reuse, or (None, start) to train from, start None or a
    checkpoint's (state, losses). Raises ValueError for anything else of ours there."""
    directory = writable_directory(directory)
    if force:
        for name in FILES:
            (directory / name).unlink(missing_ok=True)
    _check_config(directory, config)
    sealed = (directory / MANIFEST).exists()
    if sealed or ((directory / CONFIG).exists() and all((directory / name).exists() for name in RESULTS)):
        if not resume:
            raise ValueError(f"{directory} holds a finished run; pass --resume to reuse it, or --force to start over")
        if not sealed:
            # Finished before its seal (killed between the two writes, or written by a
            # version of lticl without manifests): check what can be checked, then seal it.
            load_npz(directory / MODEL), load_seeds(directory / SEEDS), read_json(directory / METRICS, METRIC_KEYS)
            finish(directory, config)
        return _finished(directory, config), None
    start = None
    checkpoint = directory / (CHECKPOINT if (directory / CHECKPOINT).exists() else PREVIOUS)
    if checkpoint.exists():
        if not resume:
            raise ValueError(f"{directory} holds an unfinished run; pass --resume to continue it, or --force to start over")
        start = load_checkpoint(checkpoint, config)
    else:
        stray = [name for name in RESULTS if (directory / name).exists()]
        if stray:
            raise ValueError(f"{directory / stray[0]} is not part of a finished run of this configuration; {FIX}")
        if config.continues:
            start = continuation_start(config, directory.parent / config.continues)
    write_json(directory / CONFIG, {"config": config.to_dict(), "hash": config_hash(config),
                                    "environment": environment()}, strict=True)
    return None, start
