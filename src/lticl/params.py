"""Parameters of a linear transformer (docs/math.md §2–3): the variants, their
shapes, and the ω view of DIAG and GD++.

Shapes: D = d + 1, L layers, H heads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import jax
import jax.numpy as jnp
from jax import Array

from .tasks import positive_int

VARIANTS = ("full", "diag", "gdpp")
# The largest model lticl builds or reads: bounds the memory a config or a file can ask for.
MAX_LAYERS, MAX_HEADS, MAX_D = 64, 16, 128
_ALIASES = {"gd++": "gdpp", "gdplusplus": "gdpp"}
OMEGA_NAMES = ("omega_xx", "omega_xy", "omega_yx", "omega_yy")  # the order of every ω array

# Number of scalars per head and layer in P and Q for the structured variants:
# DIAG P = diag(p_x I, p_y), Q = diag(q_x I, q_y); GD++ is DIAG with q_y = 0.
SCALARS = {"diag": (2, 2), "gdpp": (2, 1)}


def canonical_variant(variant: str) -> str:
    v = str(variant).strip().lower()
    v = _ALIASES.get(v, v)
    if v not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)} (or gd++)")
    return v


@partial(jax.tree_util.register_dataclass, data_fields=["p", "q"], meta_fields=["variant", "d", "normalised"])
@dataclass(frozen=True)
class Params:
    """Parameters of an L-layer, H-head linear transformer on d-dimensional inputs.

    full: p = P (L, H, D, D), q = Q (L, H, D, D)
    diag: p = (p_x, p_y) (L, H, 2), q = (q_x, q_y) (L, H, 2)
    gdpp: p = (p_x, p_y) (L, H, 2), q = (q_x,)     (L, H, 1)

    Leading batch axes (seeds, sweeps) may precede these shapes under vmap.

    normalised: every sum over the context is divided by its number of points n,
    G/n in place of G (attention normalised by the context length); False is the
    paper's model. A normalised model with parameters (√n·p, √n·q) predicts exactly
    what the plain model with (p, q) predicts at that n.
    """

    variant: str
    d: int
    p: Array
    q: Array
    normalised: bool = False

    @property
    def layers(self) -> int:
        return self.p.shape[-4 if self.variant == "full" else -3]

    @property
    def heads(self) -> int:
        return self.p.shape[-3 if self.variant == "full" else -2]


def check_params(params: Params) -> Params:
    """Raise ValueError unless `params` is a well-formed (unbatched) Params."""
    if not isinstance(params, Params):
        raise ValueError(f"expected lticl Params, got {type(params).__name__}")
    variant = canonical_variant(params.variant)
    d = positive_int(params.d, "d")
    p, q = jnp.shape(params.p), jnp.shape(params.q)
    if variant == "full":
        ok = len(p) == 4 and p == q and p[2:] == (d + 1, d + 1)
        want = f"P and Q of shape (L, H, {d + 1}, {d + 1})"
    else:
        np_, nq = SCALARS[variant]
        ok = len(p) == 3 and len(q) == 3 and p[:2] == q[:2] and p[2] == np_ and q[2] == nq
        want = f"p of shape (L, H, {np_}) and q of shape (L, H, {nq})"
    if not ok:
        raise ValueError(f"{variant} parameters need {want}; got p {p}, q {q}")
    if not isinstance(params.normalised, bool):
        raise ValueError(f"normalised must be True or False, got {params.normalised!r}")
    if p[0] < 1 or p[1] < 1:
        raise ValueError(f"parameters need L >= 1 layers and H >= 1 heads; got shape {p}")
    check_size(p[0], p[1], d)
    return params


def check_size(layers: int, heads: int, d: int) -> None:
    """Raise ValueError for a model larger than MAX_LAYERS layers, MAX_HEADS heads or
    MAX_D inputs."""
    for name, value, limit in (("layers", layers, MAX_LAYERS), ("heads", heads, MAX_HEADS), ("d", d, MAX_D)):
        if value > limit:
            raise ValueError(f"{name} = {value} is above lticl's limit of {limit}")


def truncate(params: Params, layers: int) -> Params:
    """The model made of the first `layers` layers (its prediction is <w^layers, x_query>)."""
    check_params(params)
    if not 1 <= int(layers) <= params.layers:
        raise ValueError(f"can truncate to 1..{params.layers} layers, not {layers}")
    return replace(params, p=params.p[: int(layers)], q=params.q[: int(layers)])



def diag_matrix(sx: Array, sy: Array, d: int) -> Array:
    """diag(sx I_d, sy) for arrays of scalars: shape sx.shape + (D, D)."""
    ex = jnp.diag(jnp.arange(d + 1) < d).astype(sx.dtype)
    return sx[..., None, None] * ex + sy[..., None, None] * (jnp.eye(d + 1, dtype=sx.dtype) - ex)


def full_matrices(params: Params) -> tuple[Array, Array]:
    """P and Q as full matrices, each (L, H, D, D), for every variant."""
    if params.variant == "full":
        return params.p, params.q
    p, q = params.p, params.q
    q_y = q[..., 1] if params.variant == "diag" else jnp.zeros_like(q[..., 0])
    return diag_matrix(p[..., 0], p[..., 1], params.d), diag_matrix(q[..., 0], q_y, params.d)


def as_full(params: Params) -> Params:
    """The same model in the FULL parameterisation (leading axes kept): DIAG's and
    GD++'s blocks become the scaled identities they stand for."""
    p, q = full_matrices(params)
    return replace(params, variant="full", p=p, q=q)


def as_diag(params: Params) -> Params:
    """The DIAG model nearest a FULL one (leading axes kept): each block of P and Q
    replaced by its orthogonal projection on the scaled identities, p_x = tr(P_xx)/d
    and p_y = P_yy (Q alike); the cross blocks P_xy, P_yx, Q_xy, Q_yx are dropped.
    `as_diag(as_full(m))` is m for a DIAG model m."""
    if params.variant != "full":
        raise ValueError(f"as_diag projects a full model, not a {params.variant} one")
    d = params.d
    scalars = lambda a: jnp.stack([jnp.trace(a[..., :d, :d], axis1=-2, axis2=-1) / d, a[..., d, d]], axis=-1)
    return replace(params, variant="diag", p=scalars(params.p), q=scalars(params.q))


def head_omegas(params: Params) -> Array:
    """(L, H, 4) [ω_xx, ω_xy, ω_yx, ω_yy] of each head alone (DIAG/GD++, docs/math.md §3)."""
    if params.variant == "full":
        raise ValueError("omega values are defined for the diag and gdpp variants, not full")
    p, q = params.p, params.q
    q_y = q[..., 1] if params.variant == "diag" else jnp.zeros_like(q[..., 0])
    p_x, p_y, q_x = p[..., 0], p[..., 1], q[..., 0]
    return jnp.stack([p_x * q_x, p_x * q_y, p_y * q_x, p_y * q_y], axis=-1)


def omegas(params: Params) -> Array:
    """(L, 4) per-layer [ω_xx, ω_xy, ω_yx, ω_yy], summed over heads (DIAG/GD++, docs/math.md §3)."""
    return head_omegas(params).sum(axis=-2)
