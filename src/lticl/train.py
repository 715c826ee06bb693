"""Training a group of configs side by side, then keeping and evaluating each one's best seed.

    result = train(config)                  # one config, config.seeds seeds in parallel
    results = train_group([c1, c2, ...])    # configs sharing config.program, in one vmapped call

The step engine is `engine`; which seed is kept is `selection`; where the models
run is `devices`. This module strings them together.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .config import TrainConfig
from .devices import gather, spread
from .engine import TrainState, compiled_ahead, concat, final_params, init_state, run_steps
from .metrics import Evaluation
from .params import Params
from .polish import polished, prefetch_polish_sample
from .selection import evaluate_models, prefetch_tail_set, select_best, tail_evaluations, tail_limit
from .tasks import data_key


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
    polished: tuple[bool, ...] = ()  # per seed, whether it kept the polished model over Adam's (lticl.polish)
    started: tuple[bool, ...] = ()  # per seed, whether a continuation kept the model it started from


Start = tuple[TrainState, np.ndarray]  # a state and the losses so far, (K, steps done)


class Origin(NamedTuple):
    """The models a continuation started from (rundir.continuation_seeds), and where
    they were evaluated on the same validation and tail sets already (its parent's
    own models), those evaluations, per seed."""
    params: Params
    checks: tuple[list[Evaluation], list[Evaluation]] | None = None


def _begin(configs: list[TrainConfig], starts: list[Start | None]) -> tuple[list[Start], int]:
    """Each config's start (fresh where None) and the step they all start at."""
    begun = [s if s is not None else (init_state(c), np.zeros((c.seeds, 0), np.float32)) for c, s in zip(configs, starts)]
    done = {int(np.asarray(st.step).reshape(-1)[0]) for st, _ in begun}
    if len(done) != 1:
        raise ValueError(f"configs of one group must start at the same step, got {sorted(done)}")
    done = done.pop()
    for (st, hist), c in zip(begun, configs):
        if hist.shape != (c.seeds, done) or done > c.steps:
            raise ValueError(f"inconsistent start: state at step {done}, losses of shape {hist.shape}")
    return begun, done


def _check_alive(configs: list[TrainConfig], bounds: np.ndarray, recoveries: np.ndarray, done: int) -> None:
    """Raise when every seed of every config has failed: nothing is left to train. A
    failed config beside working ones trains on and is reported unusable."""
    if all((recoveries[bounds[i]:bounds[i + 1]] >= c.max_recoveries).all() for i, c in enumerate(configs)):
        c = configs[0]
        raise RuntimeError(
            f"training failed at step {done}: every seed was rolled back {c.max_recoveries} times "
            f"({c.variant}-{c.layers}, {', '.join(c.noise for c in configs)}, lr {c.lr}); "
            f"lower the learning rate or init_scale, or check the initial model's loss for non-finite sequences"
        )


# What `checked` reads of a config besides the models: configs alike in these share
# validation and tail sets.
CHECKED = ("d", "n", "seed", "noise", "validation_sequences", "tail_sequences", "screen_sequences")


_CHECKS: OrderedDict = OrderedDict()  # `checked`'s latest answers, by what they depend on
_CHECKS_KEPT = 256


def checked(c: TrainConfig, all_params: Params) -> tuple[list[Evaluation], list[Evaluation]]:
    """K stacked models' evaluations on the validation and tail sets of config c. The
    latest answers are kept by the CHECKED fields and the models' bytes: a model
    evaluated for a decision (a continuation's start, `Reproduction.continuations`) is
    not evaluated again when the run it starts is kept or not (`_kept`)."""
    leaves, tree = jax.tree.flatten(all_params)
    digest = hashlib.sha256(str(tree).encode())
    for a in leaves:
        a = np.asarray(a)
        digest.update(f"{a.dtype}{a.shape}".encode())
        digest.update(a.tobytes())
    key = (tuple(getattr(c, f) for f in CHECKED), digest.hexdigest())
    if key not in _CHECKS:
        validation, _ = evaluate_models(all_params, data_key(c.seed, c.noise, "validation"), c.noise,
                                        c.validation_sequences, c.n)
        _CHECKS[key] = validation, tail_evaluations(all_params, c.seed, c.noise, c.tail_sequences, c.n,
                                                    c.screen_sequences)
        while len(_CHECKS) > _CHECKS_KEPT:
            _CHECKS.popitem(last=False)
    _CHECKS.move_to_end(key)
    return _CHECKS[key]


def _kept(c: TrainConfig, adam: Params, start: Origin | None
          ) -> tuple[Params, list[Evaluation], list[Evaluation], tuple[bool, ...], tuple[bool, ...]]:
    """Each seed as Adam left it, polished (lticl.polish), or, for a continuation, as
    it started (`start`), whichever `select_best` prefers on validation and tail sets:
    the polish trades a little of the mean for the tail, which a tame model does not
    need, and training on sometimes gives a tail, or a higher mean, that its start
    did not have (a continuation is then never worse than its start). With their
    evaluations, and per seed whether the polished model, and whether the start, was kept."""
    options = [adam]
    both = polished(c, adam)
    if both is not adam:
        options.append(both)
    checks = [checked(c, o) for o in options]
    if start is not None:
        options.append(jax.tree.map(lambda a, b: jnp.asarray(a, b.dtype), start.params, adam))
        checks.append(start.checks if start.checks is not None else checked(c, options[-1]))
    keep = []
    for k in range(c.seeds):
        try:
            keep.append(select_best([v[k] for v, _ in checks], None, [t[k] for _, t in checks], tail_limit(c.d),
                                    c.tail_sequences))
        except RuntimeError:  # none is usable
            keep.append(0)
    chosen = jnp.asarray(keep)
    pick = lambda *leaves: jnp.choose(chosen.reshape((-1,) + (1,) * (leaves[0].ndim - 1)), leaves, mode="clip")
    params = jax.tree.map(pick, *options)
    choose = lambda i: [checks[j][i][k] for k, j in enumerate(keep)]
    is_polished = tuple(both is not adam and j == 1 for j in keep)
    is_start = tuple(start is not None and j == len(options) - 1 for j in keep)
    return params, choose(0), choose(1), is_polished, is_start


def _result(c: TrainConfig, adam: Params, losses: np.ndarray, rec: np.ndarray, skip: np.ndarray,
            start: Origin | None = None) -> TrainResult:
    """Polish one config's seeds where that helps, keep a continuation's start where
    training on did not help (`_kept`), select its best seed on validation and tail
    sets, and evaluate it."""
    all_params, validation, tails, kept_polished, kept_start = _kept(c, adam, start)
    # A seed that failed: rolled back too often, or never took a step (every one skipped).
    failed = (rec >= c.max_recoveries) | (skip >= losses.shape[1])
    try:
        best, usable = select_best(validation, failed, tails, tail_limit(c.d), c.tail_sequences), True
    except RuntimeError:
        # Reported, not raised, so that one broken cell does not stop a sweep: the
        # result says usable=False and its evaluation shows the non-finite losses.
        best = min(range(c.seeds), key=lambda k: (validation[k].nonfinite, bool(failed[k])))
        usable = False
    params = jax.tree.map(lambda a: a[best], all_params)
    (evaluation,), oracle = evaluate_models(jax.tree.map(lambda a: a[None], params),
                                            data_key(c.seed, c.noise, "evaluation"), c.noise,
                                            c.evaluation_sequences, c.n)
    return TrainResult(c, params, best, all_params, losses, rec, skip, validation, tails, evaluation, oracle, usable,
                       kept_polished, kept_start)


def prefetch_draws(configs: list[TrainConfig]) -> None:
    """Start drawing the tail sets, then the polish samples, that the configs' runs
    will read, on the drawing thread, each once per process (`selection.in_background`)."""
    for c in configs:
        prefetch_tail_set(c.seed, c.noise, c.tail_sequences, c.n, c.d)
    for c in configs:
        prefetch_polish_sample(c)


def train_group(
    configs: list[TrainConfig],
    progress: Callable[[int, np.ndarray], None] | None = None,
    starts: list[Start | None] | None = None,
    on_chunk: Callable[[int, TrainState, np.ndarray], None] | None = None,
    stop_on_failure: bool = True,
    origins: list[Origin | None] | None = None,
) -> list[TrainResult]:
    """Train several configs that share one program (`config.program`: same variant,
    shapes and optimiser; any noise setting and seed) side by side in one vmapped
    call per chunk, polish each config's seeds where it says so and that helps
    (lticl.polish), then select and evaluate each one's best seed. `starts[i]`
    continues config i from (state, losses so far); `on_chunk(i, state, losses)`
    is called for each config after every chunk, with the state copied to the host
    (numpy arrays); `progress(step, last losses)` once per chunk.
    `origins[i]`: the models config i started from, where it is a continuation, which
    each seed keeps where training on did not help (`_kept`).
    When every seed of every config has failed, it raises, unless not
    `stop_on_failure` (a sweep): then those results come back unusable."""
    if not configs:
        return []
    if len({c.program for c in configs}) != 1:
        raise ValueError("train_group needs configs that differ only in noise, seed and seeds")
    config = configs[0]
    begun, done = _begin(configs, starts or [None] * len(configs))
    prefetch_draws(configs)  # drawn while the models train
    if done == 0:
        compiled_ahead(configs)
    bounds = np.cumsum([0] + [c.seeds for c in configs])
    parts = lambda tree, i: jax.tree.map(lambda a: a[bounds[i]:bounds[i + 1]], tree)
    models = int(bounds[-1])
    state = spread(concat([st for st, _ in begun]), models)
    losses = [np.concatenate([h for _, h in begun])]
    while done < config.steps:
        # Chunks end at multiples of config.chunk, so a resumed run makes the same calls.
        steps = min(config.chunk - done % config.chunk, config.steps - done)
        state, chunk_losses = run_steps(config, state, steps)
        losses.append(np.asarray(chunk_losses)[:models])
        done += steps
        if stop_on_failure:
            _check_alive(configs, bounds, np.asarray(state.recoveries)[:models], done)
        if on_chunk is not None:
            history = np.concatenate(losses, axis=1)
            host = jax.device_get(state)  # one copy per leaf, then numpy slices
            for i in range(len(configs)):
                on_chunk(i, parts(host, i), history[bounds[i]:bounds[i + 1]])
        if progress is not None:
            progress(done, losses[-1][:, -1])
    state = gather(state, models)
    final, history = final_params(state), np.concatenate(losses, axis=1)
    rec, skip = np.asarray(state.recoveries), np.asarray(state.skipped)
    origins = origins or [None] * len(configs)
    return [_result(c, parts(final, i), history[bounds[i]:bounds[i + 1]], rec[bounds[i]:bounds[i + 1]],
                    skip[bounds[i]:bounds[i + 1]], origins[i]) for i, c in enumerate(configs)]


def train(
    config: TrainConfig,
    progress: Callable[[int, np.ndarray], None] | None = None,
    start: Start | None = None,
    on_chunk: Callable[[TrainState, np.ndarray], None] | None = None,
) -> TrainResult:
    """Train config.seeds models in parallel, keep the best on validation sequences
    and evaluate it on separate fresh sequences. `progress(step, last_losses)` is
    called after every compiled chunk, `on_chunk(state, losses so far)` too (to
    checkpoint); `start` = (state, losses so far) continues a saved run."""
    return train_group([config], progress, [start],
                       None if on_chunk is None else lambda i, state, losses: on_chunk(state, losses))[0]
