"""lticl.inspection and `lticl inspect`: ω values, FULL diagonality, per-layer
regressors and the momentum view, checked in float64 against the model's own forms."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lticl
from conftest import N, assert_one_line_error, gd_like_params, run_cli, slow_unless
from lticl import inspection
from lticl.params import Params, truncate
from lticl.tasks import sample_tasks


@pytest.mark.parametrize("variant,heads", slow_unless([("full", 2), ("diag", 2), ("gdpp", 1)], {("diag", 2)}))
def test_per_layer_predictions_equal_the_truncated_token_model(key, variant, heads):
    params = gd_like_params(key, variant, 4, 5, heads, N)
    t = sample_tasks(jax.random.key(1), "uniform:2", 16, N, 5, jnp.float64)
    per_layer = inspection.truncated_predictions(params, t.x, t.y, t.x_query)
    for l in range(1, 5):
        tokens = lticl.predict(truncate(params, l), t.x, t.y, t.x_query, form="tokens")
        np.testing.assert_allclose(per_layer[l - 1], tokens, rtol=1e-10, atol=1e-12)


def test_truncate_rejects_bad_depths(key):
    params = gd_like_params(key, "diag", 3, 4, 1, N)
    for bad in (0, 4):
        with pytest.raises(ValueError, match="1..3"):
            truncate(params, bad)


@pytest.mark.parametrize("variant,heads", slow_unless([("diag", 1), ("diag", 3), ("gdpp", 2)], {("diag", 3)}))
def test_momentum_view_is_an_exact_decomposition(key, variant, heads):
    """docs/math.md §4: α^l = (M + u w_olsᵀ) Σ (a w_ols − w) + a ρ u, and the update of w^l is
    exactly rescale + gradient + momentum (paper's Lemma 4.4)."""
    params = gd_like_params(key, variant, 5, 6, heads, N)
    t = sample_tasks(jax.random.key(3), "uniform:4", 32, N, 6, jnp.float64)
    m = inspection.momentum_terms(params, t.x, t.y)
    scale = float(jnp.max(jnp.abs(m["delta"])))
    assert 1e-3 < scale < 1e3  # the layers move w, and stay bounded
    np.testing.assert_allclose(m["alpha_identity"], m["alpha"], rtol=0, atol=1e-10 * float(jnp.max(jnp.abs(m["alpha"]))))
    np.testing.assert_allclose(m["rescale"] + m["gradient"] + m["momentum"], m["delta"], rtol=0, atol=1e-10 * scale)
    # momentum is carried by u, which starts at 0 and is fed only by ω_xy: none in
    # layer 0, and none at all in GD++ (q_y = 0 makes ω_xy = 0)
    assert float(jnp.max(jnp.abs(m["momentum"][0]))) == 0.0
    later = float(jnp.max(jnp.abs(m["momentum"][1:])))
    assert later == 0.0 if variant == "gdpp" else later > 1e-6 * scale


def test_momentum_view_needs_omegas(key):
    params = gd_like_params(key, "full", 2, 4, 1, N)
    t = sample_tasks(key, "uniform:1", 4, N, 4, jnp.float64)
    with pytest.raises(ValueError, match="diag or gdpp"):
        inspection.momentum_terms(params, t.x, t.y)


def test_diagonality_sees_a_low_rank_remainder(key):
    """P = DIAG form + a rank-one part outside it: diagonal share < 1, remainder rank 1;
    a DIAG model's own matrices: share 1, rank 0, and nearest_diag gives back its ω."""
    d = 6
    diag = lticl.gd_init(key, "diag", 2, d, 1, 0.05, 0.5, jnp.float64)
    P, Q = (np.asarray(a) for a in lticl.full_matrices(diag))
    dg = inspection.diagonality(P)
    np.testing.assert_allclose(dg.fraction, 1.0, atol=1e-12)
    assert (dg.rank == 0).all()
    np.testing.assert_allclose(lticl.omegas(inspection.nearest_diag(diag)), lticl.omegas(diag), atol=1e-14)
    # a rank-one part with no DIAG component: the x-rows of the last column (as in Figure 4)
    u = np.asarray(jax.random.normal(jax.random.key(5), (d,)))
    bumped = P.copy()
    bumped[1, 0, :d, d] += 2 * np.abs(P[1, 0]).max() * u / np.linalg.norm(u)
    dg = inspection.diagonality(bumped)
    assert dg.rank.tolist() == [0, 1] and dg.fraction[0] == pytest.approx(1.0) and dg.fraction[1] < 0.95


def test_one_head_is_rank_one_and_two_heads_need_not_be(key):
    one = lticl.gd_init(key, "diag", 3, 4, 1, 0.05, 1.0, jnp.float64)
    two = lticl.gd_init(key, "diag", 3, 4, 2, 0.05, 1.0, jnp.float64)
    assert np.abs(inspection.head_omegas(one)[..., 0] * inspection.head_omegas(one)[..., 3]
                  - inspection.head_omegas(one)[..., 1] * inspection.head_omegas(one)[..., 2]).max() < 1e-15
    w = np.asarray(lticl.omegas(two))
    assert np.abs(w[:, 0] * w[:, 3] - w[:, 1] * w[:, 2]).max() > 1e-6


@pytest.mark.slow
def test_inspect_cli_reports_the_stored_omegas(tmp_path, key):
    """`lticl inspect --format json` on an exported DIAG model: ω equal to those computed
    directly from the stored P and Q; one adjusted loss per layer; figures written."""
    params = gd_like_params(key, "diag", 3, 10, 2, N, jnp.float32)
    path = lticl.save_npz(params, tmp_path / "model.npz")
    r = run_cli("inspect", path, "--format", "json", "--sequences", "500", "--noise", "uniform:2", "--out", tmp_path / "ins")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    with np.load(path) as f:
        P, Q = f["P"].astype(np.float64), f["Q"].astype(np.float64)
    d = P.shape[-1] - 1
    direct = np.stack([(P[..., 0, 0] * Q[..., 0, 0]).sum(-1), (P[..., 0, 0] * Q[..., d, d]).sum(-1),
                       (P[..., d, d] * Q[..., 0, 0]).sum(-1), (P[..., d, d] * Q[..., d, d]).sum(-1)], -1)
    np.testing.assert_allclose(got["omega"], direct, rtol=1e-6, atol=1e-9)
    assert len(got["layer_adjusted_loss"]) == 3 and all(np.isfinite(got["layer_adjusted_loss"]))
    # a GD-like model improves layer by layer on its own noise setting
    assert got["layer_adjusted_loss"][-1] < got["layer_adjusted_loss"][0]
    for name in ("inspect.json", "heatmaps.png", "heatmaps.pdf", "momentum.png", "momentum.pdf"):
        assert (tmp_path / "ins" / name).stat().st_size > 0


def test_inspect_full_model_reports_diagonality(key):
    """A FULL model that is secretly DIAG: diagonal share 1, remainder rank 0, and the
    ω of its nearest DIAG model are its own."""
    diag = lticl.gd_init(key, "diag", 2, 5, 1, 0.03, 0.3, jnp.float64)
    full = Params("full", 5, *lticl.full_matrices(diag))
    ins = inspection.inspect_model(full, "uniform:1", sequences=200)
    d = ins.to_dict()
    assert d["P"]["remainder_rank"] == [0, 0] and d["Q"]["remainder_rank"] == [0, 0]
    np.testing.assert_allclose(d["P"]["diagonal_fraction"], 1.0)
    np.testing.assert_allclose(ins.omega, lticl.omegas(diag), atol=1e-14)
    ref = inspection.inspect_model(diag, "uniform:1", sequences=200)
    np.testing.assert_allclose([e.mean for e in ins.layer_adjusted_loss], [e.mean for e in ref.layer_adjusted_loss], rtol=1e-9)


@pytest.mark.slow
def test_inspect_cli_bad_input(tmp_path):
    assert_one_line_error(run_cli("inspect", tmp_path / "missing.npz"), "no such file")
    (tmp_path / "junk.npz").write_text("not a zip")
    assert_one_line_error(run_cli("inspect", tmp_path / "junk.npz"), "not a readable .npz")
