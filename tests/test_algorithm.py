"""lticl.algorithm: the learned algorithm as a NumPy solver, and `lticl compare`."""

import json
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lticl
from conftest import N, gd_like_params, run_cli, slow_unless
from lticl.algorithm import algorithm, diabetes_problems
from lticl.tasks import sample_tasks


@pytest.mark.parametrize("variant,heads,n", slow_unless(
    [(v, h, n) for v, h in [("full", 1), ("full", 2), ("diag", 2), ("gdpp", 1)] for n in (N, 7, 60)],
    {("diag", 2, 7)}))
def test_solver_equals_the_model(key, variant, heads, n):
    """<solve(X, y), x_query> equals the token-form model's ŷ to 1e-6 (float64), at
    the trained n and at others."""
    params = gd_like_params(key, variant, 5, 6, heads, N)
    t = sample_tasks(jax.random.key(7), "uniform:3", 24, n, 6, jnp.float64)
    w = algorithm(params)(np.asarray(t.x), np.asarray(t.y))
    want = np.asarray(lticl.predict(params, t.x, t.y, t.x_query, form="tokens"))
    np.testing.assert_allclose(np.einsum("bd,bd->b", w, t.x_query), want, rtol=1e-6, atol=1e-9)


def test_solver_takes_one_problem_or_a_file(tmp_path, key):
    params = gd_like_params(key, "diag", 3, 4, 1, N, jnp.float32)
    path = lticl.save_npz(params, tmp_path / "m.npz")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(9, 4)), rng.normal(size=9)
    one = algorithm(path)(X, y)
    assert one.shape == (4,)
    np.testing.assert_allclose(one, algorithm(params)(X[None], y[None])[0])
    with pytest.raises(ValueError, match="expected X"):
        algorithm(params)(X[:, :3], y)


@pytest.mark.slow
def test_rescaled_gram_equals_the_model_on_rescaled_data(key):
    """algorithm(model, trained_n) on n points = the model on the data times √(trained_n/n)
    (the query unscaled): G scales by trained_n/n, and only G enters the layers."""
    params = gd_like_params(key, "full", 4, 5, 1, N)
    n = 80
    t = sample_tasks(jax.random.key(2), "uniform:2", 16, n, 5, jnp.float64)
    c = (N / n) ** 0.5
    np.testing.assert_allclose(algorithm(params, N)(np.asarray(t.x), np.asarray(t.y)),
                               lticl.weights(params, c * t.x, c * t.y), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(algorithm(params, n)(np.asarray(t.x), np.asarray(t.y)),
                               algorithm(params)(np.asarray(t.x), np.asarray(t.y)), rtol=1e-12)


def test_diabetes_problems_hold_out_their_test_points():
    ps = diabetes_problems(problems=5, n=20, seed=0)
    assert ps.x.shape == (5, 20, 10) and ps.x_test.shape == (5, 422, 10)
    for b in range(5):
        rows = {tuple(r) for r in np.round(ps.x[b], 12)}
        assert not rows & {tuple(r) for r in np.round(ps.x_test[b], 12)}
    # the zero predictor's loss is half the standardised target's second moment (≈ ½)
    assert ps.losses(np.zeros((5, 10))).mean() == pytest.approx(0.5, rel=0.1)


@pytest.mark.slow
def test_compare_cli_runs_the_suite(tmp_path, key):
    params = lticl.gd_init(key, "diag", 3, 10, 1, 1 / 31, 0.0)
    path = lticl.save_npz(params, tmp_path / "model.npz")
    r = run_cli("compare", path, "--noise", "uniform:2", "--problems", "300", "--format", "json", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    rows = {row["problems"]: row for row in json.loads(r.stdout)}
    assert (tmp_path / "compare.md").read_text().count("| diabetes (n=") == 2
    assert {"uniform:2, n=20", "uniform:2, n=80", "σ = 3 (outside training), n=20", "diabetes (n=20)"} <= set(rows)
    for name, row in rows.items():
        if "oracle" in row:  # the posterior mean beats OLS wherever there is noise
            assert row["oracle"] < row["ols"], name
    assert rows["diabetes (n=40)"]["ols"] < rows["diabetes (n=20)"]["ols"]
    # on the training n, the rescaled variant is the model itself
    assert rows["uniform:2, n=20"]["model"] == rows["uniform:2, n=20"]["model, G·n₀/n"]


@pytest.mark.slow
def test_compare_cli_sets_models_side_by_side_on_a_grid(tmp_path, key):
    """Two models (plain and normalised) on an n × σ grid of adjusted losses: one row
    per (σ, n); the oracle's adjusted loss would be 0, so every solver's is ≥ 0 up to
    rounding, OLS is exactly 0 on noiseless problems with n ≥ d, and the normalised
    GD start improves from n = 10 to n = 80 while the plain one does not."""
    plain = lticl.gd_init(key, "diag", 3, 10, 1, 1 / 31, 0.0)
    norm = lticl.gd_init(key, "diag", 3, 10, 1, 10 / 21, 0.0)  # the step of n = 10, on G/n
    norm = replace(norm, normalised=True)
    paths = [lticl.save_npz(plain, tmp_path / "plain" / "model.npz"), lticl.save_npz(norm, tmp_path / "norm.npz")]
    r = run_cli("compare", *paths, "--n", "10", "--n", "80", "--sigma", "0", "--sigma", "2", "--adjusted",
                "--problems", "300", "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = {row["problems"]: row for row in json.loads(r.stdout)}
    assert set(rows) == {f"σ = {s}, n={n}" for s in (0, 2) for n in (10, 80)}
    for name, row in rows.items():
        assert {"plain", "norm", "ols", "tunedrr"} <= set(row) and "plain, G·n₀/n" not in row
        assert row["norm"] >= -1e-9 and row["plain"] >= -1e-9, name
    assert abs(rows["σ = 0, n=80"]["ols"]) < 1e-9
    for s in (0, 2):
        assert rows[f"σ = {s}, n=80"]["norm"] < rows[f"σ = {s}, n=10"]["norm"]
        assert rows[f"σ = {s}, n=80"]["plain"] > rows[f"σ = {s}, n=10"]["plain"]
    r = run_cli("compare", paths[0], "--adjusted")
    assert r.returncode == 2 and "--adjusted needs --n or --sigma" in r.stderr
