"""The engine's hand-derived gradient (lticl.kernel) against autodiff through
model.weights (the reference path), and the fast engine against the reference one."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import N, D, gd_like_params, slow_unless
from lticl import kernel
from lticl.config import TrainConfig
from lticl.engine import batch_data, init_state, loss_and_grad, run_steps
from lticl.metrics import sequence_loss
from lticl.model import weights
from lticl.tasks import sample_tasks


def relative_error(a, b):
    """Largest |a − b| over the tree, relative to the largest |a| of the same leaf."""
    return max(float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(x))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


CASES = [(v, layers, heads) for v in ("full", "diag", "gdpp") for layers in (1, 3, 7) for heads in (1, 2)]


@pytest.mark.parametrize("variant,layers,heads", slow_unless(CASES, [("full", 3, 2), ("diag", 7, 1), ("gdpp", 3, 1)]))
def test_the_hand_derived_gradient_equals_autodiff_in_float64(variant, layers, heads):
    """Loss and gradient of a weighted query-averaged loss agree with autodiff
    through model.weights to 1e-10, relative, in float64 (observed ~1e-15)."""
    params = gd_like_params(jax.random.key(1), variant, layers, D, heads, N)
    t = sample_tasks(jax.random.key(2), "uniform:5", 64, N, D, jnp.float64)
    weight = jnp.linspace(0.5, 1.5, 64)
    loss_of_w = lambda w: jnp.mean(weight * sequence_loss(w, t.w))
    ref_loss, ref_grad = jax.value_and_grad(lambda p: loss_of_w(weights(p, t.x, t.y)))(params)
    loss, grad = jax.jit(kernel.value_and_grad, static_argnums=3)(params, t.x, t.y, loss_of_w)
    assert loss.dtype == jnp.float64 and jax.tree.leaves(grad)[0].dtype == jnp.float64
    assert abs(float(loss - ref_loss)) <= 1e-10 * abs(float(ref_loss))
    assert relative_error(ref_grad, grad) <= 1e-10


@pytest.mark.parametrize("variant,layers,heads", slow_unless(CASES, [("full", 7, 2), ("diag", 3, 1), ("gdpp", 7, 1)]))
def test_the_kernel_forward_equals_the_reference_in_float64(variant, layers, heads):
    """kernel.weights, which selection and evaluation use, equals model.weights to
    1e-10 relative in float64, with and without per-sequence
    lengths, for the paper's model and a normalised one."""
    params = gd_like_params(jax.random.key(1), variant, layers, D, heads, N)
    t = sample_tasks(jax.random.key(2), "uniform:5", 64, N, D, jnp.float64)
    lengths = jax.random.randint(jax.random.key(3), (64,), 1, N + 1)
    forward = jax.jit(kernel.weights)
    for p in (params, replace(params, normalised=True)):
        for n in (None, lengths):
            ref, w = weights(p, t.x, t.y, n), forward(p, t.x, t.y, n)
            assert w.shape == ref.shape == (64, D) and w.dtype == jnp.float64
            assert relative_error(ref, w) <= 1e-10


@pytest.mark.parametrize("objective", ["query_averaged", "sampled_query"])
@pytest.mark.parametrize("variant", slow_unless(["full", "diag", "gdpp"], ["full"]))
def test_the_engine_objective_matches_its_reference(variant, objective):
    """The training objective (importance-weighted batch) by kernel and by
    autodiff: loss to 1e-5 and gradient to 1e-3, relative to the largest entry of
    each leaf (float32 parameters; observed ≤ 1e-5)."""
    config = TrainConfig(variant, 3, "uniform:5", batch=256, objective=objective, wide_fraction=0.25)
    state = jax.tree.map(lambda a: a[0], init_state(config))
    args = (jax.random.key(4), *batch_data(state))
    (l_ref, g_ref), (l_new, g_new) = (jax.jit(loss_and_grad(config, r))(state.params, *args) for r in (True, False))
    assert abs(float(l_new - l_ref)) <= 1e-5 * abs(float(l_ref))
    assert relative_error(g_ref, g_new) <= 1e-3


@pytest.mark.slow
def test_fast_training_follows_the_reference_and_repeats_bit_for_bit():
    """30 steps of FULL-3 by both engines from one state: losses agree to 1e-3
    relative (float32 rounding compounds over steps), and the fast engine run
    twice gives identical parameters and losses."""
    config = TrainConfig("full", 3, "uniform:3", batch=256, steps=100, seeds=2)
    state = init_state(config)
    (s_ref, l_ref), (s_new, l_new), (s_again, l_again) = (run_steps(config, state, 30, r) for r in (True, False, False))
    np.testing.assert_allclose(np.asarray(l_new), np.asarray(l_ref), rtol=1e-3)
    np.testing.assert_array_equal(np.asarray(l_new), np.asarray(l_again))
    for a, b in zip(jax.tree.leaves(s_new.params), jax.tree.leaves(s_again.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
