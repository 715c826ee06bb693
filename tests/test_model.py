import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from conftest import D, N, gd_like_params, slow_unless

import lticl
from lticl.model import gram, layer_mixes
from lticl.params import as_diag, as_full, full_matrices

CASES = [(v, L, H) for v in lticl.VARIANTS for L, H in [(1, 1), (2, 3), (4, 2), (7, 1), (7, 3)]]
TOL = {jnp.float64: 1e-10, jnp.float32: 1e-4}


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def setup(variant, layers, heads, dtype, noise="uniform:3", batch=64, n=N, d=D):
    params = gd_like_params(jax.random.key(layers * 10 + heads), variant, layers, d, heads, n, dtype)
    tasks = lticl.sample_tasks(jax.random.key(1), noise, batch, n, d, dtype)
    return params, tasks


@pytest.mark.parametrize("variant,layers,heads,dtype", slow_unless(
    [c + (t,) for c in CASES for t in (jnp.float64, jnp.float32)],
    {("full", 2, 3, jnp.float64), ("diag", 7, 3, jnp.float32)}))
def test_token_gram_implicit_forms_agree(variant, layers, heads, dtype):
    params, t = setup(variant, layers, heads, dtype)
    tokens = lticl.predict(params, t.x, t.y, t.x_query, form="tokens")
    assert tokens.dtype == dtype and tokens.shape == (t.batch,)
    # Compared where the dynamics stay bounded, so that one blown-up sequence (a GD step
    # past 2/λ_max on a rare spectrum) does not set the scale of the relative error.
    bounded = np.abs(np.asarray(tokens)) < 1e4
    assert bounded.mean() >= 0.9
    gram_ = lticl.predict(params, t.x, t.y, t.x_query, form="gram")
    final = jnp.einsum("bd,bd->b", lticl.weights(params, t.x, t.y), t.x_query)
    implicit = jnp.einsum("bd,bd->b", lticl.implicit_state(params, t.x, t.y).w[-1], t.x_query)
    for other in (gram_, final, implicit):
        assert rel_err(np.asarray(other)[bounded], np.asarray(tokens)[bounded]) <= TOL[dtype]


@pytest.mark.parametrize("variant,layers,heads", slow_unless(CASES, {("full", 4, 2), ("diag", 2, 3), ("gdpp", 7, 3)}))
def test_float32_matches_float64_reference(variant, layers, heads):
    params, t = setup(variant, layers, heads, jnp.float64)
    ref = lticl.predict(params, t.x, t.y, t.x_query, form="tokens")
    p32, t32 = jax.tree.map(lambda a: a.astype(jnp.float32), (params, t))
    for form in ("tokens", "gram"):
        assert rel_err(lticl.predict(p32, t32.x, t32.y, t32.x_query, form=form), ref) <= 1e-4


@pytest.mark.parametrize("variant,layers,heads", [c for c in CASES if c[0] != "full"])
def test_diag_closed_form_equals_tokens(variant, layers, heads):
    params, t = setup(variant, layers, heads, jnp.float64)
    omega_form = lticl.predict(params, t.x, t.y, t.x_query, form="omega")
    assert rel_err(omega_form, lticl.predict(params, t.x, t.y, t.x_query, form="tokens")) <= 1e-10


def test_diag_layer_literally_as_spec(key):
    """docs/math.md §3 written out once more by hand for one layer, one token at a time."""
    params, t = setup("diag", 1, 2, jnp.float64, batch=3)
    w_xx, w_xy, w_yx, w_yy = np.asarray(lticl.omegas(params)[0])
    for b in range(t.batch):
        x, y = np.asarray(t.x[b]), np.asarray(t.y[b])
        Sigma, alpha, lam = x.T @ x, x.T @ y, y @ y
        xq = np.asarray(t.x_query[b])
        # the query's y is 0, so only the ω_yx term moves it
        y_q = 0 + w_yx * alpha @ xq + w_yy * lam * 0
        assert np.isclose(-y_q, float(lticl.predict(params, t.x, t.y, t.x_query)[b]), rtol=1e-12)
        x_new = x + w_xx * x @ Sigma + w_xy * y[:, None] * alpha
        y_new = y + w_yx * x @ alpha + w_yy * lam * y
        K = np.asarray(layer_mixes(params, gram(t.x, t.y))[0, b])
        T = np.eye(D + 1) + K  # the Gram form's matrix moves each token the same way
        moved = np.concatenate([x, y[:, None]], 1) @ T.T
        np.testing.assert_allclose(moved, np.concatenate([x_new, y_new[:, None]], 1), rtol=1e-10, atol=1e-10)


def test_implicit_state_reproduces_every_layer(key):
    """x_i^l = M^l x_i + y_i u^l and y_i^l = a^l y_i − <w^l, x_i> for every layer and
    token, checked against the token form run for l layers."""
    params, t = setup("full", 4, 2, jnp.float64, batch=8)
    M, u, a, w = lticl.implicit_state(params, t.x, t.y)
    assert M.shape == (5, 8, D, D) and u.shape == (5, 8, D) and a.shape == (5, 8) and w.shape == (5, 8, D)
    P, Q = full_matrices(params)
    e = jnp.concatenate([t.x, t.y[..., None]], -1)
    for l in range(5):
        x_l = jnp.einsum("bij,bnj->bni", M[l], t.x) + t.y[..., None] * u[l][:, None]
        y_l = a[l][:, None] * t.y - jnp.einsum("bd,bnd->bn", w[l], t.x)
        assert rel_err(jnp.concatenate([x_l, y_l[..., None]], -1), e) <= 1e-10
        if l < 4:
            G = jnp.einsum("bnd,bne->bde", e, e)
            e = e + jnp.einsum("hij,bjk,hkm,bnm->bni", P[l], G, Q[l], e)
        if l >= 1:  # w^l predicts like the model cut after l layers
            ref = lticl.predict(lticl.Params("full", D, params.p[:l], params.q[:l]), t.x, t.y, t.x_query, "tokens")
            assert rel_err(jnp.einsum("bd,bd->b", w[l], t.x_query), ref) <= 1e-10
    np.testing.assert_array_equal(M[0], np.broadcast_to(np.eye(D), M[0].shape))
    assert float(jnp.abs(w[0]).max()) == 0.0 and float(jnp.abs(a[0] - 1).max()) == 0.0


def test_one_head_omega_identity():
    params = lticl.init_params(jax.random.key(3), "diag", 5, D, heads=1, scale=1.0, dtype=jnp.float64)
    w_xx, w_xy, w_yx, w_yy = np.asarray(lticl.omegas(params)).T
    np.testing.assert_allclose(w_xx * w_yy, w_xy * w_yx, rtol=1e-12)
    two = lticl.init_params(jax.random.key(3), "diag", 5, D, heads=2, scale=1.0, dtype=jnp.float64)
    w_xx, w_xy, w_yx, w_yy = np.asarray(lticl.omegas(two)).T
    assert np.min(np.abs(w_xx * w_yy - w_xy * w_yx)) > 1e-6  # two heads lift the constraint


def test_gdpp_has_no_omega_xy_or_yy():
    params = lticl.init_params(jax.random.key(4), "gdpp", 3, D, heads=2, scale=1.0)
    omega = np.asarray(lticl.omegas(params))
    assert omega.shape == (3, 4)
    assert np.all(omega[:, [1, 3]] == 0) and np.all(omega[:, [0, 2]] != 0)


def test_jit_and_vmap_over_seeds():
    keys = jax.random.split(jax.random.key(5), 4)
    stacked = jax.vmap(lambda k: gd_like_params(k, "diag", 3, D, 1, N))(keys)
    t = lticl.sample_tasks(jax.random.key(6), "uniform:2", 16, N, D, jnp.float64)
    batched = jax.vmap(lambda p: lticl.predict(p, t.x, t.y, t.x_query))(stacked)
    assert batched.shape == (4, 16)
    for i in range(4):
        one = jax.tree.map(lambda a: a[i], stacked)
        assert rel_err(batched[i], lticl.predict(one, t.x, t.y, t.x_query, form="tokens")) <= 1e-10
    jitted = jax.jit(lticl.implicit_state)(jax.tree.map(lambda a: a[0], stacked), t.x, t.y)
    assert rel_err(jitted.w, lticl.implicit_state(jax.tree.map(lambda a: a[0], stacked), t.x, t.y).w) <= 1e-12


@pytest.mark.parametrize("variant", ["diag", "gdpp"])
def test_as_full_is_the_same_model(variant):
    """DIAG and GD++ seeds stacked on a leading axis, rewritten as FULL: each predicts
    what it did, to float64 rounding (a FULL continuation may start from DIAG's model)."""
    keys = jax.random.split(jax.random.key(7), 3)
    stacked = jax.vmap(lambda k: gd_like_params(k, variant, 3, D, 2, N))(keys)
    full = as_full(stacked)
    assert full.variant == "full" and full.p.shape == (3, 3, 2, D + 1, D + 1) and as_full(full) == full
    t = lticl.sample_tasks(jax.random.key(8), "uniform:2", 16, N, D, jnp.float64)
    for i in range(3):
        one, big = (jax.tree.map(lambda a: a[i], m) for m in (stacked, full))
        assert rel_err(lticl.predict(big, t.x, t.y, t.x_query, form="tokens"),
                       lticl.predict(one, t.x, t.y, t.x_query, form="tokens")) <= 1e-12


def test_as_diag_is_the_nearest_diag_model():
    """FULL's P and Q projected onto DIAG's blocks (a DIAG continuation may start from
    FULL's model): a DIAG model written as FULL projects back to itself, and what the
    projection drops is orthogonal to every DIAG model (the x-block's trace and the
    y-entry are kept, the cross blocks dropped)."""
    keys = jax.random.split(jax.random.key(9), 3)
    stacked = jax.vmap(lambda k: gd_like_params(k, "diag", 3, D, 2, N))(keys)
    back = as_diag(as_full(stacked))
    assert back.variant == "diag" and back.p.shape == stacked.p.shape
    np.testing.assert_allclose(back.p, stacked.p, rtol=1e-14, atol=0)
    np.testing.assert_allclose(back.q, stacked.q, rtol=1e-14, atol=0)
    full = jax.vmap(lambda k: gd_like_params(k, "full", 3, D, 2, N))(keys)
    for mine, near in zip((full.p, full.q), full_matrices(as_diag(full))):
        rest = np.asarray(mine - near)
        assert np.abs(np.trace(rest[..., :D, :D], axis1=-2, axis2=-1)).max() <= 1e-14 * np.abs(mine).max()
        assert np.abs(rest[..., D, D]).max() == 0
        assert np.abs(rest).max() > 0.01 * np.abs(mine).max()  # FULL's model is not a DIAG one
    with pytest.raises(ValueError, match="projects a full model"):
        as_diag(stacked)


@pytest.mark.parametrize("n,d", slow_unless([(1, 1), (1, 3), (5, 1), (3, 7)], set()))
def test_any_sizes(n, d):
    for variant in lticl.VARIANTS:
        params = gd_like_params(jax.random.key(7), variant, 2, d, 2, n)
        t = lticl.sample_tasks(jax.random.key(8), "fixed:0.5", 4, n, d, jnp.float64)
        a = lticl.predict(params, t.x, t.y, t.x_query, "tokens")
        assert rel_err(lticl.predict(params, t.x, t.y, t.x_query, "gram"), a) <= 1e-10


def test_init_shapes():
    p = lticl.init_params(jax.random.key(0), "full", 3, 4, heads=2)
    assert p.p.shape == p.q.shape == (3, 2, 5, 5) and p.layers == 3 and p.heads == 2
    P, Q = full_matrices(lticl.init_params(jax.random.key(0), "gd++", 2, 4, heads=3))
    assert P.shape == Q.shape == (2, 3, 5, 5) and float(jnp.abs(Q[..., 4, 4]).max()) == 0.0


@pytest.mark.parametrize("variant", lticl.VARIANTS)
def test_gd_init_rounds_its_perturbation_once(variant):
    """gd_init = GD layers + float32(scale·√η) · N(0, 1), the product taken in float64
    and rounded once, as since its first version: stored runs keep their start (an
    ulp here changes a trained FULL-6 in the fourth digit)."""
    key, eta, scale = jax.random.key(3), 1 / 31, 1e-3
    noise = lticl.init_params(key, variant, 3, D, 2, scale=1.0)
    clean = lticl.gd_init(key, variant, 3, D, 2, eta, 0.0)
    params = lticl.gd_init(key, variant, 3, D, 2, eta, scale)
    amp = np.float32(scale * eta**0.5)
    np.testing.assert_array_equal(params.p, clean.p + amp * noise.p)
    np.testing.assert_array_equal(params.q, clean.q + amp * noise.q)


@pytest.mark.parametrize("variant", lticl.VARIANTS)
@pytest.mark.parametrize("heads", [1, 2])
def test_precondition_init_as_documented(variant, heads):
    """Unperturbed, layers 1..L−1 precondition with γ_l ν_l = strength and take a
    third of the GD step; layer L takes 1/ν_L, where ν_l is the top of the spectrum
    after the earlier maps μ ↦ μ(1 − γμ)² (here found on a grid, not in closed form)."""
    n, d, L, eta, strength = 20, 10, 4, 1 / 31, 0.6
    init = lambda v: lticl.precondition_init(jax.random.key(0), v, L, d, n, heads, eta, strength, dtype=jnp.float64)
    for a, b in zip(full_matrices(init(variant)), full_matrices(init("diag"))):  # one model in every variant
        np.testing.assert_array_equal(a, b)
    omega = np.asarray(lticl.omegas(init("diag")))
    top = (np.sqrt(n) + np.sqrt(d)) ** 2
    for layer in range(L - 1):
        gamma = strength / top
        np.testing.assert_allclose(omega[layer], [-gamma, 0, -eta / 3, 0], rtol=1e-9, atol=1e-15)
        mu = np.linspace(0, top, 200_001)
        top = np.max(mu * (1 - gamma * mu) ** 2)
    np.testing.assert_allclose(omega[-1], [0, 0, -1 / top, 0], rtol=1e-6, atol=1e-15)
    with pytest.raises(ValueError, match="strength"):
        lticl.precondition_init(jax.random.key(0), variant, L, d, n, strength=1.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(variant="softmax"), "unknown variant"),
        (dict(layers=0), "layers must be >= 1"),
        (dict(heads=0), "heads must be >= 1"),
        (dict(d=0), "d must be >= 1"),
        (dict(layers=2.5), "layers must be an integer"),
    ],
)
def test_init_rejects_bad_input(kwargs, match):
    args = dict(key=jax.random.key(0), variant="diag", layers=2, d=3, heads=1) | kwargs
    with pytest.raises(ValueError, match=match):
        lticl.init_params(**args)


def test_predict_rejects_bad_input():
    p = lticl.init_params(jax.random.key(0), "full", 2, 3)
    t = lticl.sample_tasks(jax.random.key(1), "fixed:1", 4, 5, 3)
    with pytest.raises(ValueError, match="y must have shape"):
        lticl.predict(p, t.x, t.y[:, :4], t.x_query)
    with pytest.raises(ValueError, match="x_query must have shape"):
        lticl.predict(p, t.x, t.y, t.x_query[:2])
    with pytest.raises(ValueError, match="built for d = 3"):
        u = lticl.sample_tasks(jax.random.key(1), "fixed:1", 4, 5, 4)
        lticl.predict(p, u.x, u.y, u.x_query)
    with pytest.raises(ValueError, match="x must have shape"):
        lticl.predict(p, t.x[0], t.y, t.x_query)
    with pytest.raises(ValueError, match="unknown form"):
        lticl.predict(p, t.x, t.y, t.x_query, form="fast")
    with pytest.raises(ValueError, match="diag and gdpp"):
        lticl.predict(p, t.x, t.y, t.x_query, form="omega")
    with pytest.raises(ValueError, match="need P and Q of shape"):
        lticl.predict(lticl.Params("full", 3, p.p, p.q[..., :3]), t.x, t.y, t.x_query)
    with pytest.raises(ValueError, match="omega values"):
        lticl.omegas(p)


@pytest.mark.slow
@given(
    variant=st.sampled_from(lticl.VARIANTS),
    layers=st.integers(1, 3),
    heads=st.integers(1, 3),
    batch=st.integers(1, 3),
    n=st.integers(1, 6),
    d=st.integers(1, 4),
)
@settings(max_examples=8, deadline=None)
def test_output_shapes_for_any_sizes(variant, layers, heads, batch, n, d):
    params = lticl.init_params(jax.random.key(0), variant, layers, d, heads)
    t = lticl.sample_tasks(jax.random.key(1), "uniform:1", batch, n, d)
    for form in ("tokens", "gram") + (("omega",) if variant != "full" else ()):
        y_hat = lticl.predict(params, t.x, t.y, t.x_query, form=form)
        assert y_hat.shape == (batch,) and y_hat.dtype == jnp.float32
    M, u, a, w = lticl.implicit_state(params, t.x, t.y)
    assert M.shape == (layers + 1, batch, d, d) and u.shape == w.shape == (layers + 1, batch, d)
    assert a.shape == (layers + 1, batch)
    assert lticl.full_matrices(params)[0].shape == (layers, heads, d + 1, d + 1)
