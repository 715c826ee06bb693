"""The polish (lticl.polish): L-BFGS after Adam on a fixed sample of the stratified
objective: unbiased, lowering, deterministic, resumable, and refused where it cannot run."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lticl.train
from lticl.train import checked, _kept
from lticl.config import TrainConfig
from lticl.engine import init_state
from lticl.experiments import BUDGETS, budget_fields, matching
from lticl.inits import gd_init
from lticl.noise import as_noise
from lticl.params import MAX_LAYERS, VARIANTS
from lticl.polish import _fresh, own_sample, polish_sample, polished, sample_objective
from lticl.rundir import CHECKPOINT, METRICS, config_hash
from lticl.runs import run
from lticl.selection import TAIL_KEEP, adjusted_losses, model_losses, tail_limit
from lticl.tasks import data_key, stack_chunks, task_chunks
from lticl.theory import best_one_layer_loss, best_one_step_size

SMALL = dict(d=3, n=8, batch=64, stratum=40, stratum_pool=8000, polish_pool=8000, polish_sequences=2000, seeds=2,
             steps=20, chunk=10, validation_sequences=500, evaluation_sequences=500, tail_sequences=2000)


def test_the_polish_sample_is_unbiased_for_the_one_layer_loss():
    """A 1-layer GD model with the best step has expected loss ½(d − n d η*) exactly
    (theory.best_one_layer_loss). Over samples of independent seeds, the polish's
    weighted mean meets it within 4 standard errors, although each sample holds the
    top 0.5% of its pool's tail scores as 2% of its sequences."""
    config = TrainConfig("full", 1, "uniform:2", **SMALL)
    s2 = as_noise(config.noise).second_moment
    params = gd_init(jax.random.key(0), "full", 1, config.d, 1, best_one_step_size(config.n, config.d, s2), 0.0,
                     jnp.float32)
    exact = best_one_layer_loss(config.n, config.d, s2)
    own = replace(config, polish_score="own")
    for score in ("tail", "own"):
        values = []
        for seed in range(60):
            if score == "tail":
                sample, weight = polish_sample(seed, config.noise, config.polish_pool, config.stratum,
                                               config.polish_sequences, config.n, config.d)
            else:
                fresh = _fresh(seed, config.noise, config.polish_sequences, config.n, config.d)
                sample, weight = own_sample(replace(own, seed=seed), params, fresh)
            assert weight.shape == (sample.batch,) and abs(float(weight.sum()) - 1) < 1e-5
            np.testing.assert_allclose(np.asarray(weight[:40]), 1 / config.polish_pool, rtol=1e-6)
            values.append(float(sample_objective(params, sample, weight)))
        values = np.array(values)
        assert abs(values.mean() - exact) < 4 * values.std(ddof=1) / np.sqrt(values.size), (score, values.mean(), exact)


def test_the_own_sample_is_the_models_worst_of_its_pool_and_the_fresh_below_them():
    config = TrainConfig("full", 2, "uniform:3", **{**SMALL, "stratum": 0, "polish_pool": 4096}, polish=5,
                         polish_score="own")
    params = jax.tree.map(lambda a: a[0], init_state(config).params)
    fresh = _fresh(config.seed, config.noise, config.polish_sequences, config.n, config.d)
    sample, weight = own_sample(config, params, fresh)
    one = jax.tree.map(lambda a: a[None], params)
    pool = stack_chunks(task_chunks(data_key(config.seed, config.noise, "bank"), config.noise, config.polish_pool,
                                    config.n, config.d))
    every = np.sort(np.asarray(model_losses(one, pool)[0]))[::-1]
    mine = np.asarray(model_losses(one, sample)[0])
    np.testing.assert_allclose(np.sort(mine[:TAIL_KEEP])[::-1], every[:TAIL_KEEP], rtol=1e-6)
    assert mine[TAIL_KEEP:].max() < mine[:TAIL_KEEP].min() and sample.batch > TAIL_KEEP + 0.7 * fresh.batch
    np.testing.assert_allclose(np.asarray(weight[:TAIL_KEEP]), 1 / config.polish_pool, rtol=1e-6)


def _heavy_and_tame(config):
    """Two GD models stacked: one of a step far too large, which blows up on the bank,
    and one of a small step."""
    eta = best_one_step_size(config.n, config.d, as_noise(config.noise).second_moment)
    start = lambda step: gd_init(jax.random.key(0), "diag", 3, config.d, 1, step, 0.0, jnp.float32)
    return jax.tree.map(lambda *a: jnp.stack(a), start(6 * eta), start(eta / 3))


def test_the_polish_lowers_a_heavy_tailed_objective_and_is_a_pure_function():
    """Of two models, one blows up on the bank (a GD start with a step far too large):
    the polish takes its objective down; the tame one keeps its start exactly."""
    config = TrainConfig("diag", 3, "uniform:5", **SMALL, polish=8)
    stacked = _heavy_and_tame(config)
    assert polished(replace(config, polish=0), stacked) is stacked
    once, twice = polished(config, stacked), polished(config, stacked)
    for a, b in zip(jax.tree.leaves(once), jax.tree.leaves(twice)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    sample, weight = polish_sample(config.seed, config.noise, config.polish_pool, config.stratum,
                                   config.polish_sequences, config.n, config.d)
    bank = jax.tree.map(lambda a: a[None, :config.stratum], sample)
    model = lambda tree, k: jax.tree.map(lambda a: a[k], tree)
    heavy, tame = (float(jnp.max(adjusted_losses(jax.tree.map(lambda a: a[k:k + 1], stacked), jax.tree.map(
        lambda a: a[0], bank))[0])) for k in (0, 1))
    assert heavy > tail_limit(config.d) >= tame, (heavy, tame)
    before, after = (float(sample_objective(model(t, 0), sample, weight)) for t in (stacked, once))
    assert after < 0.5 * before, (before, after)
    for a, b in zip(jax.tree.leaves(model(once, 1)), jax.tree.leaves(model(stacked, 1))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_each_seed_keeps_adams_model_or_the_polished_one_as_validation_and_tail_sets_prefer():
    """A run keeps, per seed, whichever of its two models `select_best` prefers: the
    blown-up start polished, the tame one as it was, with the evaluations of the kept
    and which one it kept."""
    config = TrainConfig("diag", 3, "uniform:5", **SMALL, polish=8)
    stacked = _heavy_and_tame(config)
    kept, validation, tails, flags, started = _kept(config, stacked, None)
    assert flags == (True, False) and started == (False, False)
    polished_too = polished(config, stacked)
    for k, source in ((0, polished_too), (1, stacked)):
        for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(source)):
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
    v_kept, t_kept = checked(config, kept)
    assert validation == v_kept and tails == t_kept
    v_start, _ = checked(config, stacked)
    assert validation[0].mean < v_start[0].mean


@pytest.mark.slow
def test_a_run_killed_in_its_polish_resumes_to_the_same_model(tmp_path, monkeypatch):
    """The polish runs after the last checkpoint: a run stopped inside it resumes from
    that checkpoint and polishes again, to the parameters of a run never stopped."""
    config = TrainConfig("diag", 3, "uniform:5", **SMALL, polish=5)
    whole = run(config, tmp_path / "whole")

    def stop(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(lticl.train, "polished", stop)
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "killed")
    assert (tmp_path / "killed" / CHECKPOINT).exists() and not (tmp_path / "killed" / METRICS).exists()
    monkeypatch.undo()
    resumed = run(config, tmp_path / "killed")
    assert resumed["validation"] == whole["validation"] and resumed["evaluation"] == whole["evaluation"]
    a, b = (np.load(tmp_path / d / "model.npz") for d in ("whole", "killed"))
    np.testing.assert_array_equal(a["P"], b["P"])
    np.testing.assert_array_equal(a["Q"], b["Q"])


def test_the_polish_enters_the_hash_only_when_on():
    plain = TrainConfig("diag", 3, "uniform:5", **SMALL)
    assert config_hash(plain) == config_hash(replace(plain, polish_pool=123_456, polish_sequences=7))
    on = replace(plain, polish=30)
    assert config_hash(on) != config_hash(plain) and on.program == plain.program
    assert config_hash(replace(on, polish_pool=100_000)) != config_hash(on)
    assert config_hash(replace(on, polish_score="tail")) == config_hash(on) != config_hash(
        replace(on, polish_score="own"))
    assert config_hash(replace(plain, polish_score="own")) == config_hash(plain)


@pytest.mark.parametrize("change, match", [
    (dict(polish=5, stratum=0), "polish needs the stratum"),
    (dict(polish=5, polish_pool=60), "polish needs the stratum"),
    (dict(polish=5, objective="sampled_query"), "query-averaged"),
    (dict(polish=-1), "polish"),
    (dict(polish_sequences=0), "polish_sequences"),
    (dict(polish_score="nope"), "polish_score"),
    (dict(polish=5, stratum=0, polish_score="own", polish_pool=2000), "at least 2,048"),
])
def test_bad_polish_settings_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig("diag", 3, "uniform:5", **{**SMALL, **change})


def test_the_laptop_budget_polishes_its_3_layer_and_full_continuations_each_with_a_bank():
    laptop = BUDGETS["laptop"]
    for variant in VARIANTS:
        for layers in range(1, MAX_LAYERS + 1):
            fields = matching(laptop.continuation, variant, layers)
            assert bool(fields.get("polish")) == (layers == 3 or variant == "full"), (variant, layers)
            config = TrainConfig(variant, layers, "uniform:5", **budget_fields("laptop", variant, layers) | fields)
            assert not config.polish or config.stratum > 0 or config.polish_score == "own"


def test_the_polish_by_a_models_own_loss_lowers_a_blown_up_model_and_leaves_a_tame_one():
    config = TrainConfig("diag", 3, "uniform:5", **{**SMALL, "stratum": 0, "polish_pool": 4096}, polish=8,
                         polish_score="own")
    stacked = _heavy_and_tame(config)
    once = polished(config, stacked)
    model = lambda tree, k: jax.tree.map(lambda a: a[k], tree)
    fresh = _fresh(config.seed, config.noise, config.polish_sequences, config.n, config.d)
    sample, weight = own_sample(config, model(stacked, 0), fresh)
    before, after = (float(sample_objective(model(t, 0), sample, weight)) for t in (stacked, once))
    assert after < 0.5 * before, (before, after)
    for a, b in zip(jax.tree.leaves(model(once, 1)), jax.tree.leaves(model(stacked, 1))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_own_sample_ranks_a_non_finite_loss_highest_and_a_model_non_finite_everywhere_keeps_its_start():
    # A GD step 10⁷ times the best overflows on almost every sequence, 10⁹ times on all:
    # such models came out of long FULL runs that broke, and the polish raised on them.
    config = TrainConfig("diag", 3, "uniform:5", **{**SMALL, "stratum": 0, "polish_pool": 4096}, polish=2,
                         polish_score="own")
    eta = best_one_step_size(config.n, config.d, as_noise(config.noise).second_moment)
    gd = lambda step: gd_init(jax.random.key(0), "diag", 3, config.d, 1, step, 0.0, jnp.float32)
    fresh = _fresh(config.seed, config.noise, config.polish_sequences, config.n, config.d)
    losses = lambda p, t: np.asarray(model_losses(jax.tree.map(lambda a: a[None], p), t)[0])
    mostly, everywhere = gd(1e7 * eta), gd(1e9 * eta)
    finite = np.isfinite(losses(mostly, fresh))
    assert 0 < finite.sum() < 0.1 * fresh.batch  # the case: most, not all, non-finite
    sample, weight = own_sample(config, mostly, fresh)
    assert sample.batch == TAIL_KEEP + finite.sum() and np.isfinite(losses(mostly, sample)[TAIL_KEEP:]).all()
    np.testing.assert_allclose(float(jnp.sum(weight)), 1.0, rtol=1e-5)
    assert own_sample(config, everywhere, fresh) is None
    stacked = jax.tree.map(lambda *a: jnp.stack(a), everywhere, gd(eta / 3))
    for a, b in zip(jax.tree.leaves(polished(config, stacked)), jax.tree.leaves(stacked)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
