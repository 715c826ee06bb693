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

import os
from dataclasses import asdict, dataclass, replace
from functools import cached_property, lru_cache, partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .metrics import Evaluation, oracle_loss, per_sequence, sequence_loss
from .model import Params, _final_weights, canonical_variant, gd_init, init_params, precondition_init, predict
from .noise import Categorical, Fixed, Uniform, as_noise
from .tasks import Tasks, data_key, mixture_tasks, positive_int, sigma_key, tail_tasks
from .theory import best_one_step_size

OBJECTIVES = ("query_averaged", "sampled_query")
INITS = ("gd", "precondition", "random")


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
    # "gd": GD layers plus noise; "precondition": preconditioning layers, then the big
    # GD step (model.precondition_init); "random": N(0, init_scale²)
    init: str = "gd"
    # 0.02 made FULL-7's initial model overflow float32 on 307 of 200k uniform:7
    # sequences (every batch then fails); at 1e-3 every variant stays finite there.
    init_scale: float = 1e-3
    objective: str = "query_averaged"
    # Importance sampling of training batches: this fraction of each batch draws
    # w ~ N(0, wide_scale²·I), and the loss is reweighted to stay unbiased
    # (tasks.mixture_tasks), so the large-‖w‖ sequences where models blow up are seen.
    wide_fraction: float = 0.0
    wide_scale: float = 2.0
    seed: int = 0
    seeds: int = 1  # trained in parallel; the best on validation data is kept
    # Seeds first_seed … first_seed+seeds−1: a later run of new seeds for a trained
    # config (its seeds 0 … first_seed−1), with the same data, validation and tail sets.
    first_seed: int = 0
    chunk: int = 100  # steps per compiled call (and per progress report)
    lr_backoff: float = 0.5
    # A batch loss above explode × d/2 (d/2: the loss of predicting 0) is a failed step.
    # Kept high: skipping finite spikes (a threshold of 100) stopped DIAG-7 from
    # learning away from its heavy tail; with 1e8 it passes a 1.5e5 spike and ends at
    # 0.047 (docs/training.md).
    explode: float = 1e8
    patience: int = 10  # failed steps in a row that count as divergence
    max_recoveries: int = 20  # a seed rolled back this often has failed
    validation_sequences: int = 20_000
    evaluation_sequences: int = 100_000
    # Seeds are also checked on the TAIL_KEEP sequences most likely to blow a model
    # up among this many fresh ones (tasks.tail_tasks): a tail that a mean over the
    # validation set hides shows there, as it would on this many evaluation sequences.
    tail_sequences: int = 1_000_000

    def __post_init__(self):
        object.__setattr__(self, "variant", canonical_variant(self.variant))
        object.__setattr__(self, "noise", as_noise(self.noise).spec)
        noise_atoms(self.noise)  # raises for noise that training cannot draw
        for name in ("layers", "heads", "d", "n", "steps", "batch", "seeds", "chunk", "patience", "max_recoveries",
                     "validation_sequences", "evaluation_sequences", "tail_sequences"):
            object.__setattr__(self, name, positive_int(getattr(self, name), name))
        object.__setattr__(self, "first_seed", positive_int(self.first_seed, "first_seed", minimum=0))
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; expected one of {', '.join(OBJECTIVES)}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; expected one of {', '.join(INITS)}")
        for name in ("lr", "clip", "explode"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.wide_fraction < 1 or not self.wide_scale >= 1:
            raise ValueError(f"wide_fraction must be in [0, 1) and wide_scale >= 1, got {self.wide_fraction} "
                             f"and {self.wide_scale}")
        if not 0 < self.lr_backoff < 1:
            raise ValueError(f"lr_backoff must be in (0, 1), got {self.lr_backoff}")
        if self.warmup < 0 or not 0 <= self.final_lr_fraction <= 1:
            raise ValueError("warmup must be >= 0 and final_lr_fraction in [0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)

    @cached_property
    def program(self) -> "TrainConfig":
        """What the compiled training step depends on: the noise setting, the seeds and
        the importance sampling are data (in TrainState), so configs differing only
        there share one program and can train side by side in one vmapped call."""
        return replace(self, noise="fixed:0", seed=0, seeds=1, first_seed=0, init="gd", init_scale=1.0,
                       wide_fraction=0.0, wide_scale=1.0,
                       validation_sequences=1, evaluation_sequences=1, tail_sequences=1)


MAX_ATOMS = 8


def noise_atoms(noise) -> tuple[np.ndarray, int]:
    """A training noise setting as data: σ is drawn uniformly from one of `count`
    intervals [lo, hi] (rows of a (MAX_ATOMS, 2) array; a point is lo = hi)."""
    noise = as_noise(noise)
    if isinstance(noise, Fixed):
        rows = [(noise.sigma, noise.sigma)]
    elif isinstance(noise, Uniform):
        rows = [(0.0, noise.sigma_max)]
    elif isinstance(noise, Categorical) and len(noise.values) <= MAX_ATOMS:
        rows = [(v, v) for v in noise.values]
    else:
        raise ValueError(f"training supports fixed, uniform and categorical noise (at most {MAX_ATOMS} values), "
                         f"not {noise.spec!r}")
    atoms = np.array(rows + [rows[-1]] * (MAX_ATOMS - len(rows)), np.float32)
    return atoms, len(rows)


def _draw_sigma(key: Array, atoms: Array, count: Array, batch: int) -> Array:
    k_atom, k_u = jax.random.split(key)
    i = jnp.minimum((jax.random.uniform(k_atom, (batch,)) * count).astype(jnp.int32), count - 1)
    lo, hi = atoms[i, 0], atoms[i, 1]
    return lo + (hi - lo) * jax.random.uniform(k_u, (batch,))


def _laptop_init(variant: str, layers: int) -> str:
    """GD++ and DIAG up to 6 layers start preconditioning: from GD's start they settle
    in worse local optima on low-noise data (Table 1: 167 → 186 of 240 cells). FULL
    gains nothing from it and loses stability; DIAG-7 from it had a rollback in its
    `lticl train` run and missed 0.049 on uniform:5 (docs/training.md)."""
    return "precondition" if variant == "gdpp" or (variant == "diag" and layers <= 6) else "gd"


def _laptop_steps(variant: str, layers: int) -> int:
    """DIAG-7 takes 4,000 steps. At 2,000 it lands at 0.049–0.054 on uniform:5 (four
    seeds, 1,000,000 fresh sequences each), on the edge of the 0.049 target; at 4,000
    it gets 0.0483 (docs/training.md)."""
    return 4000 if variant == "diag" and layers == 7 else 2000


# Budgets: TrainConfig overrides (a callable value: of variant and layers). "laptop" is the measured recipe (docs/training.md);
# "paper" is the paper's own (SPEC §7: Adam 1e-4, batch 2048, 200k steps, best of 5).
BUDGETS: dict[str, dict] = {
    "smoke": dict(steps=60, batch=256, seeds=1, lr=1e-3, warmup=10, chunk=30, validation_sequences=2000,
                  evaluation_sequences=5000, tail_sequences=20_000),
    "laptop": dict(steps=_laptop_steps, batch=512, seeds=1, init=_laptop_init),
    "paper": dict(steps=200_000, batch=2048, lr=1e-4, warmup=0, final_lr_fraction=1.0, seeds=5,
                  objective="sampled_query", init="random", chunk=1000),
}


def budget_config(budget: str, variant: str, layers: int, noise: str = "uniform:5", **overrides) -> TrainConfig:
    """The TrainConfig of a named budget; keyword overrides (None ignored) win."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; expected one of {', '.join(BUDGETS)}")
    variant = canonical_variant(variant)
    fields = {k: v(variant, layers) if callable(v) else v for k, v in BUDGETS[budget].items()}
    fields |= {k: v for k, v in overrides.items() if v is not None}
    return TrainConfig(variant, layers, noise, **fields)


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
    wide: Array  # (wide_fraction, wide_scale): importance sampling of w (tasks.mixture_tasks)
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
    if config.init == "precondition":
        return precondition_init(key, config.variant, config.layers, config.d, config.n, config.heads, eta,
                                 scale=config.init_scale)
    return gd_init(key, config.variant, config.layers, config.d, config.heads, eta, config.init_scale)


def _second_moment(config: TrainConfig) -> float:
    return getattr(as_noise(config.noise), "second_moment", 0.0)


def init_state(config: TrainConfig) -> TrainState:
    """K = config.seeds fresh states stacked on a leading axis; seed k (first_seed …
    first_seed+K−1) uses fold_in(key(seed), k) for its initialisation and its own
    data stream."""
    opt = optimizer(config)
    train_key = data_key(config.seed, config.noise, "train")
    atoms, count = noise_atoms(config.noise)

    def one(k):
        params = _init_params(config, jax.random.fold_in(jax.random.key(config.seed), k))
        zero, opt_state = jnp.zeros((), jnp.int32), opt.init(params)
        return TrainState(params, opt_state, zero, jnp.ones(()), zero, zero, zero,
                          jax.random.fold_in(train_key, k), jnp.asarray(atoms), jnp.asarray(count, jnp.int32),
                          jnp.asarray([config.wide_fraction, config.wide_scale], jnp.float32), params, opt_state)

    return jax.vmap(one)(jnp.arange(config.first_seed, config.first_seed + config.seeds))


def objective(config: TrainConfig) -> Callable[[Params, Array, Array, Array, Array], Array]:
    """(params, key, atoms, count, wide) -> mean loss on one freshly drawn batch,
    importance-weighted where wide = (fraction, scale) has fraction > 0."""

    def loss(params: Params, key: Array, atoms: Array, count: Array, wide: Array) -> Array:
        sigma = _draw_sigma(sigma_key(key), atoms, count, config.batch)
        t, weight = mixture_tasks(key, sigma, config.n, config.d, wide[0], wide[1])
        if config.objective == "query_averaged":
            return jnp.mean(weight * sequence_loss(_final_weights(params, t.x, t.y), t.w))
        return 0.5 * jnp.mean(weight * (predict(params, t.x, t.y, t.x_query) - t.y_query) ** 2)

    return loss


def _finite(tree) -> Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def run_steps(config: TrainConfig, state: TrainState, steps: int) -> tuple[TrainState, Array]:
    """`steps` steps for every model on the leading axis (seeds, and configs sharing
    config.program) in one compiled call: (new state, losses (K, steps)), the loss
    nan where a step failed."""
    return _run_steps(config.program, state, steps)


@partial(jax.jit, static_argnames=("config", "steps"))
def _run_steps(config: TrainConfig, state: TrainState, steps: int) -> tuple[TrainState, Array]:
    opt = optimizer(config)
    loss_fn = objective(config)
    where = lambda cond, a, b: jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)

    def step(s: TrainState, _):
        loss, grads = jax.value_and_grad(loss_fn)(s.params, jax.random.fold_in(s.key, s.step), s.atoms, s.count,
                                                  s.wide)
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
            s.atoms,
            s.count,
            s.wide,
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
    tail: list[Evaluation]  # per seed, adjusted loss on the tail set (its worst is what counts)
    evaluation: Evaluation  # the best seed's adjusted loss on fresh evaluation sequences
    oracle_loss: Evaluation
    usable: bool = True  # False: every seed failed or has non-finite validation losses


# A validation or tail-set sequence whose loss exceeds TAIL × d/2 (100 times the loss of
# predicting 0) marks a heavy tail: seed selection avoids such seeds, and the
# reproduction gives such a cell more seeds.
TAIL = 100.0
TAIL_KEEP = 1024  # sequences in a tail set


def heavy_tailed(tail: Evaluation, d: int) -> bool:
    return not tail.worst <= TAIL * d / 2  # nan counts as a tail


@lru_cache(maxsize=32)
def tail_set(seed: int, noise: str, pool: int, n: int, d: int) -> Tasks:
    """The tail set of a run (`tasks.tail_tasks` on its own stream), computed once
    per process: every depth and variant of a noise setting shares it."""
    return tail_tasks(data_key(seed, noise, "tail"), noise, pool, TAIL_KEEP, n, d)


def select_best(validation: list[Evaluation], failed=None, tail: list[Evaluation] | None = None,
                worst_limit: float = np.inf) -> int:
    """The seed with the lowest validation mean among those that did not fail in
    training and have no non-finite validation loss, preferring seeds whose worst
    sequence, of validation and of `tail`, is at most `worst_limit` (a heavy tail
    that a mean hides). Raises if no seed is usable."""
    failed = np.zeros(len(validation), bool) if failed is None else np.asarray(failed)
    usable = [i for i, v in enumerate(validation) if not failed[i] and v.nonfinite == 0 and np.isfinite(v.mean)]
    if not usable:
        raise RuntimeError("no seed is usable (each failed in training or has non-finite validation losses)")
    tail = validation if tail is None else tail
    tame = [i for i in usable if validation[i].worst <= worst_limit and tail[i].worst <= worst_limit]  # nan: not tame
    return min(tame or usable, key=lambda i: validation[i].mean)


@jax.jit
def _adjusted_losses(params: Params, tasks) -> tuple[Array, Array]:
    """Per-sequence adjusted loss (K, B) of K stacked models on the same sequences,
    and the oracle's own loss (B,)."""
    model = jax.vmap(lambda p: sequence_loss(_final_weights(p, tasks.x, tasks.y), tasks.w))(params)
    oracle = oracle_loss(tasks)
    return model - oracle, oracle


def evaluate_models(params: Params, key: Array, noise, sequences: int, n: int) -> tuple[list[Evaluation], Evaluation]:
    """Adjusted loss of each of K models stacked on a leading axis, all on the same
    fresh sequences, and the oracle's loss there; one compiled program per model shape."""
    adjusted, oracle = per_sequence(lambda t: _adjusted_losses(params, t), key, noise, sequences, n, params.d)
    return [Evaluation.of(v) for v in adjusted], Evaluation.of(oracle)


def _stack(trees):
    return jax.tree.map(lambda *a: jnp.concatenate(a), *trees)


def use_cpu_cores(count: int | None = None) -> int:
    """Expose `count` (default: every core) CPU devices to JAX, so that the models
    of a group train on all cores at once (`train_group` spreads them). It has to
    run before JAX's first operation; after that it changes nothing. Returns the
    number of local devices.

    It also lets a spread group wait an hour, not XLA's 40 s, for a core that is late
    at a collective: on a machine busy with other work (a Table 1 run beside the test
    suite) the default aborted the whole process. XLA reads XLA_FLAGS at its first
    operation; a value you set there wins."""
    flag = "--xla_cpu_collective_call_terminate_timeout_seconds"
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}=3600".strip()
    try:
        jax.config.update("jax_num_cpu_devices", count or os.cpu_count() or 1)
    except RuntimeError:  # the backend is already up
        pass
    return jax.local_device_count()


def _spread(tree, k: int):
    """The K models on the leading axis placed across the local devices: padded
    with copies of the last model to a multiple of the devices used, so that one
    compiled call runs on every core. Each model's arithmetic is unchanged."""
    devices = jax.local_devices()[:k]
    if len(devices) < 2:
        return tree
    pad = -k % len(devices)
    tree = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), tree) if pad else tree
    return jax.device_put(tree, NamedSharding(Mesh(np.array(devices), ("models",)), PartitionSpec("models")))


def train_group(
    configs: list[TrainConfig],
    progress: Callable[[int, np.ndarray], None] | None = None,
    starts: list[tuple[TrainState, np.ndarray] | None] | None = None,
    on_chunk: Callable[[int, TrainState, np.ndarray], None] | None = None,
    stop_on_failure: bool = True,
) -> list[TrainResult]:
    """Train several configs that share one program (`config.program`: same variant,
    shapes and optimiser; any noise setting and seed) side by side in one vmapped
    call per chunk, then select and evaluate each one's best seed. `starts[i]`
    continues config i from (state, losses so far); `on_chunk(i, state, losses)`
    is called for each config after every chunk, with the state copied to the host
    (numpy arrays); `progress(step, losses)` once.
    When every seed of every config has failed, it raises, unless not
    `stop_on_failure` (a sweep): then those results come back unusable."""
    if not configs:
        return []
    if len({c.program for c in configs}) != 1:
        raise ValueError("train_group needs configs that differ only in noise, seed and seeds")
    config = configs[0]
    starts = starts or [None] * len(configs)
    begun = [s if s is not None else (init_state(c), np.zeros((c.seeds, 0), np.float32)) for c, s in zip(configs, starts)]
    done = {int(np.asarray(st.step).reshape(-1)[0]) for st, _ in begun}
    if len(done) != 1:
        raise ValueError(f"configs of one group must start at the same step, got {sorted(done)}")
    done = done.pop()
    for (st, hist), c in zip(begun, configs):
        if hist.shape != (c.seeds, done) or done > c.steps:
            raise ValueError(f"inconsistent start: state at step {done}, losses of shape {hist.shape}")
    bounds = np.cumsum([0] + [c.seeds for c in configs])
    parts = lambda tree, i: jax.tree.map(lambda a: a[bounds[i]:bounds[i + 1]], tree)
    models = int(bounds[-1])
    state = _spread(_stack([st for st, _ in begun]), models)
    losses = [np.concatenate([h for _, h in begun])]
    while done < config.steps:
        # Chunks end at multiples of config.chunk, so a resumed run makes the same calls.
        steps = min(config.chunk - done % config.chunk, config.steps - done)
        state, chunk_losses = run_steps(config, state, steps)
        losses.append(np.asarray(chunk_losses)[:models])
        done += steps
        history = np.concatenate(losses, axis=1)
        recoveries = np.asarray(state.recoveries)[:models]
        if stop_on_failure and all((recoveries[bounds[i]:bounds[i + 1]] >= c.max_recoveries).all()
                                   for i, c in enumerate(configs)):
            # Nothing left to train. A failed config beside working ones (or in a sweep)
            # trains on and is reported unusable (TrainResult.usable).
            raise RuntimeError(
                f"training failed at step {done}: every seed was rolled back {config.max_recoveries} times "
                f"({config.variant}-{config.layers}, {', '.join(c.noise for c in configs)}, lr {config.lr}); "
                f"lower the learning rate or init_scale, or check the initial model's loss for non-finite sequences"
            )
        if on_chunk is not None:
            host = jax.device_get(state)  # one copy per leaf, then numpy slices: not one dispatch per config and leaf
            for i in range(len(configs)):
                on_chunk(i, parts(host, i), history[bounds[i]:bounds[i + 1]])
        if progress is not None:
            progress(done, losses[-1][:, -1])
    # Back on one device, the padding dropped: what follows is per model, and XLA's
    # CPU collectives (which a spread evaluation would need) can deadlock.
    state = jax.device_put(jax.tree.map(lambda a: a[:models], state), jax.local_devices()[0])
    # A model that ends inside a streak of failed steps returns its last checked state.
    unchecked = np.asarray(state.streak) > 0
    final = jax.tree.map(lambda g, p: jnp.where(unchecked.reshape((-1,) + (1,) * (p.ndim - 1)), g, p),
                         state.good_params, state.params)
    history = np.concatenate(losses, axis=1)
    results = []
    for i, c in enumerate(configs):
        all_params = parts(final, i)
        rec, skip = (np.asarray(a)[bounds[i]:bounds[i + 1]] for a in (state.recoveries, state.skipped))
        validation, _ = evaluate_models(all_params, data_key(c.seed, c.noise, "validation"), c.noise,
                                        c.validation_sequences, c.n)
        hardest = tail_set(c.seed, c.noise, c.tail_sequences, c.n, c.d)
        tails = [Evaluation.of(v) for v in np.asarray(_adjusted_losses(all_params, hardest)[0])]
        try:
            best, usable = select_best(validation, rec >= c.max_recoveries, tails, TAIL * c.d / 2), True
        except RuntimeError:
            # Reported, not raised, so that one broken cell does not stop a sweep: the
            # result says usable=False and its evaluation shows the non-finite losses.
            best, usable = min(range(c.seeds), key=lambda k: (validation[k].nonfinite, bool(rec[k] >= c.max_recoveries))), False
        params = jax.tree.map(lambda a: a[best], all_params)
        (evaluation,), oracle = evaluate_models(jax.tree.map(lambda a: a[None], params),
                                                data_key(c.seed, c.noise, "evaluation"), c.noise,
                                                c.evaluation_sequences, c.n)
        results.append(TrainResult(c, params, best, all_params, history[bounds[i]:bounds[i + 1]], rec, skip,
                                   validation, tails, evaluation, oracle, usable))
    return results


def train(
    config: TrainConfig,
    progress: Callable[[int, np.ndarray], None] | None = None,
    start: tuple[TrainState, np.ndarray] | None = None,
    on_chunk: Callable[[TrainState, np.ndarray], None] | None = None,
) -> TrainResult:
    """Train config.seeds models in parallel, keep the best on validation sequences
    and evaluate it on separate fresh sequences. `progress(step, last_losses)` is
    called after every compiled chunk, `on_chunk(state, losses so far)` too (to
    checkpoint); `start` = (state, losses so far) continues a saved run."""
    return train_group([config], progress, [start],
                       None if on_chunk is None else lambda i, state, losses: on_chunk(state, losses))[0]
