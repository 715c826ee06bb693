"""Tests run with float64 available; each test picks its dtype explicitly, and the
library keeps the dtype of its inputs. The CLI tests run lticl in a subprocess
with JAX's default (float32 only), so both configurations are exercised."""

import jax
import jax.numpy as jnp
import pytest

jax.config.update("jax_enable_x64", True)

import lticl  # noqa: E402  (after the x64 switch)

N, D = 20, 10  # the paper's sizes


def gd_like_params(key, variant, layers, d, heads, n, dtype=jnp.float64):
    """Random parameters whose dynamics stay bounded at every depth: GD layers of
    step 1/(n+d+1) with every entry perturbed (ε = 0.05/L), so every term of every
    form is exercised."""
    return lticl.gd_init(key, variant, layers, d, heads, 1.0 / (n + d + 1), 0.05 / layers, dtype)


@pytest.fixture
def key():
    return jax.random.key(0)
