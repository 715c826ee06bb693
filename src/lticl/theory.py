"""Closed-form facts about linear transformers (docs/math.md §5, §7): the best
1-layer model, and the bound no GD++ model beats. The paper's theorems, checked
numerically, are in `theorems`."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .model import weights
from .noise import Fixed, as_noise
from .paper import PAPER_D, PAPER_N
from .params import Params
from .products import einsum, matmul
from .tasks import normal, positive_int

def _check(n, d, sigma2_mean) -> tuple[int, int, float]:
    n, d = positive_int(n, "n"), positive_int(d, "d")
    s2 = float(sigma2_mean)
    if not math.isfinite(s2) or s2 < 0:
        raise ValueError(f"sigma2_mean (E[σ²]) must be finite and >= 0, got {sigma2_mean}")
    return n, d, s2


def best_one_step_size(n: int, d: int, sigma2_mean: float = 0.0) -> float:
    """η* = 1 / (n + d + 1 + E[σ²]): the best single GD step from w = 0.

    With α = Σ_i y_i x_i, E‖α‖² = n d (n + d + 1 + E σ²) (Wishart: E Σ² = n(n+d+1) I)
    and E<α, w> = n d, so E ½‖ηα − w‖² is a parabola in η with this minimiser.
    """
    n, d, s2 = _check(n, d, sigma2_mean)
    return 1.0 / (n + d + 1 + s2)


def best_one_layer_loss(n: int, d: int, sigma2_mean: float = 0.0) -> float:
    """½ (d − n d / (n + d + 1 + E[σ²])): the loss of the best 1-layer linear
    transformer, whose prediction is always one GD step −ω_yx <α, x_query>."""
    n, d, s2 = _check(n, d, sigma2_mean)
    return 0.5 * (d - n * d / (n + d + 1 + s2))



# ---- GD++ is linear in y: the CONSTRR bound --------------------------------------
#
# GD++ has ω_xy = ω_yy = 0, so the y's never enter the x's nor rescale themselves:
# for fixed context inputs X its regressor w^L = F(X) y is linear in y, at any depth.
# With w ~ N(0, I), y = X w + σ ε and a query x ~ N(0, I), the risk of any such F is
# E ½‖F y − w‖² = ½(‖F X − I‖² + E[σ²] ‖F‖²), a quadratic in F whose minimiser is
# ridge with penalty E[σ²]: F* = (XᵀX + E[σ²] I)⁻¹ Xᵀ, whatever the noise mixture.
# So no GD++ model, of any depth, beats that ridge (the best CONSTRR) in expectation.


def linear_risk(F, x, sigma2_mean: float):
    """½(‖F X − I‖² + E[σ²]‖F‖²) per sequence: the expected loss of the regressor
    w = F y over w ~ N(0, I) and noise with E[σ²] = sigma2_mean, for given inputs
    X (x: (B, n, d), F: (B, d, n)), without the query's own noise."""
    eye = jnp.eye(x.shape[-1], dtype=x.dtype)
    return 0.5 * (jnp.sum((matmul(F, x) - eye) ** 2, (-2, -1)) + sigma2_mean * jnp.sum(F**2, (-2, -1)))


def linear_map(params: Params, x):
    """F (B, d, n) with w^L = F y for a model whose w^L is linear in y (GD++), from
    the Jacobian at y = 0; for any other model it is only the linearisation there."""
    return jax.vmap(jax.jacfwd(lambda xb, yb: weights(params, xb[None], yb[None])[0], argnums=1))(x, jnp.zeros(x.shape[:2], x.dtype))


def ridge_map(x, penalty: float):
    """F = (XᵀX + r I)⁻¹ Xᵀ per sequence."""
    eye = jnp.eye(x.shape[-1], dtype=x.dtype)
    return jnp.linalg.solve(einsum("bnd,bne->bde", x, x) + penalty * eye, jnp.swapaxes(x, -1, -2))


def linear_bound(noise, n: int = PAPER_N, d: int = PAPER_D, sequences: int = 20_000, seed: int = 0) -> tuple[float, float]:
    """(mean, standard error): the adjusted loss of ridge with penalty E[σ²], the
    least adjusted loss of any model linear in the context's y (GD++ at any depth):
    ½ Σ_k (E_σ'[σ'²]/(μ_k + E_σ'[σ'²]) − E_σ[σ²/(μ_k + σ²)]), μ the eigenvalues of
    XᵀX. Exact in w, ε, σ and the query; Monte Carlo over X only."""
    noise = as_noise(noise)
    n, d, sequences = (positive_int(v, name) for v, name in ((n, "n"), (d, "d"), (sequences, "sequences")))
    noise.shrinkage(jnp.ones(1))  # raises for noise without a closed form, before any work
    s2 = noise.second_moment
    with jax.enable_x64(True):
        x = normal(jax.random.key(seed), (sequences, n, d), jnp.float64)
        mu = jnp.linalg.eigvalsh(einsum("bnd,bne->bde", x, x))
        adjusted = 0.5 * jnp.sum(Fixed(math.sqrt(s2)).shrinkage(mu) - noise.shrinkage(mu), -1)
        return float(jnp.mean(adjusted)), float(jnp.std(adjusted) / math.sqrt(sequences))


def below_bound(value: float, bound: float, sem: float, rounding: float = 5e-4) -> bool:
    """A reported mean lies under a lower bound by more than 3 standard errors of
    its evaluation plus the rounding of a 3-decimal table."""
    return value < bound - 3 * sem - rounding
