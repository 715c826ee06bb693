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
    """Random parameters whose dynamics stay bounded at every depth: each layer is
    one GD step of size 1/(n+d+1) split over the heads, and every free entry is
    perturbed by ε N(0, 1) (scaled to its role), ε = 0.05/L. All entries are
    non-zero, so every term of every form is exercised."""
    base = lticl.init_params(key, variant, layers, d, heads, scale=1.0, dtype=dtype)
    eps, eta = 0.05 / layers, 1.0 / (n + d + 1)
    if variant == "full":
        P0 = jnp.zeros((d + 1, d + 1), dtype).at[d, d].set(1.0)
        Q0 = jnp.zeros((d + 1, d + 1), dtype).at[:d, :d].set(-eta * jnp.eye(d, dtype=dtype))
    else:
        P0 = jnp.array([0.0, 1.0], dtype)
        Q0 = jnp.array([-eta, 0.0], dtype)[: base.q.shape[-1]]
    return lticl.Params(variant, d, P0 / heads + eps * base.p, Q0 + eps * eta * base.q)


@pytest.fixture
def key():
    return jax.random.key(0)
