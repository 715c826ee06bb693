"""Other context lengths: contexts of different sizes padded into one batch
(`lengths`), attention normalised by the context length (Params.normalised), and
training on a range of n (TrainConfig n = "a..b")."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import D, gd_like_params, slow_unless

import lticl
from lticl import kernel
from lticl.config import TrainConfig, parse_n
from lticl.engine import batch_data, init_state, loss_and_grad, training_batch
from lticl.io import load_npz, save_npz
from lticl.metrics import sequence_loss
from lticl.model import weights
from lticl.rundir import config_hash
from lticl.tasks import sample_tasks

FORMS = {"full": ("tokens", "gram"), "diag": ("tokens", "gram", "omega"), "gdpp": ("tokens", "gram", "omega")}
CASES = [(v, normalised) for v in FORMS for normalised in (False, True)]


def model(variant, layers=3, heads=2, normalised=False, n=20):
    params = gd_like_params(jax.random.key(3), variant, layers, D, heads, n)
    if not normalised:
        return params
    return replace(params, p=params.p * n**0.5, q=params.q * n**0.5, normalised=True)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize("variant,normalised", slow_unless(CASES, [("full", True), ("diag", False)]))
def test_a_padded_sequence_is_the_short_one(variant, normalised):
    """In float64, a sequence of m points padded to 30 with garbage and given
    lengths = m predicts what the m-point sequence alone predicts, to 1e-10, in
    every form, and its implicit regressor is the same."""
    params = model(variant, normalised=normalised)
    t = sample_tasks(jax.random.key(1), "uniform:3", 6, 30, D, jnp.float64)
    lengths = jnp.array([5, 10, 17, 20, 29, 30])
    for form in FORMS[variant]:
        padded = lticl.predict(params, t.x, t.y, t.x_query, form, lengths=lengths)
        alone = [lticl.predict(params, t.x[b:b + 1, :m], t.y[b:b + 1, :m], t.x_query[b:b + 1], form)[0]
                 for b, m in enumerate(lengths.tolist())]
        assert rel_err(padded, jnp.stack(alone)) <= 1e-10, form
    w = lticl.implicit_state(params, t.x, t.y, lengths).w[-1]
    assert rel_err(w, weights(params, t.x, t.y, lengths)) <= 1e-10
    assert rel_err(weights(params, t.x[4:5, :29], t.y[4:5, :29])[0], w[4]) <= 1e-10


@pytest.mark.parametrize("variant", slow_unless(list(FORMS), ["gdpp"]))
@pytest.mark.parametrize("n", [10, 40])
def test_normalised_attention_is_the_plain_model_on_mean_sums(variant, n):
    """A normalised model with parameters (√n p, √n q) predicts at n what the plain
    model (p, q) predicts, in every form, and what the plain model with the same
    parameters predicts on the context divided by √n (G/n), to 1e-10 in float64.
    The NumPy solver of lticl.algorithm agrees with both."""
    plain = model(variant, n=n)
    norm = model(variant, normalised=True, n=n)
    t = sample_tasks(jax.random.key(2), "uniform:3", 16, n, D, jnp.float64)
    reference = lticl.predict(plain, t.x, t.y, t.x_query, "gram")
    for form in FORMS[variant]:
        assert rel_err(lticl.predict(norm, t.x, t.y, t.x_query, form), reference) <= 1e-10, form
    same = replace(norm, normalised=False)
    on_means = lticl.predict(same, t.x / n**0.5, t.y / n**0.5, t.x_query, "gram")
    assert rel_err(lticl.predict(norm, t.x, t.y, t.x_query), on_means) <= 1e-10
    solver = lticl.algorithm(norm)
    assert rel_err(jnp.einsum("bd,bd->b", solver(t.x, t.y), t.x_query), reference) <= 1e-10
    with pytest.raises(ValueError, match="normalised"):
        lticl.algorithm(norm, trained_n=20)


@pytest.mark.parametrize("variant", slow_unless(list(FORMS), ["full"]))
def test_the_hand_gradient_takes_lengths_and_normalisation(variant):
    """The engine's hand-derived gradient with padded lengths on a normalised model
    equals autodiff through model.weights, to 1e-10 relative in float64."""
    params = model(variant, layers=4, heads=1, normalised=True)
    t = sample_tasks(jax.random.key(4), "uniform:5", 32, 40, D, jnp.float64)
    lengths = jax.random.randint(jax.random.key(5), (32,), 10, 41)
    loss_of_w = lambda w: jnp.mean(sequence_loss(w, t.w))
    ref_loss, ref_grad = jax.value_and_grad(lambda p: loss_of_w(weights(p, t.x, t.y, lengths)))(params)
    loss, grad = jax.jit(kernel.value_and_grad, static_argnums=3)(params, t.x, t.y, loss_of_w, lengths)
    assert abs(float(loss - ref_loss)) <= 1e-10 * abs(float(ref_loss))
    for a, b in zip(jax.tree.leaves(ref_grad), jax.tree.leaves(grad)):
        assert float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))) <= 1e-10


def test_bad_lengths_are_refused():
    params = model("full")
    t = sample_tasks(jax.random.key(1), "uniform:3", 4, 10, D, jnp.float64)
    for lengths, match in (([1, 2, 3], "shape"), ([0, 2, 3, 4], "1..n"), ([2, 3, 4, 11], "1..n"),
                           ([1.0, 2.0, 3.0, 4.0], "integers")):
        with pytest.raises(ValueError, match=match):
            lticl.predict(params, t.x, t.y, t.x_query, lengths=jnp.asarray(lengths))


def test_a_normalised_model_file_round_trips(tmp_path):
    """The flag is kept; a file without it (every earlier file) is a plain model."""
    norm = model("diag", normalised=True)
    loaded = load_npz(save_npz(norm, tmp_path / "norm.npz"))
    assert loaded.normalised and np.allclose(loaded.p, norm.p)
    assert not load_npz(save_npz(replace(norm, normalised=False), tmp_path / "plain.npz")).normalised
    f = dict(np.load(tmp_path / "norm.npz"))
    np.savez(tmp_path / "bad.npz", **(f | {"normalised": np.asarray([1, 0])}))
    with pytest.raises(ValueError, match="bad.npz.*normalised"):
        load_npz(tmp_path / "bad.npz")


def test_context_length_ranges_in_configs():
    assert parse_n("20") == (20, 20) and parse_n("10..100") == (10, 100) and parse_n(" 5..5 ") == (5, 5)
    for bad in ("", "0..10", "10..5", "a..b", "1..2..3", "-3"):
        with pytest.raises(ValueError, match="n must be"):
            parse_n(bad)
    c = TrainConfig("full", 7, n="10..100")
    assert (c.n, c.n_min, c.context_lengths) == (100, 10, (10, 100))
    assert TrainConfig("full", 7, n="20..20") == TrainConfig("full", 7)
    assert TrainConfig("full", 7, n=20, n_min=20) == TrainConfig("full", 7)
    with pytest.raises(ValueError, match="n_min"):
        TrainConfig("full", 7, n=20, n_min=30)
    with pytest.raises(ValueError, match="one context length"):
        TrainConfig("full", 7, n="10..40", stratum=64)
    with pytest.raises(ValueError, match="normalised"):
        TrainConfig("full", 7, normalised="yes")
    # Off, the new fields leave a config's hash, and so its run directory, as it was
    # before they existed: these hashes are lticl's at b273160, the commit before them.
    assert config_hash(TrainConfig("full", 7)) == "eb758fc9498d"
    assert config_hash(TrainConfig("diag", 3, "categorical:1,3", steps=500, stratum=64,
                                   stratum_fraction=0.05)) == "3ec5e1b39f3b"
    base = TrainConfig("full", 7)
    assert len({config_hash(base), config_hash(replace(base, normalised=True)), config_hash(c)}) == 3


@pytest.mark.slow
def test_range_training_batches_and_starts():
    """A range config draws lengths over its whole range; a normalised model's GD
    start, built for the smallest length, stays below the loss of predicting 0 (d/2)
    at both ends of the range, while the plain start built for n_max does too."""
    for normalised in (False, True):
        c = TrainConfig("full", 7, "uniform:5", n="10..100", normalised=normalised, batch=2048)
        state = jax.tree.map(lambda a: a[0], init_state(c))
        assert state.params.normalised == normalised
        t, weight, lengths = training_batch(c, jax.random.key(0), *batch_data(state))
        assert t.x.shape[1] == 100 and lengths.min() == 10 and lengths.max() == 100
        for n in (10, 100):
            t = sample_tasks(jax.random.key(n), "uniform:5", 4000, n, D)
            loss = float(jnp.mean(sequence_loss(weights(state.params, t.x, t.y), t.w)))
            assert loss < D / 2, (normalised, n, loss)


@pytest.mark.parametrize("normalised", slow_unless([False, True], [True]))
def test_the_range_objective_matches_its_reference(normalised):
    """The range objective (lengths drawn per sequence) by kernel and by autodiff,
    float32 parameters: loss to 1e-5, gradient to 1e-3 relative per leaf."""
    c = TrainConfig("diag", 3, "uniform:5", n="10..60", normalised=normalised, batch=256)
    state = jax.tree.map(lambda a: a[0], init_state(c))
    args = (jax.random.key(4), *batch_data(state))
    (l_ref, g_ref), (l_new, g_new) = (jax.jit(loss_and_grad(c, r))(state.params, *args) for r in (True, False))
    assert abs(float(l_new - l_ref)) <= 1e-5 * abs(float(l_ref))
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_new)):
        assert float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))) <= 1e-3


@pytest.mark.slow
def test_a_normalised_range_model_improves_with_n_and_a_fixed_one_does_not():
    """The claim of docs/inspect.md §5 at a small budget: DIAG-3 trained on n = 10..60
    with normalised attention has a lower loss at n = 120 (beyond its range) than at
    n = 20, at σ = 0.5 and 2; trained at n = 20 alone without normalisation, its loss
    at n = 120 is higher than at n = 20 (its steps are too large for G at 120)."""
    from lticl.algorithm import algorithm, compare, grid_problem_sets
    from lticl.train import train

    small = dict(steps=300, batch=256, validation_sequences=2000, evaluation_sequences=2000, tail_sequences=20_000)
    ranged = train(TrainConfig("diag", 3, "uniform:3", n="10..60", normalised=True, **small)).params
    fixed = train(TrainConfig("diag", 3, "uniform:3", **small)).params
    rows = compare({"ranged": algorithm(ranged), "fixed": algorithm(fixed)},
                   grid_problem_sets([20, 120], [0.5, 2.0], "uniform:3", D, 1000))
    loss = {(r["problems"].split(", ")[0], r["n"]): r for r in rows}
    for s in ("σ = 0.5", "σ = 2"):
        assert loss[s, 120]["ranged"] < loss[s, 20]["ranged"], s
        assert not loss[s, 120]["fixed"] < loss[s, 20]["fixed"], s
