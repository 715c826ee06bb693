"""Stratified training batches (tasks.stratified_batch): the top stratum of the tail
score on purpose, weighted so that the objective stays unbiased."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lticl.config import TrainConfig
from lticl.engine import batch_data, init_state, objective, run_steps, training_batch
from lticl.inits import gd_init
from lticl.noise import as_noise
from lticl.tasks import tail_score
from lticl.theory import best_one_layer_loss, best_one_step_size

SMALL = dict(d=3, n=8, batch=256, stratum=40, stratum_pool=8000, seeds=1)


def _estimates(config, params, batches):
    state = init_state(config)
    data = jax.tree.map(lambda a: a[0], batch_data(state))
    loss = jax.jit(objective(config))
    return np.array([float(loss(params, jax.random.key(k), *data)) for k in range(batches)])


@pytest.mark.slow
def test_the_stratified_objective_is_unbiased_for_the_one_layer_loss():
    """A 1-layer GD model with the best step has expected loss ½(d − n d η*) exactly
    (theory.best_one_layer_loss). The mean of stratified batch losses meets it within 4
    standard errors, as the plain batches' mean does, although a quarter of every
    stratified batch comes from the top 0.5% of the tail score, and with a quarter of the
    fresh part drawn with a spiked spectrum and importance-weighted besides."""
    noise = "uniform:2"
    plain = TrainConfig("full", 1, noise, **SMALL)
    strat = TrainConfig("full", 1, noise, **SMALL, stratum_fraction=0.25)
    spiked = replace(strat, spike_fraction=0.25)  # the fresh part importance-weighted too
    s2 = as_noise(noise).second_moment
    eta = best_one_step_size(plain.n, plain.d, s2)
    params = gd_init(jax.random.key(0), "full", 1, plain.d, 1, eta, 0.0, jnp.float32)
    exact = best_one_layer_loss(plain.n, plain.d, s2)
    for config in (plain, strat, spiked):
        values = _estimates(config, params, 600)
        sem = values.std(ddof=1) / np.sqrt(values.size)
        assert abs(values.mean() - exact) < 4 * sem, \
            (config.stratum_fraction, config.spike_fraction, values.mean(), exact, sem)

    # the stratified batch does hold the top stratum: its first m sequences are at or
    # above the threshold, and of the fresh rest those below it carry the weight and
    # those above it (about p of them) none
    state = init_state(strat)
    data = jax.tree.map(lambda a: a[0], batch_data(state))
    t, weight, _ = training_batch(strat, jax.random.key(1), *data)
    m = round(0.25 * strat.batch)
    scores, rest = np.asarray(tail_score(t)), np.asarray(weight)[m:]
    threshold = float(data[-1][2])
    assert (scores[:m] >= threshold * (1 - 1e-5)).all()
    np.testing.assert_array_equal(rest > 0, scores[m:] < threshold)
    assert (rest == 0).mean() < 0.05
    p = strat.stratum / strat.stratum_pool
    np.testing.assert_allclose(np.asarray(weight[:m]), p * strat.batch / m, rtol=1e-6)
    assert np.asarray(weight[m:]).max() <= (1 - p) * strat.batch / (strat.batch - m - 10)


def test_a_stratified_config_off_is_the_plain_one():
    plain = TrainConfig("diag", 2, "uniform:1", **{**SMALL, "stratum": 0})
    grouped = TrainConfig("diag", 2, "uniform:1", **SMALL)  # the bank's size set, no fraction: plain batches
    a, b = (np.asarray(run_steps(c, init_state(c), 5)[1]) for c in (plain, grouped))
    np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("change, match", [
    (dict(stratum_fraction=0.2, stratum=0), "stratum_fraction must be 0"),
    (dict(stratum_fraction=1e-4), "stratum_fraction must be 0"),
    (dict(stratum=5000, stratum_pool=8000), "at most half"),
    (dict(stratum_fraction=0.2, wide_fraction=0.1), "exclusive"),
])
def test_bad_strata_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig("full", 2, "uniform:1", **{**SMALL, **change})
