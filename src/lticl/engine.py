"""The training step engine: optax, many steps per compiled call, models in parallel.

    state = init_state(config)                        # K seeds stacked on a leading axis
    state, losses = run_steps(config, state, steps)   # lax.scan inside, vmap over models

The default objective is the exact query-averaged loss ½‖w^L − w‖² (docs/math.md §5);
the paper's sampled-query loss ½(ŷ − y_query)² is an option. Either is a function of
w^L, and its gradient comes from `kernel` (by hand); `reference=True` takes it by
autodiff through `model.weights` instead, the path tests compare against.

Never diverging silently, per model inside the vmapped batch:
- a step whose loss or gradient is non-finite, whose loss exceeds `explode` × d/2, or
  whose new parameters are non-finite is skipped (counted): with heavy-tailed data
  one sequence can make a whole batch non-finite, and the next batch is fine;
- `patience` failed steps in a row mean divergence: that model goes back to its last
  good state (the last parameters whose batch loss passed the check) with its
  learning rate scaled by `lr_backoff`, and the recovery is counted;
- a seed with `max_recoveries` recoveries has failed and is never selected.
The data stream goes on, so a model does not meet the same batch again.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from . import kernel
from .devices import placement
from .metrics import sequence_loss
from .inits import gd_init, init_params, precondition_init
from .model import weights
from .params import Params
from .noise import as_noise
from .products import einsum
from .tasks import Tasks, data_key, draw_lengths, mixture_tasks, sigma_key, stratified_batch, stratum_bank
from .theory import best_one_step_size

if TYPE_CHECKING:
    from .config import TrainConfig

MAX_ATOMS = 8


def noise_atoms(noise) -> tuple[np.ndarray, int]:
    """A training noise setting as data: its `intervals` as rows [lo, hi] of a
    (MAX_ATOMS, 2) array (padded with the last row) and how many rows are used."""
    noise = as_noise(noise)
    rows = list(noise.intervals())
    if len(rows) > MAX_ATOMS:
        raise ValueError(f"training draws σ from at most {MAX_ATOMS} intervals or values, not {noise.spec!r}")
    atoms = np.array(rows + [rows[-1]] * (MAX_ATOMS - len(rows)), np.float32)
    return atoms, len(rows)


def _draw_sigma(key: Array, atoms: Array, count: Array, batch: int) -> Array:
    k_atom, k_u = jax.random.split(key)
    i = jnp.minimum((jax.random.uniform(k_atom, (batch,)) * count).astype(jnp.int32), count - 1)
    lo, hi = atoms[i, 0], atoms[i, 1]
    return lo + (hi - lo) * jax.random.uniform(k_u, (batch,))


class TrainState(NamedTuple):
    """One model's state; under `init_state` every leaf has a leading seed axis."""

    params: Params
    opt_state: optax.OptState
    step: Array  # int: steps taken (the data stream's position)
    lr_scale: Array  # multiplies the schedule; lowered at each recovery
    recoveries: Array  # int: rollbacks to the good state
    skipped: Array  # int: failed steps not taken
    streak: Array  # int: failed steps in a row
    key: Array  # the seed's training data stream
    atoms: Array  # the training noise setting (noise_atoms), (MAX_ATOMS, 2)
    count: Array  # int: how many rows of atoms are used
    sampling: Array  # (wide_fraction, wide_scale, spike_fraction, spike_scale) (tasks.mixture_tasks)
    good_params: Params  # the last parameters whose batch loss passed the check
    good_opt_state: optax.OptState
    bank: Tasks  # the top stratum's sequences (stratified_batch); one zero sequence where off
    strata: Array  # (p, fraction, threshold): the stratum's probability, its share of a batch, its score


def batch_data(state: TrainState) -> tuple:
    """What a state's training batches are drawn from, after the key: the arguments
    of `objective(config)` and `loss_and_grad(config)` after (params, key)."""
    return state.atoms, state.count, state.sampling, state.bank, state.strata


def _strata(config: TrainConfig) -> tuple[Tasks, Array]:
    if config.stratum and config.stratum_fraction:
        bank, threshold = stratum_bank(config.seed, config.noise, config.stratum_pool, config.stratum, config.n,
                                       config.d)
        strata = [config.stratum / config.stratum_pool, config.stratum_fraction, threshold]
    else:  # every sequence is below an infinite threshold, weighted 1
        size = max(config.stratum, 1)
        bank = Tasks(jnp.zeros((size, config.n, config.d)), jnp.zeros((size, config.n)), jnp.zeros((size, config.d)),
                     jnp.zeros(size), jnp.zeros((size, config.d)), jnp.zeros(size))
        strata = [0.0, 0.0, np.inf]
    return bank, jnp.asarray(strata, jnp.float32)


def concat(trees):
    """Pytrees (states, Params) joined along their leading model axis."""
    return jax.tree.map(lambda *a: jnp.concatenate(a), *trees)


def schedule(config: TrainConfig) -> optax.Schedule:
    """The learning rate at each update the optimiser has taken: warmup, cosine decay."""
    return optax.warmup_cosine_decay_schedule(
        0.0, config.lr, min(config.warmup, config.steps - 1), config.steps, config.lr * config.final_lr_fraction
    )


def optimizer(config: TrainConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(config.clip), optax.adam(schedule(config)))


def initial_params(config: TrainConfig, key: Array) -> Params:
    """One model's start, as config.init says. GD and preconditioned starts are built
    for one context length: the largest of a plain model's range (its smallest
    steps), the smallest of a normalised model's, whose parameters then carry a factor
    √n (Params.normalised), so that the start is stable at every length trained on."""
    if config.init == "random":
        params = init_params(key, config.variant, config.layers, config.d, config.heads, config.init_scale)
        return replace(params, normalised=config.normalised)
    n, eta = _start_step(config)
    if config.init == "precondition":
        params = precondition_init(key, config.variant, config.layers, config.d, n, config.heads, eta,
                                   scale=config.init_scale)
    else:
        params = gd_init(key, config.variant, config.layers, config.d, config.heads, eta, config.init_scale)
    return _normalised(config, params, n)


def _start_step(config: TrainConfig) -> tuple[int, float]:
    """(n, η): the context length a start is built for, and the best one-step size there."""
    n = config.context_lengths[0] if config.normalised else config.n
    return n, best_one_step_size(n, config.d, as_noise(config.noise).second_moment)


def _normalised(config: TrainConfig, params: Params, n: int) -> Params:
    """A start built for n points as the model config.normalised says (parameters × √n)."""
    if not config.normalised:
        return params
    return replace(params, p=params.p * n**0.5, q=params.q * n**0.5, normalised=True)


# A layer added on top of a trained model (`grown`) is a GD step of this fraction of
# the best single step: small enough to keep the model where it was, stable at once.
# A layer grown below the last one is a copy of the layer under it with P and Q scaled
# by this fraction (its ω's by its square).
GROWN_STEP = 0.1


def grown(config: TrainConfig, stacked: Params) -> Params:
    """K stacked (config.layers − 1)-layer models grown to config.layers layers.
    By default one GD layer is added on top (GROWN_STEP of the best one-step size,
    perturbed as config.init_scale says): a start that predicts almost what the
    shallower models did. With config.grow_below, a copy of the layer under the last
    one, P and Q scaled by GROWN_STEP, is inserted below the last layer instead: where
    the last layer is a big GD step (the preconditioned start's), a layer on top of it
    stays idle, and one below can precondition (docs/log/2026-12-04-screen.md)."""
    if config.grow_below:
        if stacked.p.shape[1] < 2:
            raise ValueError("grow_below needs a parent of at least 2 layers (a layer under its last one to copy)")
        insert = lambda a: jnp.concatenate([a[:, :-1], GROWN_STEP * a[:, -2:-1], a[:, -1:]], axis=1)
        return replace(stacked, p=insert(stacked.p), q=insert(stacked.q))
    n, eta = _start_step(config)
    top = gd_init(jax.random.key(config.seed), config.variant, 1, config.d, config.heads, GROWN_STEP * eta,
                  config.init_scale, stacked.p.dtype)
    top, k = _normalised(config, top, n), stacked.p.shape[0]
    add = lambda a, b: jnp.concatenate([a, jnp.broadcast_to(b.astype(a.dtype), (k, *b.shape))], axis=1)
    return replace(stacked, p=add(stacked.p, top.p), q=add(stacked.q, top.q))


def init_state(config: TrainConfig, start: Params | None = None) -> TrainState:
    """K = config.seeds fresh states stacked on a leading axis; seed k (first_seed …
    first_seed+K−1) uses fold_in(key(seed), k) for its initialisation and its own
    data stream. `start`: K stacked models to begin from in place of config.init
    (a continuation), with a fresh optimiser state."""
    opt = optimizer(config)
    train_key = data_key(config.seed, config.noise, "train")
    atoms, count = noise_atoms(config.noise)
    bank, strata = _strata(config)
    seeds = jnp.arange(config.first_seed, config.first_seed + config.seeds)
    if start is not None:
        like = jax.eval_shape(lambda: initial_params(config, jax.random.key(0)))
        if jax.tree.structure(start) != jax.tree.structure(like) or any(
                a.shape != (config.seeds, *b.shape) for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(like))):
            raise ValueError(f"a start of {config.seeds} {config.variant}-{config.layers} models (d={config.d}) "
                             f"was expected, got {start.variant} parameters of shapes "
                             f"{[a.shape for a in jax.tree.leaves(start)]}")
        start = jax.tree.map(lambda a, b: jnp.asarray(a, b.dtype), start, like)

    def one(k, begin=None):
        params = initial_params(config, jax.random.fold_in(jax.random.key(config.seed), k)) if begin is None else begin
        zero, opt_state = jnp.zeros((), jnp.int32), opt.init(params)
        sampling = [config.wide_fraction, config.wide_scale, config.spike_fraction, config.spike_scale]
        return TrainState(params, opt_state, zero, jnp.ones(()), zero, zero, zero,
                          jax.random.fold_in(train_key, k), jnp.asarray(atoms), jnp.asarray(count, jnp.int32),
                          jnp.asarray(sampling, jnp.float32), params, opt_state, bank, strata)

    return jax.vmap(one)(seeds) if start is None else jax.vmap(one)(seeds, start)


def training_batch(config: TrainConfig, key: Array, atoms: Array, count: Array, sampling: Array, bank: Tasks,
                   strata: Array):
    """One training batch, the weights that keep its mean loss unbiased, and the
    sequences' context lengths (None where every sequence has config.n points)."""
    sigma = _draw_sigma(sigma_key(key), atoms, count, config.batch)
    # config is the program: each importance sampling is compiled in only where it is on
    wide = (sampling[0], sampling[1]) if config.wide_fraction else None
    spike = (sampling[2], sampling[3]) if config.spike_fraction else None
    t, weight = mixture_tasks(key, sigma, config.n, config.d, wide, spike)
    lengths = draw_lengths(key, config.batch, *config.context_lengths) if config.n_min else None
    return (*(stratified_batch(key, t, weight, bank, strata) if config.stratum else (t, weight)), lengths)


def _loss_of_w(config: TrainConfig, t, weight: Array) -> Callable[[Array], Array]:
    """The batch's mean loss as a function of the models' w^L (B, d)."""
    if config.objective == "query_averaged":
        return lambda w: jnp.mean(weight * sequence_loss(w, t.w))
    return lambda w: 0.5 * jnp.mean(weight * (einsum("bd,bd->b", w, t.x_query) - t.y_query) ** 2)


def objective(config: TrainConfig) -> Callable[..., Array]:
    """(params, key, *batch_data(state)) -> the weighted mean loss on one training
    batch (importance-weighted where the state's wide or spike fraction is above 0,
    stratified where its stratum is on)."""

    def loss(params: Params, key: Array, *data) -> Array:
        t, weight, lengths = training_batch(config, key, *data)
        return _loss_of_w(config, t, weight)(weights(params, t.x, t.y, lengths))

    return loss


def loss_and_grad(config: TrainConfig, reference: bool = False):
    """(params, key, *batch_data(state)) -> (the objective's loss, its gradient): by
    the hand-derived backward pass of `kernel`, or with `reference`, by autodiff
    through `model.weights`. They agree to rounding (tests/test_kernel.py)."""
    if reference:
        return jax.value_and_grad(objective(config))

    def fast(params: Params, key: Array, *data):
        t, weight, lengths = training_batch(config, key, *data)
        return kernel.value_and_grad(params, t.x, t.y, _loss_of_w(config, t, weight), lengths)

    return fast


def _finite(tree) -> Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def run_steps(config: TrainConfig, state: TrainState, steps: int, reference: bool = False
              ) -> tuple[TrainState, Array]:
    """`steps` steps for every model on the leading axis (seeds, and configs sharing
    config.program) in one compiled call: (new state, losses (K, steps)), the loss
    nan where a step failed. `reference`: the gradient by autodiff (loss_and_grad)."""
    return _run_steps(config.program, state, steps, reference)


@partial(jax.jit, static_argnames=("config", "steps", "reference"))
def _run_steps(config: TrainConfig, state: TrainState, steps: int, reference: bool) -> tuple[TrainState, Array]:
    opt = optimizer(config)
    value_and_grad = loss_and_grad(config, reference)
    where = lambda cond, a, b: jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)

    def step(s: TrainState, _):
        loss, grads = value_and_grad(s.params, jax.random.fold_in(s.key, s.step), *batch_data(s))
        # The check is of the current parameters: passing it makes them the good state.
        checked = jnp.isfinite(loss) & (loss < config.explode * config.d / 2) & _finite(grads)
        good_params, good_opt = where(checked, (s.params, s.opt_state), (s.good_params, s.good_opt_state))
        updates, opt_state = opt.update(grads, s.opt_state, s.params)
        params = optax.apply_updates(s.params, jax.tree.map(lambda u: s.lr_scale * u, updates))
        ok = checked & _finite(params)
        streak = jnp.where(ok, 0, s.streak + 1)
        rollback = streak >= config.patience
        stay = where(rollback, (good_params, good_opt), (s.params, s.opt_state))
        params, opt_state = where(ok, (params, opt_state), stay)
        s = s._replace(
            params=params,
            opt_state=opt_state,
            step=s.step + 1,
            lr_scale=jnp.where(rollback, s.lr_scale * config.lr_backoff, s.lr_scale),
            recoveries=s.recoveries + rollback.astype(jnp.int32),
            skipped=s.skipped + (~ok).astype(jnp.int32),
            streak=jnp.where(rollback, 0, streak),
            good_params=good_params,
            good_opt_state=good_opt,
        )
        return s, jnp.where(ok, loss, jnp.nan)

    return jax.vmap(lambda s: jax.lax.scan(step, s, None, length=steps))(state)


# One thread that compiles a group's step loop while the group before it trains: XLA
# compiles on one core, and a step loop's host work leaves room beside it.
_COMPILER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lticl-compile")
_ahead: dict[tuple, Future] = {}


def _first_chunk(configs: list[TrainConfig]) -> tuple:
    """What the first compiled call of a group trained from step 0 depends on."""
    c = configs[0]
    return c.program, min(c.chunk, c.steps), sum(x.seeds for x in configs)


def compile_ahead(configs: list[TrainConfig]) -> Future:
    """Start compiling, on the compile thread, the first chunk of the step loop that
    `train.train_group(configs)` runs from step 0 (the models spread as `devices.spread`
    places them), once per process: that call then finds it compiled."""
    name = _first_chunk(configs)
    if name not in _ahead:
        _ahead[name] = _COMPILER.submit(_compile_first_chunk, configs)
    return _ahead[name]


def compiled_ahead(configs: list[TrainConfig]) -> None:
    """Wait for the first chunk of the group's step loop where it is being compiled
    ahead (`compile_ahead`), so that it is not compiled twice."""
    ahead = _ahead.get(_first_chunk(configs))
    if ahead is not None:
        ahead.exception()  # waits; where it failed, the call compiles it itself and reports what is wrong


def _compile_first_chunk(configs: list[TrainConfig]) -> None:
    # the stratum's bank has its shape whether it is drawn or not: nothing is drawn here
    shapes = [jax.eval_shape(lambda c=c: init_state(replace(c, stratum_fraction=0.0))) for c in configs]
    program, steps, k = _first_chunk(configs)
    pad, sharding = placement(k)
    state = jax.tree.map(lambda *a: jax.ShapeDtypeStruct((k + pad, *a[0].shape[1:]), a[0].dtype, sharding=sharding),
                         *shapes)
    _run_steps.lower(program, state, steps, False).compile()


def final_params(state: TrainState) -> Params:
    """Each model's parameters to keep: a model that ends inside a streak of failed
    steps returns its last checked state."""
    unchecked = np.asarray(state.streak) > 0
    return jax.tree.map(lambda g, p: jnp.where(unchecked.reshape((-1,) + (1,) * (p.ndim - 1)), g, p),
                        state.good_params, state.params)
