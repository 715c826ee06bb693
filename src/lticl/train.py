"""Training linear transformers: optax, many steps per compiled call, seeds in parallel.

    state  = init_state(config)            # K seeds stacked on a leading axis
    state, losses = run_steps(config, state, steps)   # lax.scan inside, vmap over seeds
    result = train(config)                 # the whole loop, best seed on validation data

The default objective is the exact query-averaged loss ½‖w^L − w‖² (SPEC §4); the
paper's sampled-query loss ½(ŷ − y_query)² is an option.

Never diverging silently, per model inside the vmapped batch:
- a step whose loss or gradient is non-finite, whose loss exceeds `explode` × d/2, or
  whose new parameters are non-finite is skipped (counted): with heavy-tailed data
  one sequence can make a whole batch non-finite, and the next batch is fine;
- `patience` failed steps in a row mean divergence: that model goes back to its last
  good state — the last parameters whose batch loss passed the check — with its
  learning rate scaled by `lr_backoff`, and the recovery is counted;
- a seed with `max_recoveries` recoveries has failed and is never selected; when all
  seeds have failed the run stops with an error.
The data stream goes on, so a model does not meet the same batch again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from .metrics import Evaluation, evaluate, sequence_loss
from .model import Params, canonical_variant, gd_init, init_params, predict, weights
from .noise import as_noise
from .tasks import data_key, positive_int, sample_tasks
from .theory import best_one_step_size

OBJECTIVES = ("query_averaged", "sampled_query")
INITS = ("gd", "random")


@dataclass(frozen=True)
class TrainConfig:
    variant: str
    layers: int
    noise: str = "uniform:5"
    heads: int = 1
    d: int = 10
    n: int = 20
    steps: int = 2000
    batch: int = 2048
    lr: float = 3e-3  # peak of warmup + cosine decay
    warmup: int = 100
    final_lr_fraction: float = 0.01
    clip: float = 1.0  # global gradient norm
    init: str = "gd"  # "gd": GD layers plus noise; "random": N(0, init_scale²)
    # 0.02 made FULL-7's initial model overflow float32 on 307 of 200k uniform:7
    # sequences (every batch then fails); at 1e-3 every variant stays finite there.
    init_scale: float = 1e-3
    objective: str = "query_averaged"
    seed: int = 0
    seeds: int = 1  # trained in parallel; the best on validation data is kept
    chunk: int = 100  # steps per compiled call (and per progress report)
    lr_backoff: float = 0.5
    # A batch loss above explode × d/2 (d/2: the loss of predicting 0) is a failed step.
    explode: float = 100.0
    patience: int = 10  # failed steps in a row that count as divergence
    max_recoveries: int = 20  # a seed rolled back this often has failed
    validation_sequences: int = 20_000
    evaluation_sequences: int = 100_000

    def __post_init__(self):
        object.__setattr__(self, "variant", canonical_variant(self.variant))
        object.__setattr__(self, "noise", as_noise(self.noise).spec)
        for name in ("layers", "heads", "d", "n", "steps", "batch", "seeds", "chunk", "patience", "max_recoveries",
                     "validation_sequences", "evaluation_sequences"):
            object.__setattr__(self, name, positive_int(getattr(self, name), name))
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; expected one of {', '.join(OBJECTIVES)}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; expected one of {', '.join(INITS)}")
        for name in ("lr", "clip", "explode"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.lr_backoff < 1:
            raise ValueError(f"lr_backoff must be in (0, 1), got {self.lr_backoff}")
        if self.warmup < 0 or not 0 <= self.final_lr_fraction <= 1:
            raise ValueError("warmup must be >= 0 and final_lr_fraction in [0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)


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
    good_params: Params  # the last parameters whose batch loss passed the check
    good_opt_state: optax.OptState


def optimizer(config: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.lr, min(config.warmup, config.steps - 1), config.steps, config.lr * config.final_lr_fraction
    )
    return optax.chain(optax.clip_by_global_norm(config.clip), optax.adam(schedule))


def _init_params(config: TrainConfig, key: Array) -> Params:
    if config.init == "random":
        return init_params(key, config.variant, config.layers, config.d, config.heads, config.init_scale)
    eta = best_one_step_size(config.n, config.d, _second_moment(config))
    return gd_init(key, config.variant, config.layers, config.d, config.heads, eta, config.init_scale)


def _second_moment(config: TrainConfig) -> float:
    return getattr(as_noise(config.noise), "second_moment", 0.0)


def init_state(config: TrainConfig) -> TrainState:
    """K = config.seeds fresh states stacked on a leading axis; seed k uses
    fold_in(key(seed), k) for its initialisation and its own data stream."""
    opt = optimizer(config)
    train_key = data_key(config.seed, config.noise, "train")

    def one(k):
        params = _init_params(config, jax.random.fold_in(jax.random.key(config.seed), k))
        zero, opt_state = jnp.zeros((), jnp.int32), opt.init(params)
        return TrainState(params, opt_state, zero, jnp.ones(()), zero, zero, zero,
                          jax.random.fold_in(train_key, k), params, opt_state)

    return jax.vmap(one)(jnp.arange(config.seeds))


def objective(config: TrainConfig) -> Callable[[Params, Array], Array]:
    """(params, key) -> mean loss on one freshly drawn batch."""
    noise = as_noise(config.noise)

    def loss(params: Params, key: Array) -> Array:
        t = sample_tasks(key, noise, config.batch, config.n, config.d)
        if config.objective == "query_averaged":
            return jnp.mean(sequence_loss(weights(params, t.x, t.y), t.w))
        return 0.5 * jnp.mean((predict(params, t.x, t.y, t.x_query) - t.y_query) ** 2)

    return loss


def _finite(tree) -> Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


@partial(jax.jit, static_argnames=("config", "steps"))
def run_steps(config: TrainConfig, state: TrainState, steps: int) -> tuple[TrainState, Array]:
    """`steps` steps for every seed in one compiled call: (new state, losses (K, steps)),
    the loss nan where a step failed."""
    opt = optimizer(config)
    loss_fn = objective(config)
    where = lambda cond, a, b: jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)

    def step(s: TrainState, _):
        loss, grads = jax.value_and_grad(loss_fn)(s.params, jax.random.fold_in(s.key, s.step))
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
        s = TrainState(
            params,
            opt_state,
            s.step + 1,
            jnp.where(rollback, s.lr_scale * config.lr_backoff, s.lr_scale),
            s.recoveries + rollback.astype(jnp.int32),
            s.skipped + (~ok).astype(jnp.int32),
            jnp.where(rollback, 0, streak),
            s.key,
            good_params,
            good_opt,
        )
        return s, jnp.where(ok, loss, jnp.nan)

    return jax.vmap(lambda s: jax.lax.scan(step, s, None, length=steps))(state)


class TrainResult(NamedTuple):
    config: TrainConfig
    params: Params  # the best seed
    seed: int  # its index among the K seeds
    all_params: Params  # every seed, leading axis K
    losses: np.ndarray  # (K, steps) training loss, nan where a step failed
    recoveries: np.ndarray  # (K,)
    skipped: np.ndarray  # (K,)
    validation: list[Evaluation]  # per seed, adjusted loss on validation sequences
    evaluation: Evaluation  # the best seed's adjusted loss on fresh evaluation sequences
    oracle_loss: Evaluation


def select_best(validation: list[Evaluation], failed=None) -> int:
    """The seed with the lowest validation mean among those that did not fail in
    training and have no non-finite validation loss. Raises if there is none."""
    failed = np.zeros(len(validation), bool) if failed is None else np.asarray(failed)
    usable = [i for i, v in enumerate(validation) if not failed[i] and v.nonfinite == 0 and np.isfinite(v.mean)]
    if not usable:
        raise RuntimeError("no seed is usable (each failed in training or has non-finite validation losses)")
    return min(usable, key=lambda i: validation[i].mean)


def train(config: TrainConfig, progress: Callable[[int, np.ndarray], None] | None = None) -> TrainResult:
    """Train config.seeds models in parallel, keep the best on validation sequences
    and evaluate it on separate fresh sequences. `progress(step, last_losses)` is
    called after every compiled chunk."""
    state = init_state(config)
    losses = []
    done = 0
    while done < config.steps:
        steps = min(config.chunk, config.steps - done)
        state, chunk_losses = run_steps(config, state, steps)
        losses.append(np.asarray(chunk_losses))
        done += steps
        if (np.asarray(state.recoveries) >= config.max_recoveries).all():
            raise RuntimeError(
                f"training failed at step {done}: every seed was rolled back {config.max_recoveries} times "
                f"({config.variant}-{config.layers}, {config.noise}, lr {config.lr}); lower the learning rate or "
                f"init_scale, or check the initial model's loss for non-finite sequences"
            )
        if progress is not None:
            progress(done, losses[-1][:, -1])
    # A run that ends inside a streak of failed steps returns its last checked state.
    unchecked = state.streak > 0
    all_params = jax.tree.map(lambda g, p: jnp.where(unchecked.reshape((-1,) + (1,) * (p.ndim - 1)), g, p),
                              state.good_params, state.params)
    seeds = [jax.tree.map(lambda a: a[k], all_params) for k in range(config.seeds)]
    val_key = data_key(config.seed, config.noise, "validation")
    validation = [
        evaluate({"m": partial(weights, p)}, val_key, config.noise, config.validation_sequences, config.n, config.d)["m"]
        for p in seeds
    ]
    best = select_best(validation, np.asarray(state.recoveries) >= config.max_recoveries)
    final = evaluate({"m": partial(weights, seeds[best])}, data_key(config.seed, config.noise, "evaluation"),
                     config.noise, config.evaluation_sequences, config.n, config.d)
    return TrainResult(config, seeds[best], best, all_params, np.concatenate(losses, axis=1),
                       np.asarray(state.recoveries), np.asarray(state.skipped), validation, final["m"],
                       final["oracle_loss"])

