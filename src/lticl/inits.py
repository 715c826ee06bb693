"""Initial parameters: random, GD layers, or preconditioning layers then a GD step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from .params import SCALARS, Params, canonical_variant
from .tasks import normal, positive_int


def init_params(
    key: Array,
    variant: str,
    layers: int,
    d: int,
    heads: int = 1,
    scale: float = 0.02,
    dtype=jnp.float32,
) -> Params:
    """Every free parameter i.i.d. N(0, scale²)."""
    variant = canonical_variant(variant)
    layers, d, heads = (positive_int(v, k) for v, k in ((layers, "layers"), (d, "d"), (heads, "heads")))
    if variant == "full":
        p_shape = q_shape = (layers, heads, d + 1, d + 1)
    else:
        np_, nq = SCALARS[variant]
        p_shape, q_shape = (layers, heads, np_), (layers, heads, nq)
    kp, kq = jax.random.split(key)
    return Params(
        variant,
        d,
        scale * normal(kp, p_shape, dtype),
        scale * normal(kq, q_shape, dtype),
    )


def gd_init(key: Array, variant: str, layers: int, d: int, heads: int = 1, step_size: float = 0.03,
            scale: float = 0.0, dtype=jnp.float32) -> Params:
    """Every layer one GD step of size `step_size` (ω_yx = −step_size, split over the
    heads), every free entry perturbed by `scale`·√step_size N(0, 1). Stacked, the
    unperturbed layers run L steps of GD on the context, a stable start for any
    depth while step_size < 2/λ_max(Σ).

    The step is split evenly between P and Q (each √step_size): the model is
    invariant under P_k → c P_k, Q_k → Q_k / c, but Adam is not, and balanced
    factors make its per-entry step the same relative change on both."""
    root = np.full(positive_int(layers, "layers"), float(step_size) ** 0.5)
    return _layered_init(key, variant, d, heads, np.zeros_like(root), root, root, scale, dtype)


def precondition_init(key: Array, variant: str, layers: int, d: int, n: int, heads: int = 1,
                      step_size: float = 0.03, strength: float = 0.6, scale: float = 0.0,
                      dtype=jnp.float32) -> Params:
    """Preconditioning first, the big GD step last (the shape of Thm 5.1's GD++).

    Layers 1..L−1 precondition, ω_xx = −γ_l with γ_l ν_l = `strength`, where ν_l
    bounds the spectrum of Σ^l (ν_1 = (√n + √d)², the Marchenko–Pastur edge; a
    layer maps μ to μ(1 − γ_l μ)²), and take a small GD step ω_yx = −step_size/3.
    Layer L takes the step ω_yx = −1/ν_L. Balanced factors, perturbation
    `scale`·(factor) N(0, 1), as in `gd_init`.

    From GD's start (`gd_init`), training settles in worse local optima on
    low-noise data (docs/training.md)."""
    layers, n, d = (positive_int(v, k) for v, k in ((layers, "layers"), (n, "n"), (d, "d")))
    gammas, top = preconditioner_gammas((n**0.5 + d**0.5) ** 2, layers - 1, strength)
    gammas = jnp.asarray([*gammas, 0.0])
    steps = jnp.asarray([step_size / 3] * (layers - 1) + [1 / top])
    root = jnp.sqrt(jnp.maximum(gammas, steps))
    return _layered_init(key, variant, d, heads, gammas / root, steps / root, root, scale, dtype)


def preconditioner_gammas(nu: float, steps: int, strength: float = 1 / 3) -> tuple[list[float], float]:
    """γ_l of `steps` preconditioning layers x ← (I − γ_l Σ^l) x, with γ_l ν_l =
    `strength`, where ν_l bounds the spectrum of Σ^l (ν_1 = `nu`), and the bound
    after the last. A layer maps μ to μ(1 − γμ)²; on [0, ν] that peaks at μ = ν, or,
    for strength > 1/3, at μ = 1/(3γ) with value 4/(27γ). Strength 1/3 is Thm 5.1's
    choice: ν shrinks by 4/9 per layer."""
    if not 0 < strength < 1:
        raise ValueError(f"strength must be in (0, 1), got {strength}")
    gammas, top = [], float(nu)
    for _ in range(steps):
        gammas.append(strength / top)
        top = max(top * (1 - strength) ** 2, 4 / (27 * gammas[-1]) if strength > 1 / 3 else 0.0)
    return gammas, top


def _layered_init(key, variant, d, heads, p_x, p_y, root, scale, dtype) -> Params:
    """Per layer ω_xx = −p_x·root, ω_yx = −p_y·root (q_x = −root, p split over the
    heads), every free entry perturbed by scale·root N(0, 1). Values are rounded
    to `dtype` once, as given: `gd_init` passes float64 NumPy arrays (a test pins
    that rounding, on which stored runs depend)."""
    base = init_params(key, variant, root.size, d, heads, scale=1.0, dtype=dtype)
    p_x, p_y, root, amp = (jnp.asarray(v[:, None], dtype) for v in (p_x, p_y, root, scale * root))  # (L, 1): any heads
    if base.variant == "full":
        eye = jnp.eye(d + 1, dtype=dtype)
        ex = eye.at[d, d].set(0.0)
        P0 = p_x[..., None, None] * ex + p_y[..., None, None] * (eye - ex)
        Q0 = -root[..., None, None] * ex
        amp = amp[..., None, None]
    else:
        P0 = jnp.stack([p_x, p_y], axis=-1)
        Q0 = jnp.stack([-root, jnp.zeros_like(root)], axis=-1)[..., : base.q.shape[-1]]
        amp = amp[..., None]
    return Params(base.variant, d, P0 / heads + amp * base.p, Q0 + amp * base.q)
