"""In-context linear regression sequences (docs/math.md §1).

    w ~ N(0, I_d),  x_i ~ N(0, I_d),  y_i = <w, x_i> + ξ_i,  ξ_i ~ N(0, σ_τ²),
    x_query ~ N(0, I_d),  y_query = <w, x_query>   (noise-free target)

Each random quantity has its own key stream (fold_in by name), so changing how
the noise is drawn never changes w or x.
"""

from __future__ import annotations

import math
import operator
import threading
import zlib
from collections import OrderedDict
from functools import lru_cache, partial
from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from .noise import NoiseLike, as_noise
from .products import einsum, matmul

# Long evaluations are drawn in chunks of this many sequences, chunk c from
# fold_in(key, c), so the first N sequences of a stream are the same whatever
# the total: 100k evaluation sequences are a prefix of 1M.
CHUNK = 8192

_STREAM = {"w": 0, "x": 1, "sigma": 2, "xi": 3, "query": 4, "length": 5, "spike": 6}


class Tasks(NamedTuple):
    """A batch of B sequences with n context points in d dimensions."""

    x: Array  # (B, n, d) context inputs
    y: Array  # (B, n) noisy context targets
    w: Array  # (B, d) ground-truth regressor
    sigma: Array  # (B,) noise standard deviation of each sequence
    x_query: Array  # (B, d)
    y_query: Array  # (B,) noise-free query target

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    @property
    def n(self) -> int:
        return self.x.shape[1]

    @property
    def d(self) -> int:
        return self.x.shape[2]


def positive_int(value, name: str, minimum: int = 1) -> int:
    """`value` as an int ≥ `minimum` (1 unless told), or a ValueError naming `name`."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def check_key(key) -> None:
    """Raise ValueError unless `key` is a JAX PRNG key (jax.random.key(seed))."""
    if not (isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ()):
        raise ValueError(f"key must be one JAX PRNG key, as jax.random.key(seed) makes, got {type(key).__name__}"
                         f"{'' if not hasattr(key, 'dtype') else f' of dtype {key.dtype} and shape {key.shape}'}")


def normal(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
    """`jax.random.normal(key, shape, dtype)`, the same numbers bit for bit (threefry
    counts in row-major order), drawn flat and reshaped: XLA compiles a flat draw
    several times faster, and on a CPU it runs faster too (BENCHMARKS.md)."""
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def _stream(key: Array, name: str) -> Array:
    return jax.random.fold_in(key, _STREAM[name])


def sigma_key(key: Array) -> Array:
    """The key from which `sample_tasks(key, ...)` draws σ (for samplers of σ elsewhere)."""
    return _stream(key, "sigma")


def draw_lengths(key: Array, batch: int, low: int, high: int) -> Array:
    """Context lengths (batch,), each uniform on low..high, on the key's own stream
    (the sequences' other draws are unchanged by it)."""
    return jax.random.randint(_stream(key, "length"), (batch,), low, high + 1)


@partial(jax.jit, static_argnums=(2, 3))
def tasks_given_sigma(key, sigma, n, d):
    """Sequences for the drawn noise levels sigma (B,): the rest of `sample_tasks`."""
    # σ comes in drawn, so this compiles once per shape, not once per distribution.
    return _tasks(key, sigma, n, d, 1.0)


def _tasks(key, sigma, n, d, w_scale, x_spike=None):
    """`x_spike` = (scale (B,), directions (B, d)): x_i ↦ x_i + (scale − 1)(u·x_i)u per
    sequence, context only; a scale of 1 leaves x as drawn."""
    batch, dtype = sigma.shape[0], sigma.dtype
    k = {name: _stream(key, name) for name in _STREAM}
    w = normal(k["w"], (batch, d), dtype) * w_scale
    x = normal(k["x"], (batch, n, d), dtype)
    if x_spike is not None:
        scale, u = x_spike
        x = x + ((scale - 1)[:, None] * einsum("bnd,bd->bn", x, u))[:, :, None] * u[:, None, :]
    xi = normal(k["xi"], (batch, n), dtype) * sigma[:, None]
    y = einsum("bnd,bd->bn", x, w) + xi
    x_query = normal(k["query"], (batch, d), dtype)
    return Tasks(x, y, w, sigma, x_query, einsum("bd,bd->b", x_query, w))


def _mixture_weight(log_ratio, alpha):
    """p/q for q = (1 − α)·p + α·q_wide, from log(q_wide/p); in log space, so that
    α = 0 gives weight 1 and a huge ratio gives weight 0, its limit."""
    return jnp.exp(-jnp.logaddexp(jnp.log1p(-alpha), jnp.log(alpha) + log_ratio))


@partial(jax.jit, static_argnums=(2, 3))
def mixture_tasks(key, sigma, n: int, d: int, wide=None, spike=None) -> tuple[Tasks, Array]:
    """Sequences drawn from a mixture, and the importance weights p/q (B,) that keep a
    weighted mean an unbiased estimate of the mean under the plain draw p.

    `wide` = (fraction, scale): the first round(fraction·B) sequences have
    w ~ N(0, scale²·I) instead of N(0, I), so q = (1 − α)·N(0, I) + α·N(0, scale²·I)
    with α the fraction actually drawn (a deterministic mixture). Large-‖w‖
    sequences, where trained models have their heavy tails, are met far more often,
    each with a weight of at most 1/(1 − α).

    `spike` = (fraction, scale): the last round(fraction·B) sequences draw their
    context inputs with covariance I + (scale² − 1)·u uᵀ, u one of the d columns of an
    orthonormal basis drawn per batch, chosen uniformly: a large λ_max(XᵀX/n), where
    low-noise models have theirs, far beyond what a million plain sequences hold.
    Their weight is p(X)/q(X) with q the mixture over the d directions and the plain
    draw, at most 1/(1 − β).

    The two are meant to be used one at a time (TrainConfig); their fractions and
    scales may be traced (data of a vmapped training state). None skips one at no
    cost; a fraction of 0 gives the same tasks, every weight 1, through traced
    arithmetic. The other draws are those of `tasks_given_sigma`."""
    batch, dtype = sigma.shape[0], sigma.dtype
    rows = jnp.arange(batch)
    weight, w_scale, x_spike = jnp.ones(batch, dtype), 1.0, None
    if wide is not None:
        fraction, scale = wide
        drawn = jnp.round(fraction * batch)
        w_scale = jnp.where(rows < drawn, scale, 1).astype(dtype)[:, None]
    if spike is not None:
        spike_fraction, spike_scale = spike
        spiked = jnp.round(spike_fraction * batch)
        k = _stream(key, "spike")
        basis = jnp.linalg.qr(normal(jax.random.fold_in(k, 0), (d, d), dtype))[0]
        u = basis.T[jax.random.randint(jax.random.fold_in(k, 1), (batch,), 0, d)]
        x_spike = (jnp.where(rows >= batch - spiked, spike_scale, 1).astype(dtype), u)
    t = _tasks(key, sigma, n, d, w_scale, x_spike)
    if wide is not None:
        # log q_wide(w)/p(w) = −d·log(scale) + ½‖w‖²(1 − 1/scale²)
        log_ratio = -d * jnp.log(scale) + 0.5 * jnp.sum(t.w**2, axis=1) * (1 - scale**-2.0)
        weight = weight * _mixture_weight(log_ratio, (drawn / batch).astype(dtype))
    if spike is not None:
        # log q_u(X)/p(X) = −n·log(scale) + ½‖Xu‖²(1 − 1/scale²), averaged over the basis
        beta = (spiked / batch).astype(dtype)
        projected = jnp.sum(einsum("bnd,dk->bnk", t.x, basis) ** 2, axis=1)
        log_ratio = -n * jnp.log(spike_scale) + 0.5 * projected * (1 - spike_scale**-2.0)
        mean_ratio = jax.scipy.special.logsumexp(log_ratio, axis=1) - jnp.log(d)
        weight = weight * jnp.where(beta > 0, _mixture_weight(mean_ratio, beta), 1)
    return t, weight


def sample_tasks(key: Array, noise: NoiseLike, batch: int, n: int, d: int, dtype=jnp.float32) -> Tasks:
    """Draw `batch` sequences; `noise` is a distribution, spec string or fixed σ."""
    check_key(key)
    noise = as_noise(noise)
    batch, n, d = (positive_int(v, name) for v, name in ((batch, "batch"), (n, "n"), (d, "d")))
    sigma = noise.sample(_stream(key, "sigma"), batch, jnp.dtype(dtype))
    return tasks_given_sigma(key, sigma, n, d)


def task_chunks(key: Array, noise: NoiseLike, sequences: int, n: int, d: int, dtype=jnp.float32,
                whole: bool = False) -> Iterator[Tasks]:
    """`sequences` sequences in chunks of at most CHUNK, prefix-stable in `sequences`.
    `whole`: the last chunk too comes whole (CHUNK sequences, those past `sequences`
    included), so that a function of chunks compiles for one shape only."""
    sequences = positive_int(sequences, "sequences")
    for c, start in enumerate(range(0, sequences, CHUNK)):
        chunk = sample_tasks(jax.random.fold_in(key, c), noise, CHUNK, n, d, dtype)
        size = min(CHUNK, sequences - start)
        yield chunk if size == CHUNK or whole else jax.tree.map(lambda a: a[:size], chunk)


KEPT_BYTES = 3 << 29  # 1.5 GiB: room for the validation and evaluation sets of the paper's ten settings
_kept: OrderedDict = OrderedDict()
_kept_lock = threading.Lock()


def kept_chunks(key: Array, noise: NoiseLike, sequences: int, n: int, d: int, dtype=jnp.float32) -> tuple[Tasks, ...]:
    """`task_chunks(..., whole=True)`, kept in memory for the next call on the same
    sequences, up to KEPT_BYTES over all calls (the least recently used dropped first):
    every model of a noise setting meets the same validation and evaluation sequences,
    which are then drawn once."""
    name = (np.asarray(jax.random.key_data(key)).tobytes(), str(jax.random.key_impl(key)), as_noise(noise).spec,
            sequences, n, d, jnp.dtype(dtype).name)
    with _kept_lock:
        if name in _kept:
            _kept.move_to_end(name)
            return _kept[name][0]
    chunks = tuple(task_chunks(key, noise, sequences, n, d, dtype, whole=True))
    size = sum(a.nbytes for a in jax.tree.leaves(chunks))
    with _kept_lock:
        _kept[name] = chunks, size
        while sum(size for _, size in _kept.values()) > KEPT_BYTES:
            _kept.popitem(last=False)
    return chunks


@jax.jit
def tail_score(tasks: Tasks) -> Array:
    """mean(y²) · λ_max(XᵀX/n) per sequence (B,): large where trained models blow up
    (the sequences that break them have both large; docs/training.md).

    λ_max is the Rayleigh quotient of G²⁵⁶·1 (eight squarings, far cheaper than
    eigvalsh on a CPU): a score, not an eigenvalue to many digits."""
    g = einsum("bni,bnj->bij", tasks.x, tasks.x) / tasks.n
    power = g
    for _ in range(8):
        power = matmul(power, power)
        power = power / jnp.max(jnp.abs(power), axis=(1, 2), keepdims=True)
    v = jnp.sum(power, axis=2)
    v = v / jnp.linalg.norm(v, axis=1, keepdims=True)
    return jnp.mean(tasks.y**2, axis=1) * einsum("bi,bij,bj->b", v, g, v)


@jax.jit
def _score_bound(tasks: Tasks) -> Array:
    """An upper bound of `tail_score` per sequence (B,), at a fraction of its cost:
    mean(y²)·‖G²‖_F^½, since λ_max(G)⁴ ≤ tr(G⁴) = ‖G²‖_F² for G = XᵀX/n ⪰ 0. Near the
    top of a pool few sequences pass it (docs/log/2026-12-04-profile.md)."""
    # Products as broadcast sums: XLA fuses them, where its batched 10 × 10 matmuls
    # cost three times as much on a CPU.
    g = jnp.sum(tasks.x[:, :, :, None] * tasks.x[:, :, None, :], axis=1) / tasks.n
    g2 = jnp.sum(g[:, :, :, None] * g[:, None, :, :], axis=2)
    return jnp.mean(tasks.y**2, axis=1) * jnp.sqrt(jnp.sqrt(jnp.sum(g2**2, axis=(1, 2))))


_BOUND_SLACK = 1e-3  # float32 rounding of the bound against the score, where the two nearly meet


def tail_tasks(key: Array, noise: NoiseLike, pool: int, keep: int, n: int, d: int, dtype=jnp.float32) -> Tasks:
    """The `keep` sequences with the largest `tail_score` among `pool` fresh ones
    (in descending score; of equal scores, the earlier one first). A model's worst
    loss on them stands in for its worst loss on all `pool` sequences, at the cost of
    evaluating `keep`. Only sequences whose score bound (`_score_bound`) reaches the
    smallest score kept so far are scored: the same sequences, at a fraction of the
    cost. Scores are computed on arrays of varying sizes, so two nearly tied scores
    may round into either order (docs/log/2026-12-04-profile.md)."""
    keep = min(positive_int(keep, "keep"), positive_int(pool, "pool"))
    best, scores = None, np.zeros(0, np.float64)
    for chunk in task_chunks(key, noise, pool, n, d, dtype):
        floor = scores[-1] if scores.size == keep else -np.inf
        rows = np.flatnonzero(np.asarray(_score_bound(chunk)) >= floor * (1 - _BOUND_SLACK))
        if not rows.size:
            continue
        padded = np.pad(rows, (0, _bucket(rows.size, chunk.batch) - rows.size), mode="edge")  # few shapes to compile
        picked = jax.tree.map(lambda a: a[padded], chunk)
        candidates = jax.tree.map(lambda a: np.asarray(a)[:rows.size], picked)
        s = np.concatenate([scores, np.asarray(tail_score(picked))[:rows.size]])
        order = np.argsort(-s, kind="stable")[:keep]
        both = candidates if best is None else Tasks(*(np.concatenate(p) for p in zip(best, candidates)))
        best, scores = jax.tree.map(lambda a: a[order], both), s[order]
    return jax.tree.map(jnp.asarray, best)


def _bucket(size: int, most: int) -> int:
    """The smallest power of two ≥ size (at least 64), at most `most`."""
    return min(most, max(64, 1 << (size - 1).bit_length()))


def stack_chunks(chunks: Iterator[Tasks]) -> Tasks:
    """Concatenate chunks into one Tasks (for sets small enough to hold at once)."""
    return Tasks(*(jnp.concatenate(parts) for parts in zip(*chunks)))


_PURPOSES = ("train", "tune", "validation", "evaluation", "tail", "bank", "polish")  # appended only: indices are keys


def data_key(seed: int, noise: NoiseLike, purpose: str) -> Array:
    """The key of one data stream: a run's seed, its noise setting and what the data
    is for. Streams for different purposes never overlap, so tuning or model
    selection never sees evaluation sequences, and adding a setting to a sweep
    leaves the other settings' data unchanged."""
    if purpose not in _PURPOSES:
        raise ValueError(f"unknown data purpose {purpose!r}; expected one of {', '.join(_PURPOSES)}")
    spec = as_noise(noise).spec
    key = jax.random.fold_in(jax.random.key(int(seed)), zlib.crc32(spec.encode()))
    return jax.random.fold_in(key, _PURPOSES.index(purpose))


@lru_cache(maxsize=32)  # a setting's training bank and its polish's
def stratum_bank(seed: int, noise: str, pool: int, keep: int, n: int, d: int) -> tuple[Tasks, float]:
    """The `keep` sequences with the largest tail score among `pool` fresh ones of the
    config's own "bank" stream (apart from its training, validation and tail streams),
    and the smallest of their scores: a sample of the sequences above that score."""
    bank = tail_tasks(data_key(seed, noise, "bank"), noise, pool, keep, n, d)
    return bank, float(tail_score(bank)[-1])


def stratified_batch(key: Array, fresh: Tasks, weight: Array, bank: Tasks, strata: Array) -> tuple[Tasks, Array]:
    """A batch of B whose first m = round(fraction·B) sequences are drawn (with
    replacement) from the bank of the top stratum, whose probability is p, and whose
    other sequences are the fresh ones below the stratum's score (a fresh one above it
    gets weight 0). With weights p·B/m on the first part and (1 − p)·B/(fresh below) on
    the rest, the weighted mean of any per-sequence loss is an unbiased estimate of
    its mean over all sequences, E = (1 − p)·E[· | below] + p·E[· | above], and every
    weight is bounded. `strata` = (p, fraction, threshold); p = 0 gives the fresh
    batch with weight 1 (then its `weight` is kept)."""
    p, fraction, threshold = strata[0], strata[1], strata[2]
    size = fresh.batch
    m = jnp.round(fraction * size)
    banked = jnp.arange(size) < m
    pick = jax.tree.map(lambda a: a[jax.random.randint(jax.random.fold_in(key, 7), (size,), 0, bank.batch)], bank)
    t = jax.tree.map(lambda a, b: jnp.where(banked.reshape((-1,) + (1,) * (a.ndim - 1)), b.astype(a.dtype), a),
                     fresh, pick)
    below = ~banked & (tail_score(fresh) < threshold)
    mass = jnp.sum(jnp.where(below, weight, 0))
    stratified = jnp.where(banked, p * size / jnp.maximum(m, 1), (1 - p) * size * weight / jnp.where(mass > 0, mass, 1))
    return t, jnp.where(p > 0, jnp.where(banked | below, stratified, 0.0), weight).astype(weight.dtype)
