"""Exact losses, adjusted losses, profiles, and the baselines evaluated (docs/math.md §4–6).

Every method here outputs a weight vector ŵ, so its loss averaged over the query
x_query ~ N(0, I) is exactly ½‖ŵ − w‖²; no query sampling noise enters.
The adjusted loss subtracts the oracle (ridge with r = σ_τ²) on the same sequence.

A mean over many sequences can hide a broken model (a few sequences with huge
loss), so every evaluation also reports the worst sequence, the number of
non-finite losses and the spread of the means of equal blocks of sequences.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from . import baselines
from .model import implicit_state
from .params import Params
from .noise import Fixed, NoiseLike
from .tasks import Tasks, data_key, kept_chunks, stack_chunks, task_chunks

# (x (B,n,d), y (B,n)) -> ŵ (B,d); a model is functools.partial(lticl.weights, params).
Method = Callable[[Array, Array], Array]

BLOCKS = 10


def sequence_loss(w_hat: Array, w: Array) -> Array:
    """½‖ŵ − w‖² = E_{x_query} ½(ŷ − y_query)² per sequence: (..., B)."""
    return 0.5 * jnp.sum((w_hat - w) ** 2, axis=-1)


def oracle_loss(tasks: Tasks) -> Array:
    """Per-sequence loss of ridge with the true σ_τ² (B,)."""
    return sequence_loss(baselines.oracle(tasks.x, tasks.y, tasks.sigma), tasks.w)


@dataclass(frozen=True)
class Evaluation:
    """Summary of per-sequence (adjusted) losses."""

    mean: float
    sem: float  # standard error of the mean
    worst: float  # largest per-sequence value (nan if any is nan)
    nonfinite: int  # sequences whose loss is nan or ±inf
    block_spread: float  # max − min over the means of BLOCKS equal blocks
    sequences: int

    @classmethod
    def of(cls, values: np.ndarray, blocks: int = BLOCKS) -> "Evaluation":
        v = np.asarray(values, np.float64).ravel()
        finite = np.isfinite(v)
        with np.errstate(invalid="ignore", over="ignore"):  # a broken model's inf/nan are reported, not warned
            block_means = [b.mean() for b in np.array_split(v, min(blocks, v.size))]
            spread, sem = float(np.ptp(block_means)), float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
        return cls(
            mean=float(v.mean()),
            sem=sem,
            worst=float(np.max(v)) if finite.all() else float("nan"),
            nonfinite=int((~finite).sum()),
            block_spread=spread,
            sequences=int(v.size),
        )

    def to_dict(self) -> dict:
        return asdict(self)


@partial(jax.jit, static_argnames="fns")
def _chunk_losses(tasks: Tasks, fns: tuple, tuned: tuple) -> dict[str, Array]:
    # One compiled program for all methods: XLA merges the identical
    # eigendecompositions of the ridge family.
    ref = oracle_loss(tasks)
    losses = {name: sequence_loss(fn(tasks.x, tasks.y, **kw), tasks.w) - ref for (name, fn), kw in zip(fns, tuned)}
    return {**losses, "oracle_loss": ref}


def per_sequence(fn: Callable[[Tasks], object], key: Array, noise, sequences: int, n: int, d: int,
                 dtype=jnp.float32, keep: bool = False):
    """`fn(tasks)` (a pytree of arrays whose last axis is the sequence) over
    `sequences` fresh sequences in chunks, concatenated on the host. Every chunk is
    whole, so `fn` compiles once; what lies past `sequences` is cut off. `keep`: the
    drawn chunks are kept for the next call on them (`tasks.kept_chunks`)."""
    drawn = kept_chunks if keep else partial(task_chunks, whole=True)
    chunks = [fn(t) for t in drawn(key, noise, sequences, n, d, dtype)]
    return jax.tree.map(lambda *parts: np.concatenate(jax.device_get(parts), axis=-1)[..., :sequences], *chunks)


def evaluate(methods: dict[str, Method], key: Array, noise: NoiseLike, sequences: int, n: int, d: int,
             dtype=jnp.float32) -> dict[str, Evaluation]:
    """Adjusted loss of each method on the same `sequences` fresh sequences, plus
    the unadjusted loss of the oracle under the key 'oracle_loss'.

    A method is (x, y) -> ŵ, or a `baselines.Fitted`, whose tuned values are
    passed traced so that the compiled program is reused across settings."""
    if "oracle_loss" in methods:
        raise ValueError("'oracle_loss' is reserved for the oracle's own loss; rename that method")
    fns, tuned = [], []
    for name, m in methods.items():
        fn, kw = (m.fn, m.tuned) if isinstance(m, baselines.Fitted) else (m, {})
        fns.append((name, fn))
        tuned.append({k: jnp.asarray(v, dtype) for k, v in kw.items()})
    losses = per_sequence(lambda t: _chunk_losses(t, tuple(fns), tuple(tuned)), key, noise, sequences, n, d, dtype)
    return {name: Evaluation.of(v) for name, v in losses.items()}


def adjusted_loss(method: Method, key, noise, sequences: int, n: int, d: int, dtype=jnp.float32) -> Evaluation:
    """Adjusted loss of one method (see `evaluate`)."""
    return evaluate({"m": method}, key, noise, sequences, n, d, dtype)["m"]


def per_variance_profile(
    method: Method, key: Array, sigmas, sequences: int, n: int, d: int, dtype=jnp.float32
) -> list[Evaluation]:
    """Adjusted loss at each fixed σ in `sigmas`, each on its own fresh sequences."""
    return [
        adjusted_loss(method, jax.random.fold_in(key, i), Fixed(float(s)), sequences, n, d, dtype)
        for i, s in enumerate(np.asarray(sigmas, float))
    ]


@jax.jit
def layer_adjusted_losses(params: Params, tasks: Tasks) -> Array:
    """(L+1, B): adjusted loss of the implicit prediction <w^l, x_query> after each
    layer l = 0..L (l = 0 predicts 0), per sequence."""
    return sequence_loss(implicit_state(params, tasks.x, tasks.y).w, tasks.w) - oracle_loss(tasks)


def per_layer_profile(
    params: Params, key: Array, noise, sequences: int, n: int, dtype=jnp.float32
) -> list[Evaluation]:
    """Adjusted loss after each layer l = 0..L (`layer_adjusted_losses`) on the same
    fresh sequences."""
    per_seq = per_sequence(lambda t: layer_adjusted_losses(params, t), key, noise, sequences, n, params.d, dtype)
    return [Evaluation.of(v) for v in per_seq]


def tune_baselines(methods, setting, seed: int, sequences: int, n: int, d: int) -> dict[str, baselines.Fitted]:
    """The baselines `methods` tuned on `sequences` of the setting's own tune stream,
    which no evaluation ever sees."""
    tuning = stack_chunks(task_chunks(data_key(seed, setting, "tune"), setting, sequences, n, d))
    return baselines.fit(methods, tuning)


def evaluate_baselines(methods, settings, seed: int, sequences: int, tune_sequences: int, n: int, d: int,
                       progress: Callable[[str], None] | None = None) -> dict[str, dict]:
    """{setting: {"evaluation": {method: Evaluation, "oracle_loss": Evaluation},
    "tuned": {method: tuned values}}}: each setting's baselines tuned on its tune
    stream and evaluated on its evaluation stream (that of a run with this seed).
    `progress(setting)` before each setting."""
    results = {}
    for setting in settings:
        if progress is not None:
            progress(setting)
        fitted = tune_baselines(methods, setting, seed, tune_sequences, n, d)
        results[setting] = {"evaluation": evaluate(fitted, data_key(seed, setting, "evaluation"), setting,
                                                   sequences, n, d),
                            "tuned": {m: f.tuned for m, f in fitted.items()}}
    return results
