import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lticl
from conftest import assert_one_line_error, run_cli
from lticl import baselines as bl
from lticl import theorems, theory
from lticl.metrics import oracle_loss
from lticl.tasks import stack_chunks
from lticl.theory import best_one_step_size
from lticl.config import TrainConfig
from lticl.train import train


def test_best_one_layer_loss_is_the_papers_number():
    # docs/math.md §5: ½(d − nd/(n+d+1)) at σ = 0, d = 10, n = 20, which the paper rounds to 1.774.
    assert round(lticl.best_one_layer_loss(20, 10), 3) == 1.774


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["fixed:0", "uniform:3"])
def test_best_one_layer_loss_by_monte_carlo(noise):
    """A 1-layer DIAG model with ω_yx = −η* and the tuned 1-step GD both reach the
    analytic loss within their standard error; η* is where the tuned step lands."""
    s2 = lticl.as_noise(noise).second_moment
    eta = best_one_step_size(20, 10, s2)
    params = lticl.Params("diag", 10, jnp.array([[[0.0, 1.0]]]), jnp.array([[[-eta, 0.0]]]))
    t = stack_chunks(lticl.task_chunks(jax.random.key(0), noise, 200_000, 20, 10, jnp.float64))
    per_seq = np.asarray(lticl.sequence_loss(lticl.weights(params, t.x, t.y), t.w))
    sem = per_seq.std() / np.sqrt(per_seq.size)
    assert abs(per_seq.mean() - lticl.best_one_layer_loss(20, 10, s2)) < 3 * sem
    tuned = bl.tune_gd(stack_chunks(lticl.task_chunks(jax.random.key(1), noise, 50_000, 20, 10)), 1)
    assert abs(tuned / eta - 1) < 0.05


def test_bad_arguments():
    with pytest.raises(ValueError, match="sigma2_mean"):
        lticl.best_one_layer_loss(20, 10, -1)
    with pytest.raises(ValueError, match="n must be >= 1"):
        lticl.best_one_layer_loss(0, 10)


# ------------------------------------------------------------------ the theorems, executable


@pytest.mark.slow
def test_thm42_no_layer_output_aligns_with_a_quadratic_feature():
    """Random models, a perturbed GD model and a trained one: on noiseless data with
    n = 5000 ≫ d = 10 every layer's |cos(y^l, x(1)²)| ≤ 0.1, and never above the
    column-space bound that Thm 4.2's argument gives."""
    trained = train(TrainConfig("full", 2, "uniform:1", batch=256, steps=100, chunk=50, seeds=1,
                                validation_sequences=500, evaluation_sequences=500, tail_sequences=2000)).params
    models = {**theorems.default_thm42_models(), "trained FULL-2": trained}
    rows = theorems.thm42(models, sequences=8)
    assert {r["model"] for r in rows} == set(models)
    for r in rows:
        assert np.isfinite(r["max_abs_cos"]), r
        assert r["max_abs_cos"] <= 0.1, r
        assert r["max_abs_cos"] <= r["bound_max"] + 1e-9, r
    # the bound shrinks like 1/√n: at n = 50 it is far above 0.1, so n ≫ d matters
    assert theorems.thm42(models, n=50, sequences=8)[0]["bound_max"] > 0.2


@pytest.mark.slow
def test_thm51_layers_grow_like_log_kappa_plus_log_log_inverse_epsilon():
    rows = theorems.thm51()
    layers = {(r["kappa"], r["epsilon"]): r["layers"] for r in rows}
    kappas = sorted({k for k, _ in layers})
    epsilons = sorted({e for _, e in layers}, reverse=True)  # 1e-1, 1e-2, 1e-4, 1e-8: each the square of the last
    for k in kappas:
        for e0, e1 in zip(epsilons, epsilons[1:]):
            # squaring ε costs at most 2 more layers (doubly exponential convergence)
            assert 0 <= layers[(k, e1)] - layers[(k, e0)] <= 2, (k, e0, e1)
    for e in epsilons:
        for k0, k1 in zip(kappas, kappas[1:]):
            # 10× the condition number costs about log 10 / log(9/4) ≈ 2.8 more layers
            assert 1 <= layers[(k1, e)] - layers[(k0, e)] <= 4, (e, k0, k1)
    for r in rows:
        # the construction's closed form, the largest residual factor of the final
        # spectrum, bounds the model's measured error (to float64's floor), and is
        # tight: a w drawn at random meets the extreme eigenvectors
        assert 0.5 * r["bound"] - 1e-11 <= r["error"] <= r["bound"] * (1 + 1e-6) + 1e-11, r
        assert r["gd_steps"] > r["layers"]
    big = [r for r in rows if r["kappa"] == max(kappas) and r["epsilon"] == min(epsilons)][0]
    assert big["gd_steps"] > 1000 * big["layers"]


@pytest.mark.slow
def test_thm52_two_layers_converge_to_ridge_for_both_noise_levels():
    rows = theorems.thm52(ns=(10, 100, 1000, 10_000), sequences=16)
    for sigma in (1.0, 3.0):
        err = [r["model_vs_ridge"] for r in rows if r["sigma"] == sigma]
        # squared relative error falls like 1/n: about 10× per decade
        assert all(4 < a / b < 25 for a, b in zip(err, err[1:])), (sigma, err)
        assert err[-1] < 3e-3
    # one GD step alone cannot serve both noise levels: at σ = 3 it stays far off
    assert min(r["one_gd_step_vs_ridge"] for r in rows if r["sigma"] == 3.0) > 1


@pytest.mark.slow
def test_sec53_the_step_shrinks_with_noise():
    rows = theorems.sec53(sequences=2000)
    for r in rows:
        assert r["identity_rel_error"] < 1e-10
    for key in ("step_exact", "step_noise_part"):
        steps = [r[key] for r in rows]
        assert all(a > b for a, b in zip(steps, steps[1:])), key
    assert all(r["loss_model"] < r["loss_plain_gd_step"] for r in rows if r["sigma"] >= 2)


def test_two_noise_omegas_solve_the_papers_equations():
    for n in (10, 1000):
        w_yx, w_yy = theorems.two_noise_omegas(1.0, 3.0, n)
        for s in (1.0, 3.0):
            assert (1 + n * s**2 * w_yy) * -w_yx == pytest.approx(1 / (1 + s**2))
    with pytest.raises(ValueError, match="two different"):
        theorems.two_noise_omegas(2.0, 2.0, 10)


def test_diag_model_rejects_what_one_head_cannot_hold():
    with pytest.raises(ValueError, match="one head cannot hold"):
        theorems.diag_model(3, [{"omega_xx": 1.0, "omega_yx": 1.0}])
    with pytest.raises(ValueError, match="unknown"):
        theorems.diag_model(3, [{"omega_zz": 1.0}])


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), layers=st.integers(1, 5), scale=st.sampled_from([0.05, 0.3]),
       noise=st.sampled_from(["uniform:5", "categorical:1,3", "fixed:2"]))
def test_gdpp_is_linear_in_y_and_never_beats_ridge_at_the_mean_noise(seed, layers, scale, noise):
    """GD++'s regressor is w = F(X) y at any depth, so for every context X its risk
    ½(‖FX − I‖² + E[σ²]‖F‖²) is at least that of ridge with penalty E[σ²]."""
    s2 = lticl.as_noise(noise).second_moment
    with jax.enable_x64(True):
        kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
        params = lticl.init_params(kp, "gdpp", layers, 4, scale=scale, dtype=jnp.float64)
        x = jax.random.normal(kx, (3, 12, 4), jnp.float64)
        y1, y2 = jax.random.normal(ky, (2, 3, 12), jnp.float64)
        F = theory.linear_map(params, x)
        for y in (y1, y2, y1 - 3 * y2):
            w = lticl.weights(params, x, y)
            assert np.allclose(jnp.einsum("bdn,bn->bd", F, y), w, rtol=1e-9, atol=1e-12 * float(jnp.abs(w).max()))
        gdpp, ridge = theory.linear_risk(F, x, s2), theory.linear_risk(theory.ridge_map(x, s2), x, s2)
        assert np.all(np.asarray(gdpp) >= np.asarray(ridge) * (1 - 1e-12))


def test_a_model_that_rescales_y_is_not_linear_in_y():
    """The contrast: with ω_yy ≠ 0 (DIAG) the map y ↦ w is not linear, so the bound does not bind."""
    with jax.enable_x64(True):
        params = theorems.diag_model(4, [{"omega_yy": 0.05}, {"omega_yx": -0.05}])
        x = jax.random.normal(jax.random.key(0), (2, 12, 4), jnp.float64)
        y = jax.random.normal(jax.random.key(1), (2, 12), jnp.float64)
        assert not np.allclose(lticl.weights(params, x, 2 * y), 2 * lticl.weights(params, x, y), rtol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["uniform:5", "categorical:1,3"])
def test_linear_bound_is_the_adjusted_loss_of_ridge_at_the_mean_noise(noise):
    """The closed form in σ and w agrees with a plain Monte Carlo of ridge with
    penalty E[σ²] on sampled tasks, and the bound is 0 for fixed noise (ridge at
    the true σ² is the oracle)."""
    bound, se = theory.linear_bound(noise, sequences=20_000, seed=3)
    t = stack_chunks(lticl.task_chunks(jax.random.key(4), noise, 60_000, 20, 10, jnp.float64))
    w = bl.ridge(t.x, t.y, lticl.as_noise(noise).second_moment)
    per_seq = np.asarray(lticl.sequence_loss(w, t.w) - oracle_loss(t))
    sem = per_seq.std() / np.sqrt(per_seq.size)
    assert abs(per_seq.mean() - bound) < 4 * np.hypot(sem, se)
    assert theory.linear_bound("fixed:2", sequences=100) == (0.0, 0.0)
    with pytest.raises(ValueError, match="closed form"):
        theory.linear_bound(lticl.Custom(lambda k, b, dt: jnp.ones(b, dt), "one", 1.0))


@pytest.mark.slow
def test_the_papers_gdpp_at_uniform_5_is_below_the_bound():
    """Table 1 has GD++ at 0.344 for σ_max = 5 (L ≥ 3) beside CONSTRR at 0.365; no
    model linear in y can go below ridge at E[σ²] ≈ 0.361. At σ_max = 1 it is not."""
    rows = {r["setting"]: r for r in theorems.gdpp_bound(["uniform:1", "uniform:5"], sequences=5000)}
    assert rows["uniform:5"]["paper_below_bound"] and not rows["uniform:1"]["paper_below_bound"]
    assert 0.355 < rows["uniform:5"]["bound"] < 0.365


@pytest.mark.slow
def test_theory_cli(tmp_path):
    r = run_cli("theory", "sec53", "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["sigma"] for row in rows] == [0, 1, 2, 3, 4, 5, 6]
    assert_one_line_error(run_cli("theory", "thm51", "--model", tmp_path / "m.npz"), "thm42 only")
    assert_one_line_error(run_cli("theory", "thm99"), "thm99")
