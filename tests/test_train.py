import os
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lticl
from lticl import baselines as bl
from lticl.metrics import Evaluation, oracle_loss, sequence_loss
from lticl.config import TrainConfig
from lticl.devices import use_cpu_cores
from lticl.engine import batch_data, init_state, objective, run_steps
from lticl.inits import gd_init
from lticl.model import weights
from lticl.selection import TAIL_KEEP, heavy_tailed, select_best
from lticl.tasks import data_key, stack_chunks, tail_tasks, task_chunks
from lticl.theory import best_one_step_size
from lticl.train import train, train_group

TINY = dict(d=3, n=8, batch=64, steps=6, chunk=3, validation_sequences=500, evaluation_sequences=500,
            tail_sequences=2000)


def leaves_close(a, b, rtol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=1e-7)


@pytest.mark.slow
def test_chunking_does_not_change_training():
    """The data stream is indexed by step, so 2 calls of 3 steps = 1 call of 6."""
    config = TrainConfig("full", 2, "uniform:1", seeds=2, **TINY)
    state = init_state(config)
    a, losses_a = run_steps(config, *run_steps(config, state, 3)[:1], 3)
    b, losses_b = run_steps(config, state, 6)
    leaves_close(a.params, b.params)
    np.testing.assert_allclose(losses_a, losses_b[:, 3:], rtol=1e-5)
    assert int(a.step[0]) == 6 and losses_b.shape == (2, 6)


@pytest.mark.slow
def test_seeds_in_parallel_equal_seeds_alone():
    config = TrainConfig("diag", 2, "uniform:1", seeds=3, **TINY)
    together, _ = run_steps(config, init_state(config), 6)
    alone = jax.tree.map(lambda a: a[1:2], init_state(config))  # seed 1 only
    single, _ = run_steps(config, alone, 6)
    leaves_close(jax.tree.map(lambda a: a[1:2], together.params), single.params)
    # different seeds start differently and end differently
    assert not np.allclose(together.params.p[0], together.params.p[2])


@pytest.mark.slow
def test_a_run_of_later_seeds_starts_as_those_seeds_of_a_larger_run():
    """first_seed = 2 gives seeds 2, 3: the same initial state and data stream, bit
    for bit, as seeds 2, 3 of one run of four; the program is shared."""
    config = TrainConfig("full", 2, "uniform:1", seeds=4, **TINY)
    later = replace(config, first_seed=2, seeds=2)
    assert later.program == config.program
    whole, part = init_state(config), init_state(later)
    for a, b in zip(jax.tree.leaves(jax.tree.map(lambda a: a[2:], whole)), jax.tree.leaves(part)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
@pytest.mark.parametrize("sampling", [{}, dict(wide_fraction=0.5, wide_scale=2.0),
                                      dict(spike_fraction=0.3, spike_scale=2.0)])
def test_the_training_loss_estimates_the_expected_loss_with_or_without_importance_sampling(sampling):
    """Batch losses of the one-step-optimal 1-layer model, plain or importance-
    sampled (large ‖w‖, or a spike in X's spectrum), average to its analytic expected
    loss, within 4 standard errors of the mean of 8 batches."""
    config = TrainConfig("diag", 1, "uniform:3", batch=50_000, **sampling)
    # data, but a switch: any fraction on shares one program, and off compiles without the work
    assert replace(config, **{k: 0.2 for k in sampling if "fraction" in k}).program == config.program
    assert (replace(config, wide_fraction=0.0, spike_fraction=0.0).program == config.program) == (not sampling)
    s2 = lticl.as_noise(config.noise).second_moment
    eta = best_one_step_size(config.n, config.d, s2)
    params = lticl.Params("diag", config.d, jnp.array([[[0.0, 1.0]]]), jnp.array([[[-eta, 0.0]]]))
    state = jax.tree.map(lambda a: a[0], init_state(config))
    loss = jax.jit(objective(config))
    batches = np.array([loss(params, jax.random.key(k), *batch_data(state)) for k in range(8)])
    expected = lticl.best_one_layer_loss(config.n, config.d, s2)
    assert abs(batches.mean() - expected) < 4 * batches.std(ddof=1) / np.sqrt(len(batches)), (batches, expected)


@pytest.mark.slow
def test_starting_preconditioned_escapes_the_optimum_that_gd_start_trains_into():
    """GD++-2 on noiseless data has local optima at adjusted loss 0.389, 0.342 and
    0.267 (float64 L-BFGS from many starts, docs/training.md). From GD's start
    training settles near the first; from the preconditioning start, well below it.
    Both evaluated on the same sequences."""
    common = dict(steps=400, batch=256, chunk=200, validation_sequences=2000, evaluation_sequences=4000,
                  tail_sequences=4000)
    gd, pre = (train(TrainConfig("gdpp", 2, "uniform:0", init=init, **common)) for init in ("gd", "precondition"))
    assert gd.evaluation.mean > 0.36, gd.evaluation
    assert pre.evaluation.mean < gd.evaluation.mean - 0.03, (pre.evaluation, gd.evaluation)


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="one GPU: a group's models share the device")
def test_a_group_spread_over_devices_equals_each_config_alone():
    """Three configs on two CPU devices (conftest asks for two; one is padded)
    train as each does alone on one device, to float32 rounding (observed ≤ 1e-9:
    a device's batch of 2 models may vectorise differently from a batch of 1)."""
    assert jax.local_device_count() >= 2
    configs = [TrainConfig("diag", 2, s, seeds=1, **TINY) for s in ("uniform:1", "uniform:3", "categorical:1,3")]
    together = train_group(configs)
    for c, t in zip(configs, together):
        alone = train(c)
        leaves_close(t.all_params, alone.all_params)
        np.testing.assert_allclose(t.losses, alone.losses, rtol=1e-5)
        np.testing.assert_allclose(t.evaluation.mean, alone.evaluation.mean, rtol=1e-5)


@pytest.mark.slow
def test_huge_learning_rate_recovers_and_ends_finite():
    config = TrainConfig("full", 3, "uniform:3", lr=1e3, warmup=0, steps=150, chunk=10, seeds=2,
                         **{k: v for k, v in TINY.items() if k not in ("steps", "chunk")})
    result = train(config)
    assert (result.recoveries > 0).all()
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(result.all_params))
    assert result.evaluation.nonfinite == 0 and np.isfinite(result.evaluation.mean)


@pytest.mark.slow
def test_training_beats_the_best_one_layer_model():
    """A 3-layer DIAG model trained briefly beats one GD step with the best step size
    (the best any 1-layer model can do) on fresh sequences."""
    config = TrainConfig("diag", 3, "uniform:1", d=3, n=8, batch=256, steps=300, chunk=100, lr=1e-2,
                         seeds=2, validation_sequences=2000, evaluation_sequences=20_000, tail_sequences=20_000)
    result = train(config)
    tune = stack_chunks(task_chunks(data_key(0, config.noise, "tune"), config.noise, 20_000, 8, 3))
    eta = bl.tune_gd(tune, 1)
    one_step = lticl.evaluate({"gd1": lambda x, y: bl.gd(x, y, 1, eta)}, data_key(0, config.noise, "evaluation"),
                              config.noise, 20_000, 8, 3)["gd1"]
    gap = one_step.mean - result.evaluation.mean
    assert gap > 5 * (one_step.sem + result.evaluation.sem)
    assert result.losses.shape == (2, 300) and result.seed == int(np.argmin([v.mean for v in result.validation]))


@pytest.mark.slow
def test_sampled_query_objective_trains():
    config = TrainConfig("gdpp", 2, "fixed:0.5", objective="sampled_query", seeds=1, **TINY)
    result = train(config)
    assert np.isfinite(result.losses).all()


@pytest.mark.slow
def test_tail_set_finds_the_worst_sequence_of_an_unstable_model():
    """GD with a step too long for large λ_max blows up as (1 − ηλ)^L‖w‖: the tail
    set (top 1024 of 50k by mean(y²)·λ_max) holds the pool's worst sequence, and
    heavy_tailed says so; one-step-optimal GD is tame there."""
    key, pool = data_key(0, "uniform:5", "tail"), 50_000
    everything = stack_chunks(task_chunks(key, "uniform:5", pool, 20, 10, jnp.float64))
    top = tail_tasks(key, "uniform:5", pool, TAIL_KEEP, 20, 10, jnp.float64)
    for eta, tailed in ((0.5, True), (best_one_step_size(20, 10, 25 / 3), False)):
        p = gd_init(jax.random.key(0), "full", 3, 10, 1, eta, 0.0)
        loss = lambda t: np.asarray(sequence_loss(weights(p, t.x, t.y), t.w) - oracle_loss(t))
        assert heavy_tailed(Evaluation.of(loss(top)), 10) == tailed
        if tailed:
            assert loss(top).max() == loss(everything).max()


def test_own_worst_is_each_models_top_of_the_screen_across_chunks():
    """Each of K models keeps the `keep` sequences of highest loss among the first
    `sequences` of the stream (several chunks, the last partial: nothing past it
    counts), in descending order, each its own."""
    from lticl.selection import own_worst, model_losses
    from lticl.tasks import CHUNK

    models = jax.tree.map(lambda a: jnp.stack([a, 3.0 * a]), gd_init(jax.random.key(1), "full", 2, 3, 1, 0.6, 0.3))
    key, sequences, keep = data_key(2, "uniform:3", "tail"), CHUNK + 300, 64
    every = np.asarray(model_losses(models, stack_chunks(task_chunks(key, "uniform:3", sequences, 8, 3))))
    own = own_worst(models, key, "uniform:3", sequences, 8, keep)
    assert own.x.shape == (2, keep, 8, 3)
    for k in range(2):
        mine = np.asarray(model_losses(jax.tree.map(lambda a: a[k:k + 1], models), jax.tree.map(lambda a: a[k], own)))[0]
        np.testing.assert_allclose(mine, np.sort(every[k])[::-1][:keep], rtol=1e-6)
    assert not np.array_equal(own.x[0], own.x[1])  # each model its own sequences
    assert own_worst(models, key, "uniform:3", 40, 8, keep).x.shape == (2, 40, 8, 3)  # never more than the screen


@pytest.mark.slow
def test_a_screen_finds_the_blow_up_that_the_data_score_misses():
    """A FULL-6 model from the laptop budget's first run on categorical:1,3 (at 7747207,
    tests/data) blows up on a few in 100,000 sequences, which no score of the data
    alone ranks high: its tail set of 100,000 fresh sequences is tame, its own worst
    of the same 100,000 is not, by two orders of magnitude and more, and a screened
    tail set holds both."""
    from lticl.io import load_npz
    from lticl.selection import tail_evaluations

    models = jax.tree.map(lambda a: a[None], load_npz(Path(__file__).parent / "data" / "full6-categorical13.npz"))
    pool = 100_000
    plain, = tail_evaluations(models, 0, "categorical:1,3", pool, 20)
    screened, = tail_evaluations(models, 0, "categorical:1,3", pool, 20, pool)
    assert not heavy_tailed(plain, 10) and heavy_tailed(screened, 10)
    assert (plain.sequences, screened.sequences) == (TAIL_KEEP, 2 * TAIL_KEEP)
    assert screened.worst > 100 * plain.worst


def test_evaluating_models_on_the_oracle_computed_once_equals_computing_both_per_chunk():
    """The oracle's losses are computed once per (key, noise, sequences) and reused; the
    adjusted losses and the oracle's summary are those of computing both on every chunk."""
    from lticl.selection import _oracle_losses, adjusted_losses, evaluate_models
    from lticl.metrics import per_sequence

    models = jax.tree.map(lambda a: jnp.stack([a, 1.5 * a]), gd_init(jax.random.key(0), "full", 2, 3, scale=0.1))
    key = data_key(3, "uniform:3", "validation")
    adjusted, oracle = per_sequence(lambda t: adjusted_losses(models, t), key, "uniform:3", 700, 8, 3)
    hits = _oracle_losses.cache_info().hits
    for _ in range(2):
        evaluations, ev_oracle = evaluate_models(models, key, "uniform:3", 700, 8)
        assert evaluations == [Evaluation.of(a) for a in adjusted] and ev_oracle == Evaluation.of(oracle)
    assert _oracle_losses.cache_info().hits == hits + 1
    other, _ = evaluate_models(models, data_key(4, "uniform:3", "validation"), "uniform:3", 700, 8)
    assert other[0].mean != evaluations[0].mean  # another key, other sequences


def test_select_best_skips_broken_seeds():
    ok = Evaluation(0.3, 0.01, 2.0, 0, 0.01, 100)
    better_but_broken = Evaluation(float("nan"), float("nan"), float("nan"), 3, float("nan"), 100)
    assert select_best([ok, better_but_broken, Evaluation(0.2, 0.01, 2.0, 0, 0.01, 100)]) == 2
    assert select_best([better_but_broken, ok]) == 1
    with pytest.raises(RuntimeError, match="no seed is usable"):
        select_best([better_but_broken])
    # a seed that failed in training is never chosen, however good it looks
    assert select_best([ok, Evaluation(0.1, 0.01, 2.0, 0, 0.01, 100)], failed=[False, True]) == 0
    # a lower mean with a heavy tail loses to a tame seed, but is better than nothing
    tailed = Evaluation(0.1, 0.01, 1e7, 0, 0.01, 100)
    assert select_best([ok, tailed], worst_limit=500) == 0
    assert select_best([tailed], worst_limit=500) == 0
    # with tail sets, a seed is tame when neither its validation nor its tail set has a tail
    worse = Evaluation(0.35, 0.01, 2.0, 0, 0.01, 100)
    assert select_best([ok, worse], tail=[tailed, ok], worst_limit=500) == 1
    assert select_best([tailed, worse], tail=[ok, ok], worst_limit=500) == 1
    # an overflow on the tail set (worst nan) is a tail, whichever set shows it
    overflow = Evaluation(0.1, float("nan"), float("nan"), 2, float("nan"), 100)
    assert select_best([ok, worse], tail=[overflow, ok], worst_limit=500) == 1
    assert select_best([Evaluation(0.3, 0.01, float("nan"), 0, 0.01, 100), worse], worst_limit=500) == 1
    # where every seed has a tail, the lowest mean charged with its tail set's worst sequence as one of the pool
    milder = Evaluation(0.2, 0.01, 1e3, 0, 0.01, 100)
    assert select_best([tailed, milder], worst_limit=500) == 0  # no pool: the mean alone
    assert select_best([tailed, milder], worst_limit=500, pool=1e6) == 1  # 0.1 + 10 against 0.2 + 0.001
    assert select_best([milder, worse], tail=[tailed, overflow], worst_limit=500, pool=1e6) == 0  # nan: the worst
    assert select_best([ok, worse], tail=[overflow, overflow], worst_limit=500, pool=1e6) == 0  # then by mean
    # beside a tame seed, a tail that the mean over the pool absorbs: charged, both compete
    slight = Evaluation(0.25, 0.01, 2e3, 0, 0.01, 100)
    assert select_best([ok, slight], worst_limit=500) == 0  # no pool: the tame seed
    assert select_best([ok, slight], worst_limit=500, pool=1e6) == 1  # 0.25 + 0.002 against 0.3 + 2e-6
    assert select_best([ok, slight], worst_limit=500, pool=1e4) == 0  # 0.25 + 0.2 against 0.3 + 2e-4
    assert select_best([ok, tailed], worst_limit=500, pool=1e6) == 0  # 0.1 + 10 against 0.3


@pytest.mark.slow
def test_a_run_that_cannot_recover_stops_loudly():
    """An initial model that overflows on some sequences fails every batch: the run
    must stop with an explanation, not train on with a vanishing learning rate."""
    config = TrainConfig("full", 7, "uniform:7", init_scale=0.5, steps=40, chunk=10, max_recoveries=10,
                         patience=1, batch=512, seeds=2, validation_sequences=500, evaluation_sequences=500,
                         tail_sequences=2000)
    with pytest.raises(RuntimeError, match="every seed was rolled back 10 times"):
        train(config)


@pytest.mark.slow
def test_a_failed_config_does_not_stop_its_group():
    """Beside a config that trains, one that cannot recover is reported unusable
    (its evaluation shows why) instead of stopping the sweep."""
    broken = TrainConfig("full", 7, "uniform:7", init_scale=0.5, steps=40, chunk=10, max_recoveries=10,
                         patience=1, batch=512, seeds=2, validation_sequences=500, evaluation_sequences=500,
                         tail_sequences=2000)
    fine = replace(broken, noise="uniform:1", init_scale=1e-3)
    bad, good = train_group([broken, fine])
    assert (bad.recoveries >= 10).all() and not bad.usable
    assert good.usable and (good.recoveries < 10).any() and np.isfinite(good.evaluation.mean)
    # alone, in a sweep (which must go on), it finishes unusable instead of raising
    (alone,) = train_group([broken], stop_on_failure=False)
    assert not alone.usable and (alone.recoveries >= 10).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(variant="rnn"), "unknown variant"), (dict(layers=0), "layers must be >= 1"),
    (dict(noise="uniform:-1"), ">= 0"), (dict(objective="mse"), "unknown objective"),
    (dict(init="zeros"), "unknown init"), (dict(lr=0.0), "lr must be > 0"),
    (dict(lr_backoff=1.0), "lr_backoff"), (dict(seeds=0), "seeds must be >= 1"),
    (dict(first_seed=-1), "first_seed must be >= 0"), (dict(first_seed=1.5), "first_seed must be an integer"),
    (dict(wide_fraction=1.0), "wide_fraction must be in"), (dict(wide_scale=0.5), "wide_scale >= 1"),
    (dict(spike_fraction=-0.1), "spike_fraction must be in"), (dict(spike_scale=0.9), "spike_scale >= 1"),
    (dict(spike_fraction=0.1, wide_fraction=0.1), "exclusive"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**(dict(variant="diag", layers=2) | kwargs))


def test_failed_steps_are_skipped_then_rolled_back():
    """With every step failing (explode below any loss): each step is skipped, every
    `patience` failures in a row roll back with a lower rate, parameters never move."""
    config = TrainConfig("diag", 2, "uniform:1", explode=1e-12, patience=4, lr_backoff=0.5, seeds=2, **TINY)
    state = init_state(config)
    end, losses = run_steps(config, state, 6)
    end, more = run_steps(config, end, 6)
    assert np.isnan(losses).all() and np.isnan(more).all()
    np.testing.assert_array_equal(end.skipped, [12, 12])
    np.testing.assert_array_equal(end.recoveries, [3, 3])
    np.testing.assert_allclose(end.lr_scale, [0.125, 0.125])
    leaves_close(end.params, state.params, rtol=0)


def test_use_cpu_cores_lets_a_late_core_wait_unless_told_otherwise(monkeypatch):
    """The user's XLA flags are kept; the collective timeout is added only where the
    user has not set one, and then at least as long as a long group's chunk."""
    flag = "--xla_cpu_collective_call_terminate_timeout_seconds"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    use_cpu_cores()
    mine, added = os.environ["XLA_FLAGS"].split()
    assert mine == "--xla_cpu_enable_fast_math=false"
    name, value = added.split("=")
    assert name == flag and int(value) >= 600
    monkeypatch.setenv("XLA_FLAGS", f"{flag}=5")
    use_cpu_cores()
    assert os.environ["XLA_FLAGS"] == f"{flag}=5"


@pytest.mark.parametrize("settings", [["uniform:2"], ["uniform:1", "uniform:2", "uniform:3"]])
def test_a_group_step_loop_compiled_ahead_is_not_compiled_again(settings):
    """`engine.compile_ahead` compiles the program the group's first chunk runs, spread as
    `devices.spread` places it (one model unsharded; three padded to four over the
    cores): that call compiles nothing, where a chunk of another length does."""
    from jax._src import dispatch, monitoring

    from lticl.devices import spread
    from lticl.engine import compile_ahead, concat

    configs = [TrainConfig("diag", 2, s, **{**TINY, "steps": 14, "chunk": 7, "lr": 2.5e-3}) for s in settings]
    compiled = []
    listen = lambda event, seconds, **kw: compiled.append(kw.get("fun_name")) if event == dispatch.BACKEND_COMPILE_EVENT else None
    compile_ahead(configs).result()
    state = spread(concat([init_state(c) for c in configs]), len(configs))
    monitoring.register_event_duration_secs_listener(listen)
    try:
        run_steps(configs[0], state, 7)
        assert compiled == []
        run_steps(configs[0], state, 5)
        assert compiled == ["jit(_run_steps)"]
    finally:
        monitoring.unregister_event_duration_listener(listen)
