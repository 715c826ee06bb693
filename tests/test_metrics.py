import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import gd_like_params

import lticl
from lticl import baselines as bl
from lticl.metrics import Evaluation


def test_query_averaged_loss_is_exact():
    """½‖ŵ − w‖² equals the mean over many sampled queries of ½(<ŵ, x_q> − y_q)²."""
    rng = np.random.default_rng(0)
    w_hat, w = rng.normal(size=3), rng.normal(size=3)
    xq = rng.normal(size=(2_000_000, 3))
    sampled = 0.5 * ((xq @ (w_hat - w)) ** 2)
    exact = float(lticl.sequence_loss(jnp.asarray(w_hat), jnp.asarray(w)))
    assert abs(sampled.mean() - exact) < 4 * sampled.std() / np.sqrt(sampled.size)


def test_evaluation_summary():
    v = np.concatenate([np.ones(90), np.full(10, 11.0)])
    e = Evaluation.of(v, blocks=10)
    assert e.mean == 2.0 and e.worst == 11.0 and e.nonfinite == 0 and e.sequences == 100
    assert e.block_spread == 10.0  # the last block holds all the large values
    assert np.isclose(e.sem, v.std(ddof=1) / 10)
    bad = Evaluation.of(np.array([1.0, np.inf, np.nan]))
    assert bad.nonfinite == 2 and np.isnan(bad.worst)


def test_evaluate_adjusts_by_the_oracle():
    key = jax.random.key(0)
    res = lticl.evaluate({"ols": bl.ols, "zero": lambda x, y: jnp.zeros(x.shape[::2], x.dtype)}, key, "fixed:1", 3000, 20, 10, jnp.float64)
    # predicting 0 costs ½‖w‖², mean d/2 = 5, minus the oracle's loss
    assert abs(res["zero"].mean + res["oracle_loss"].mean - 5.0) < 4 * 0.05
    # OLS with n = 20, d = 10, σ = 1 has E loss = ½ σ² d/(n−d−1) = 5/9
    assert abs(res["ols"].mean + res["oracle_loss"].mean - 5 / 9) < 0.05
    assert res["ols"].mean > 0 and res["ols"].sequences == 3000


def test_evaluate_rejects_reserved_name():
    with pytest.raises(ValueError, match="reserved"):
        lticl.evaluate({"oracle_loss": bl.ols}, jax.random.key(0), "fixed:1", 10, 20, 10)


def test_per_layer_profile_matches_truncated_models():
    params = gd_like_params(jax.random.key(1), "diag", 3, 5, 1, 12)
    key = jax.random.key(2)
    profile = lticl.per_layer_profile(params, key, "uniform:1", 2000, 12, jnp.float64)
    assert len(profile) == 4
    for l in range(1, 4):
        cut = lticl.Params("diag", 5, params.p[:l], params.q[:l])
        ev = lticl.adjusted_loss(functools.partial(lticl.weights, cut), key, "uniform:1", 2000, 12, 5, jnp.float64)
        assert np.isclose(profile[l].mean, ev.mean, rtol=1e-10)
    # layer 0 predicts 0: mean ½‖w‖² − oracle
    zero = lticl.adjusted_loss(lambda x, y: jnp.zeros(x.shape[::2], x.dtype), key, "uniform:1", 2000, 12, 5, jnp.float64)
    assert np.isclose(profile[0].mean, zero.mean, rtol=1e-10)
    # GD-like layers improve layer by layer
    assert all(a.mean > b.mean for a, b in zip(profile, profile[1:]))


def test_per_variance_profile():
    sigmas = [0.0, 1.0, 3.0]
    prof = lticl.per_variance_profile(functools.partial(bl.ridge, penalty=1.0), jax.random.key(3), sigmas, 5000, 20, 10, jnp.float64)
    assert len(prof) == 3
    # ridge with r = 1 is the oracle at σ = 1 exactly, and worse elsewhere
    assert prof[1].mean == 0.0 and prof[0].mean > 0 and prof[2].mean > 0
