import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lticl
from lticl import baselines as bl
from lticl.tasks import stack_chunks

N, D = 20, 10


def tasks(noise, sequences, seed=0, n=N, d=D, dtype=jnp.float64):
    return stack_chunks(lticl.task_chunks(jax.random.key(seed), noise, sequences, n, d, dtype))


def loss(w_hat, t):
    return np.asarray(lticl.sequence_loss(w_hat, t.w))


def test_ridge_equals_the_normal_equations():
    t = tasks("uniform:3", 200)
    r = np.linspace(0.1, 5, 200)
    Sigma = np.einsum("bnd,bne->bde", t.x, t.x)
    alpha = np.einsum("bnd,bn->bd", t.x, t.y)
    direct = np.linalg.solve(Sigma + r[:, None, None] * np.eye(D), alpha[..., None])[..., 0]
    np.testing.assert_allclose(bl.ridge(t.x, t.y, r), direct, rtol=1e-9)
    np.testing.assert_allclose(bl.ols(t.x, t.y), np.linalg.solve(Sigma, alpha[..., None])[..., 0], rtol=1e-8)
    np.testing.assert_allclose(bl.oracle(t.x, t.y, t.sigma), bl.ridge(t.x, t.y, t.sigma**2), rtol=1e-12)


def test_ols_is_minimum_norm_when_n_below_d():
    t = tasks("fixed:0.1", 50, n=3, d=6)
    want = np.stack([np.linalg.pinv(np.asarray(x)) @ np.asarray(y) for x, y in zip(t.x, t.y)])
    np.testing.assert_allclose(bl.ols(t.x, t.y), want, rtol=1e-7, atol=1e-10)


def test_gd_equals_explicit_iteration():
    t = tasks("uniform:2", 100)
    eta, k = 0.02, 7
    w = np.zeros((100, D))
    Sigma = np.einsum("bnd,bne->bde", t.x, t.x)
    alpha = np.einsum("bnd,bn->bd", t.x, t.y)
    for _ in range(k):
        w = w + eta * (alpha - np.einsum("bde,be->bd", Sigma, w))
    np.testing.assert_allclose(bl.gd(t.x, t.y, k, eta), w, rtol=1e-9, atol=1e-12)


def test_noise_estimate_is_unbiased():
    t = tasks("fixed:2", 20_000)
    s2 = np.asarray(bl.noise_estimate(t.x, t.y))
    assert abs(s2.mean() - 4.0) < 4 * s2.std() / np.sqrt(s2.size)


def test_tunedrr_penalty_is_capped_multiple():
    t = tasks("uniform:4", 64)
    s2 = bl.noise_estimate(t.x, t.y)
    np.testing.assert_allclose(bl.tunedrr(t.x, t.y, 3.0, 1.5), bl.ridge(t.x, t.y, jnp.minimum(1.5 * s2, 3.0)), rtol=1e-12)
    np.testing.assert_allclose(bl.adarr(t.x, t.y), bl.ridge(t.x, t.y, s2), rtol=1e-12)


def test_iterative_adarr_converges_to_adarr():
    t = tasks("uniform:3", 500)
    exact = bl.adarr(t.x, t.y)
    errors = [float(jnp.max(jnp.abs(bl.adarr_iterative(t.x, t.y, k) - exact))) for k in (10, 100, 1000, 20000)]
    assert all(a > b for a, b in zip(errors, errors[1:]))  # closer with every budget
    assert errors[-1] < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
def test_oracle_is_never_beaten_on_average(sigma):
    """For a fixed σ, ridge with r = σ² is the posterior mean: no method's mean loss
    is lower, up to sampling error (paired differences, 4 standard errors)."""
    tune, ev = tasks(f"fixed:{sigma}", 20_000, seed=1), tasks(f"fixed:{sigma}", 50_000, seed=2)
    fitted = bl.fit(bl.BASELINES, tune)
    ref = loss(bl.oracle(ev.x, ev.y, ev.sigma), ev)
    others = {name: f(ev.x, ev.y) for name, f in fitted.items()}
    others["gd3"] = bl.gd(ev.x, ev.y, 3, bl.tune_gd(tune, 3))
    for name, w_hat in others.items():
        diff = loss(w_hat, ev) - ref
        assert diff.mean() > -4 * diff.std() / np.sqrt(diff.size), name


@pytest.mark.slow
def test_constrr_penalty_is_the_noise_variance():
    for sigma in (0.5, 2.0):  # fixed σ: the oracle penalty exactly
        r = bl.tune_constrr(tasks(f"fixed:{sigma}", 50_000, seed=3))
        assert abs(r / sigma**2 - 1) < 0.05
    for spec in ("uniform:5", "categorical:1,3"):  # mixtures: close to E[σ²]
        r = bl.tune_constrr(tasks(spec, 50_000, seed=4))
        assert abs(r / lticl.as_noise(spec).second_moment - 1) < 0.05
    assert bl.tune_constrr(tasks("fixed:0", 5000)) < 1e-3


@pytest.mark.slow
def test_tuning_finds_the_minimum():
    """The tuned penalty beats its neighbours on the tuning set itself."""
    t = tasks("uniform:3", 20_000, seed=5)
    r = bl.tune_constrr(t)
    mean = lambda p: loss(bl.ridge(t.x, t.y, p), t).mean()
    assert mean(r) <= min(mean(0.9 * r), mean(1.1 * r))
    cap, mult = bl.tune_tunedrr(t)
    m = lambda c, m: loss(bl.tunedrr(t.x, t.y, c, m), t).mean()
    assert m(cap, mult) <= min(m(0.9 * cap, mult), m(1.1 * cap, mult), m(cap, 0.9 * mult), m(cap, 1.1 * mult))


def test_baselines_reject_bad_input():
    t = tasks("fixed:1", 4, n=5, d=5)
    for f in (bl.adarr, lambda x, y: bl.tunedrr(x, y, 1.0, 1.0), bl.adarr_iterative, bl.noise_estimate):
        with pytest.raises(ValueError, match="needs n > d"):
            f(t.x, t.y)
    with pytest.raises(ValueError, match="y must have shape"):
        bl.ridge(t.x, t.y[:, :3], 1.0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        bl.gd(t.x, t.y, 0, 0.1)
    with pytest.raises(ValueError, match="unknown baseline"):
        bl.fit(["ridge9"], t)
