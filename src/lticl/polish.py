"""The polish: after Adam, L-BFGS on a fixed sample of the stratified objective.

    params = polished(config, params)   # K stacked models, config.polish > 0

Adam's steps leave a 3-layer model at high noise sharp along the rarest sequences: it
blows up on one sequence in a million, past or between the stratum's sequences it met,
although that sequence alone weighs more in the objective than what the sharpness
gains (docs/training.md). A deterministic optimiser on a fixed sample of the same
unbiased objective takes those sequences down, with a line search where Adam's steps
of fixed size jump across them. FULL does the same along directions of its own, which
no score of the data ranks and its own loss does (`polish_score = "own"`).

The sample is the stratified objective's two parts at their probabilities: the
`config.stratum` sequences of largest tail score among `config.polish_pool` fresh ones
of the bank stream (probability p = stratum / polish_pool, each weighted p / stratum)
and `config.polish_sequences` fresh ones of the "polish" stream, those below the
bank's score weighted (1 − p) / (their number). With `polish_score = "own"` the bank
is the model's own TAIL_KEEP worst of the pool and "below" is by the model's loss, a
fixed score while the model is polished (`own_sample`). Its weighted mean is an unbiased
estimate of the mean loss over all sequences, as a stratified batch's is
(`tasks.stratified_batch`), and it is fixed: the polish is a pure function of the
model and the config.
"""

from __future__ import annotations

from concurrent.futures import Future
from functools import lru_cache
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from . import kernel
from .metrics import sequence_loss
from .params import Params
from .selection import TAIL_KEEP, adjusted_losses, in_background, model_losses, own_worst, tail_limit
from .tasks import Tasks, data_key, stack_chunks, stratum_bank, tail_score, task_chunks

if TYPE_CHECKING:
    from .config import TrainConfig


def _weighted(bank: Tasks, fresh: Tasks, below: np.ndarray, p: float) -> tuple[Tasks, Array]:
    """The bank at probability p and the fresh sequences below it at 1 − p, each part
    weighted evenly: a sample whose weighted mean is unbiased for the mean loss."""
    fresh = jax.tree.map(lambda a: a[below], fresh)
    weight = np.concatenate([np.full(bank.batch, p / bank.batch), np.full(fresh.batch, (1 - p) / fresh.batch)])
    return Tasks(*(jnp.concatenate(parts) for parts in zip(bank, fresh))), jnp.asarray(weight, jnp.float32)


def _fresh(seed: int, noise: str, sequences: int, n: int, d: int) -> Tasks:
    return stack_chunks(task_chunks(data_key(seed, noise, "polish"), noise, sequences, n, d))


def polish_sample(seed: int, noise: str, pool: int, keep: int, sequences: int, n: int, d: int) -> tuple[Tasks, Array]:
    """The polish's fixed sample, ranked by the tail score, and each sequence's weight
    (the weights sum to 1)."""
    bank, threshold = stratum_bank(seed, noise, pool, keep, n, d)
    fresh = _fresh(seed, noise, sequences, n, d)
    return _weighted(bank, fresh, np.asarray(tail_score(fresh)) < threshold, keep / pool)


def _bank_size(config: TrainConfig) -> int:
    return TAIL_KEEP if config.polish_score == "own" else config.stratum  # own_worst's keep: the pool holds 2×


def own_sample(config: TrainConfig, params: Params, fresh: Tasks) -> tuple[Tasks, Array]:
    """The sample ranked by one model's own loss: its TAIL_KEEP worst of polish_pool
    sequences of the bank stream (`selection.own_worst`), and the fresh ones on which
    its loss is below theirs. The model is fixed while it is polished, so its loss is a
    fixed score, and the sample as unbiased as the tail score's. A non-finite loss ranks
    highest, as in `own_worst`. None where no fresh sequence lies below the bank (a
    model non-finite on all of them): there is nothing to weigh the bank against."""
    stacked = jax.tree.map(lambda a: a[None], params)
    bank = jax.tree.map(lambda a: a[0], own_worst(stacked, data_key(config.seed, config.noise, "bank"), config.noise,
                                                  config.polish_pool, config.n))
    score = lambda tasks: np.nan_to_num(np.asarray(model_losses(stacked, tasks)[0], np.float64), nan=np.inf)
    below = score(fresh) < score(bank).min()
    return _weighted(bank, fresh, below, bank.batch / config.polish_pool) if below.any() else None


@lru_cache(maxsize=16)
def _prefetched(*args) -> Future:
    return in_background(polish_sample, *args)


@lru_cache(maxsize=16)
def _prefetched_fresh(*args) -> Future:
    return in_background(_fresh, *args)


def prefetch_polish_sample(config: TrainConfig) -> Future | None:
    """Start drawing config's polish sample in the background, once per process (the
    bank of a polish pool costs about as much as a tail set); None where it does not
    polish. `polished` waits for it."""
    if not config.polish:
        return None
    if config.polish_score == "own":  # the fresh part; each model ranks its own bank
        return _prefetched_fresh(config.seed, config.noise, config.polish_sequences, config.n, config.d)
    return _prefetched(config.seed, config.noise, config.polish_pool, config.stratum, config.polish_sequences,
                       config.n, config.d)


_PIECE = 512  # sequences per piece of the objective: the kernel's best batch (BENCHMARKS.md)


def _filled(sample: Tasks, weight: Array) -> tuple[Tasks, Array]:
    """The sample filled to a multiple of _PIECE sequences with sequences of zeros at
    weight 0, which add nothing to the objective or its gradient. Samples of about the
    same size then share one compiled program."""
    pad = -sample.batch % _PIECE
    fill = lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
    return jax.tree.map(fill, sample), fill(weight)


def _value_and_grad(params: Params, sample: Tasks, weight: Array) -> tuple[Array, Params]:
    """The weighted loss and its gradient by the training step's kernel (`lticl.kernel`),
    summed over pieces of _PIECE sequences (the last one `_filled`)."""
    params = jax.tree.map(lambda a: a.astype(sample.x.dtype), params)
    sample, weight = _filled(sample, weight)
    pieces = lambda a: a.reshape((-1, _PIECE) + a.shape[1:])

    def piece(args):
        t, wt = args
        return kernel.value_and_grad(params, t.x, t.y, lambda w_last: jnp.sum(wt * sequence_loss(w_last, t.w)))

    losses, grads = jax.lax.map(piece, (jax.tree.map(pieces, sample), pieces(weight)))
    return jnp.sum(losses), jax.tree.map(lambda g: jnp.sum(g, axis=0), grads)


@jax.custom_vjp
def sample_objective(params: Params, sample: Tasks, weight: Array) -> Array:
    """The weighted mean query-averaged loss of one model on the polish's sample (in
    the sample's dtype: the line search may hand in wider parameters). Its gradient
    is the kernel's, by hand (the value alone compiles to the forward pass)."""
    return _value_and_grad(params, sample, weight)[0]


def _objective_forward(params, sample, weight):
    value, grads = _value_and_grad(params, sample, weight)
    return value, (grads, params)


def _objective_backward(residuals, cotangent):
    grads, params = residuals
    return jax.tree.map(lambda g, p: (cotangent * g).astype(p.dtype), grads, params), None, None


sample_objective.defvjp(_objective_forward, _objective_backward)


_LBFGS = optax.lbfgs()


def _lbfgs_step(params: Params, state, sample: Tasks, weight: Array):
    value_fn = lambda p: sample_objective(p, sample, weight)
    value, grad = optax.value_and_grad_from_state(value_fn)(params, state=state)
    updates, state = _LBFGS.update(grad, state, params, value=value, grad=grad, value_fn=value_fn)
    return optax.apply_updates(params, updates), state


# One model at a time: under vmap the line search's loops and branches run for every
# model at each step, about 3 times slower for one model.
_lbfgs_step = jax.jit(_lbfgs_step)
# Outside jit the objective runs op by op (its filling, its map over pieces).
_objective = jax.jit(sample_objective)


def polished(config: TrainConfig, stacked: Params) -> Params:
    """K stacked models after config.polish L-BFGS iterations each (optax's, with its
    zoom line search) on the polish's sample, where the model has a heavy tail on the
    sample's bank (an adjusted loss above `selection.tail_limit`); the others, which
    the polish is not for, keep their start. A model whose objective on the sample ends
    non-finite or no lower than it began keeps its start too (and a run keeps Adam's
    model where validation prefers it: `train`). Where no model has a heavy tail there,
    `stacked` itself comes back."""
    if not config.polish:
        return stacked
    drawn = prefetch_polish_sample(config).result()
    models, changed = [], False
    for k in range(jax.tree.leaves(stacked)[0].shape[0]):
        start = jax.tree.map(lambda a: a[k], stacked)
        picked = own_sample(config, start, drawn) if config.polish_score == "own" else drawn
        if picked is None:  # non-finite everywhere: the polish is not for it
            models.append(start)
            continue
        bank = jax.tree.map(lambda a: a[:_bank_size(config)], picked[0])
        sample, weight = _filled(*picked)
        worst = float(jnp.max(adjusted_losses(jax.tree.map(lambda a: a[None], start), bank)[0]))
        params = start
        if not worst <= tail_limit(config.d):  # nan: an overflow, a tail too
            state = _LBFGS.init(params)
            for _ in range(config.polish):
                params, state = _lbfgs_step(params, state, sample, weight)
            before, after = (float(_objective(m, sample, weight)) for m in (start, params))
            if not (np.isfinite(after) and after < before):
                params = start
            changed = changed or params is not start
        models.append(params)
    return jax.tree.map(lambda *a: jnp.stack(a), *models) if changed else stacked
