"""Which seed a run keeps, and the tail policy: validation, tail sets, heavy tails.

A mean over validation sequences can hide a model that blows up on rare
sequences. So each seed is also scored on its run's tail set, the TAIL_KEEP
sequences most likely to blow a model up among `tail_sequences` fresh ones (by a
score of the data), plus, where the config screens, the seed's own worst TAIL_KEEP
of the first `screen_sequences` of them (by its own loss). A seed whose worst
sequence there (or on validation) exceeds TAIL × d/2 (100 times the loss of
predicting 0) is heavy-tailed: selection prefers tame seeds, and the reproduction
gives a heavy-tailed cell new seeds.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from .metrics import Evaluation, oracle_loss, per_sequence, sequence_loss
from .kernel import weights  # the engine's layout: model.weights to rounding, faster
from .params import Params
from .tasks import CHUNK, Tasks, data_key, tail_tasks, task_chunks

TAIL = 100.0
TAIL_KEEP = 1024  # sequences in a tail set


def tail_limit(d: int) -> float:
    """The largest tame per-sequence adjusted loss: TAIL × d/2."""
    return TAIL * d / 2


def heavy_tailed(tail: Evaluation, d: int) -> bool:
    return not tail.worst <= tail_limit(d)  # nan counts as a tail


# One thread that draws tail sets (and the polish's samples) while the caller trains:
# the draw fills the cores that compilation and the step loop's host work leave idle.
_DRAWER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lticl-tail-set")


def in_background(fn: Callable, *args) -> Future:
    """fn(*args) on the drawing thread, after the draws submitted before it."""
    return _DRAWER.submit(fn, *args)


@lru_cache(maxsize=32)
def prefetch_tail_set(seed: int, noise: str, pool: int, n: int, d: int) -> Future:
    """Start drawing the tail set of (seed, noise, pool, n, d) in the background, once
    per process; `tail_set` waits for it. Every depth and variant of a noise
    setting shares it."""
    return in_background(tail_tasks, data_key(seed, noise, "tail"), noise, pool, TAIL_KEEP, n, d)


def tail_set(seed: int, noise: str, pool: int, n: int, d: int) -> Tasks:
    """The tail set of a run: `tasks.tail_tasks` on its own stream, the TAIL_KEEP
    sequences with the largest tail score among `pool`."""
    return prefetch_tail_set(seed, noise, pool, n, d).result()


def select_best(validation: list[Evaluation], failed=None, tail: list[Evaluation] | None = None,
                worst_limit: float = np.inf, pool: float = np.inf) -> int:
    """The seed with the lowest validation mean among those that did not fail in
    training and have no non-finite validation loss, preferring seeds whose worst
    sequence, of validation and of `tail`, is at most `worst_limit` (a heavy tail
    that a mean hides). Among the seeds with a heavy tail, the one whose mean,
    charged with its tail set's worst sequence as one of `pool` (what Table 1's tail
    rule adds), is lowest; it is chosen where no seed is tame, or where `pool` is
    finite and that charged mean is below the best tame seed's, charged alike (a
    tail the mean over `pool` sequences absorbs). Raises if no seed is usable."""
    failed = np.zeros(len(validation), bool) if failed is None else np.asarray(failed)
    usable = [i for i, v in enumerate(validation) if not failed[i] and v.nonfinite == 0 and np.isfinite(v.mean)]
    if not usable:
        raise RuntimeError("no seed is usable (each failed in training or has non-finite validation losses)")
    tail = validation if tail is None else tail
    tame = [i for i in usable if validation[i].worst <= worst_limit and tail[i].worst <= worst_limit]  # nan: not tame
    worst = lambda i: tail[i].worst if tail[i].worst == tail[i].worst else np.inf  # nan: an overflow
    charged = lambda i: validation[i].mean + worst(i) / pool
    heavy = [i for i in usable if i not in tame]
    best_heavy = min(heavy, key=lambda i: (charged(i), validation[i].mean)) if heavy else None
    if not tame:
        return best_heavy
    best_tame = min(tame, key=lambda i: validation[i].mean)
    if best_heavy is not None and np.isfinite(pool) and charged(best_heavy) < charged(best_tame):
        return best_heavy
    return best_tame


@jax.jit
def model_losses(params: Params, tasks: Tasks) -> Array:
    """Per-sequence loss (K, B) of K stacked models on the same sequences."""
    return jax.vmap(lambda p: sequence_loss(weights(p, tasks.x, tasks.y), tasks.w))(params)


@jax.jit
def adjusted_losses(params: Params, tasks: Tasks) -> tuple[Array, Array]:
    """Per-sequence adjusted loss (K, B) of K stacked models on the same sequences,
    and the oracle's own loss (B,)."""
    oracle = oracle_loss(tasks)
    return model_losses(params, tasks) - oracle, oracle


_oracle = jax.jit(oracle_loss)


@lru_cache(maxsize=64)
def _oracle_losses(key_data: bytes, impl: str, noise, sequences: int, n: int, d: int) -> np.ndarray:
    key = jax.random.wrap_key_data(np.frombuffer(key_data, np.uint32), impl=impl)
    return per_sequence(_oracle, key, noise, sequences, n, d, keep=True)


def oracle_losses(key: Array, noise, sequences: int, n: int, d: int) -> np.ndarray:
    """The oracle's per-sequence loss (sequences,) on the fresh sequences of `key`,
    computed once per process: every model of a noise setting meets the same ones."""
    data = np.asarray(jax.random.key_data(key), np.uint32)
    return _oracle_losses(data.tobytes(), str(jax.random.key_impl(key)), noise, sequences, n, d)


def evaluate_models(params: Params, key: Array, noise, sequences: int, n: int) -> tuple[list[Evaluation], Evaluation]:
    """Adjusted loss of each of K models stacked on a leading axis, all on the same
    fresh sequences (drawn once per process, `tasks.kept_chunks`), and the oracle's
    loss there; one compiled program per model shape."""
    oracle = oracle_losses(key, noise, sequences, n, params.d)
    model = per_sequence(lambda t: model_losses(params, t), key, noise, sequences, n, params.d, keep=True)
    return [Evaluation.of(v - oracle) for v in model], Evaluation.of(oracle)


@jax.jit
def _keep_worst(params: Params, worst: Tasks, worst_loss: Array, chunk: Tasks, size: Array) -> tuple[Tasks, Array]:
    """Each of K models' highest-loss sequences (K, keep, …) among its `worst` so far and
    the first `size` of `chunk` (shared by all); a non-finite loss counts as highest."""
    loss = model_losses(params, chunk)
    loss = jnp.where(jnp.arange(chunk.batch) < size, jnp.where(jnp.isnan(loss), jnp.inf, loss), -jnp.inf)
    top_loss, top = jax.lax.top_k(jnp.concatenate([worst_loss, loss], axis=1), worst_loss.shape[1])

    def pick(kept, new):
        both = jnp.concatenate([kept, jnp.broadcast_to(new, kept.shape[:1] + new.shape)], axis=1)
        return jnp.take_along_axis(both, top.reshape(top.shape + (1,) * (new.ndim - 1)), axis=1)

    return jax.tree.map(pick, worst, chunk), top_loss


def own_worst(params: Params, key: Array, noise, sequences: int, n: int, keep: int = TAIL_KEEP) -> Tasks:
    """For each of K stacked models, the `keep` sequences on which its own loss is
    largest among `sequences` fresh ones of `key` (leading axis K, in descending loss):
    where a model blows up, whatever score of the data alone would rank it."""
    keep = min(keep, sequences)
    k = jax.tree.leaves(params)[0].shape[0]
    worst, worst_loss = None, jnp.full((k, keep), -jnp.inf)
    for c, chunk in enumerate(task_chunks(key, noise, sequences, n, params.d, whole=True)):
        if worst is None:  # placeholders, ranked below every real sequence
            worst = jax.tree.map(lambda a: jnp.broadcast_to(a[:keep], (k, keep) + a.shape[1:]), chunk)
        worst, worst_loss = _keep_worst(params, worst, worst_loss, chunk, min(CHUNK, sequences - c * CHUNK))
    return worst


@jax.jit
def _paired_adjusted(params: Params, tasks: Tasks) -> Array:
    """Adjusted loss (K, B) of each of K stacked models on its own sequences (K, B, …)."""
    return jax.vmap(lambda p, t: sequence_loss(weights(p, t.x, t.y), t.w) - oracle_loss(t))(params, tasks)


def tail_evaluations(params: Params, seed: int, noise: str, pool: int, n: int, screen: int = 0) -> list[Evaluation]:
    """Adjusted loss of each of K stacked models on the tail set of (seed, noise, pool),
    and with `screen` > 0 also on its own TAIL_KEEP worst (`own_worst`) of the first
    `screen` of the same fresh sequences: a tail set of the model's own."""
    hardest = tail_set(seed, noise, pool, n, params.d)
    losses = np.asarray(adjusted_losses(params, hardest)[0])
    if screen:
        own = own_worst(params, data_key(seed, noise, "tail"), noise, screen, n)
        losses = np.concatenate([losses, np.asarray(_paired_adjusted(params, own))], axis=1)
    return [Evaluation.of(v) for v in losses]
