"""Linear transformers (docs/math.md §2–4): parameters and three exact forward forms.

A layer with heads k = 1..H updates every token e_i = (x_i, y_i), query included:

    e_i ← e_i + Σ_k P_k (Σ_{j≤n} e_j e_jᵀ) Q_k e_i        (context only in the sum)

and the prediction is ŷ = −y_query after the last layer. The forms, all exact:

- "tokens": the attention literally — scores e_jᵀ Q_k e_i, values P_k e_j; O(n² d) per layer.
- "gram":   every token moves by T^l = I + Σ_k P_k G^l Q_k with G^l = Σ_j e_j e_jᵀ,
            and G^{l+1} = T^l G^l T^lᵀ; O(d³) per layer after the first G.
- "omega":  DIAG/GD++ only, the closed form of docs/math.md §3 in the four ω per layer.

`implicit_state` gives the per-layer linear regressor (M^l, u^l, a^l, w^l) of docs/math.md §4,
with ŷ after layer l equal to <w^l, x_query>.

Shapes: B sequences, n context points, d inputs, D = d + 1, L layers, H heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from .tasks import positive_int

VARIANTS = ("full", "diag", "gdpp")
_ALIASES = {"gd++": "gdpp", "gdplusplus": "gdpp"}
FORMS = ("tokens", "gram", "omega")
OMEGA_NAMES = ("omega_xx", "omega_xy", "omega_yx", "omega_yy")  # the order of every ω array

# Number of scalars per head and layer in P and Q for the structured variants:
# DIAG P = diag(p_x I, p_y), Q = diag(q_x I, q_y); GD++ is DIAG with q_y = 0.
_SCALARS = {"diag": (2, 2), "gdpp": (2, 1)}


def canonical_variant(variant: str) -> str:
    v = str(variant).strip().lower()
    v = _ALIASES.get(v, v)
    if v not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)} (or gd++)")
    return v


@partial(jax.tree_util.register_dataclass, data_fields=["p", "q"], meta_fields=["variant", "d"])
@dataclass(frozen=True)
class Params:
    """Parameters of an L-layer, H-head linear transformer on d-dimensional inputs.

    full: p = P (L, H, D, D), q = Q (L, H, D, D)
    diag: p = (p_x, p_y) (L, H, 2), q = (q_x, q_y) (L, H, 2)
    gdpp: p = (p_x, p_y) (L, H, 2), q = (q_x,)     (L, H, 1)

    Leading batch axes (seeds, sweeps) may precede these shapes under vmap.
    """

    variant: str
    d: int
    p: Array
    q: Array

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
        np_, nq = _SCALARS[variant]
        ok = len(p) == 3 and len(q) == 3 and p[:2] == q[:2] and p[2] == np_ and q[2] == nq
        want = f"p of shape (L, H, {np_}) and q of shape (L, H, {nq})"
    if not ok:
        raise ValueError(f"{variant} parameters need {want}; got p {p}, q {q}")
    if p[0] < 1 or p[1] < 1:
        raise ValueError(f"parameters need L >= 1 layers and H >= 1 heads; got shape {p}")
    return params


def truncate(params: Params, layers: int) -> Params:
    """The model made of the first `layers` layers (its prediction is <w^layers, x_query>)."""
    check_params(params)
    if not 1 <= int(layers) <= params.layers:
        raise ValueError(f"can truncate to 1..{params.layers} layers, not {layers}")
    return Params(params.variant, params.d, params.p[: int(layers)], params.q[: int(layers)])


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
        np_, nq = _SCALARS[variant]
        p_shape, q_shape = (layers, heads, np_), (layers, heads, nq)
    kp, kq = jax.random.split(key)
    return Params(
        variant,
        d,
        scale * jax.random.normal(kp, p_shape, dtype),
        scale * jax.random.normal(kq, q_shape, dtype),
    )


def gd_init(
    key: Array,
    variant: str,
    layers: int,
    d: int,
    heads: int = 1,
    step_size: float = 0.03,
    scale: float = 0.0,
    dtype=jnp.float32,
) -> Params:
    """Every layer one GD step of size `step_size` (ω_yx = −step_size, split over the
    heads), every free entry perturbed by `scale`·√step_size N(0, 1). Stacked, the
    unperturbed layers run L steps of GD on the context, a stable start for any
    depth while step_size < 2/λ_max(Σ).

    The step is split evenly between P and Q (each √step_size): the model is
    invariant under P_k → c P_k, Q_k → Q_k / c, but Adam is not, and balanced
    factors make its per-entry step the same relative change on both."""
    root = np.full(positive_int(layers, "layers"), float(step_size) ** 0.5)
    return _layered_init(key, variant, d, heads, np.zeros_like(root), root, root, scale, dtype)


def precondition_init(
    key: Array,
    variant: str,
    layers: int,
    d: int,
    n: int,
    heads: int = 1,
    step_size: float = 0.03,
    strength: float = 0.6,
    scale: float = 0.0,
    dtype=jnp.float32,
) -> Params:
    """Preconditioning first, the big GD step last (the shape of Thm 5.1's GD++).

    Layers 1..L−1 precondition, ω_xx = −γ_l with γ_l ν_l = `strength`, where ν_l
    bounds the spectrum of Σ^l (ν_1 = (√n + √d)², the Marchenko–Pastur edge; a
    layer maps μ to μ(1 − γ_l μ)²), and take a small GD step ω_yx = −step_size/3.
    Layer L takes the step ω_yx = −1/ν_L. Balanced factors, perturbation
    `scale`·(factor) N(0, 1), as in `gd_init`.

    From GD's start (`gd_init`), training settles in worse local optima on
    low-noise data; GD++-2 on noiseless data has three, adjusted loss 0.389
    (reached from GD's start), 0.342 and 0.267 (docs/training.md)."""
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
    to `dtype` as given: `gd_init` passes float64 NumPy arrays, rounded once, as it
    always did, so a key gives the start it gave before this helper existed."""
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


# --------------------------------------------------------------------------- forms


def _tokens(x: Array, y: Array, x_query: Array) -> Array:
    """(B, n+1, D): context tokens (x_i, y_i) then the query token (x_query, 0)."""
    ctx = jnp.concatenate([x, y[..., None]], axis=-1)
    query = jnp.concatenate([x_query, jnp.zeros_like(x_query[:, :1])], axis=-1)
    return jnp.concatenate([ctx, query[:, None]], axis=1)


def gram(x: Array, y: Array) -> Array:
    """G⁰ = Σ_i e_i e_iᵀ over the context tokens: (B, D, D)."""
    e = jnp.concatenate([x, y[..., None]], axis=-1)
    return jnp.einsum("bnd,bne->bde", e, e)


def _mix(P: Array, Q: Array, G: Array) -> Array:
    """Σ_k P_k G Q_k for one layer: P, Q (H, D, D), G (B, D, D) -> (B, D, D)."""
    return jnp.einsum("hij,bjk,hkm->bim", P, G, Q)


def _layer_mixers(params: Params):
    """(per-layer parameters, mix(parameters, G) -> Σ_k P_k G Q_k) for a scan over layers.
    DIAG/GD++ mix elementwise: diag(p) G diag(q) = G ⊙ p qᵀ, so Σ_k is one (D, D) mask."""
    if params.variant == "full":
        return full_matrices(params), lambda PQ, G: _mix(*PQ, G)
    P, Q = full_matrices(params)
    mask = jnp.einsum("lhii,lhjj->lij", P, Q)
    return mask, lambda mask, G: mask * G


def _forward_tokens(params: Params, x, y, x_query) -> Array:
    n = x.shape[1]

    def layer(e, PQ):
        P, Q = PQ
        ctx = e[:, :n]
        queries = jnp.einsum("hde,bie->bhid", Q, e)  # Q_k e_i
        scores = jnp.einsum("bjd,bhid->bhji", ctx, queries)  # e_jᵀ Q_k e_i
        values = jnp.einsum("hde,bje->bhjd", P, ctx)  # P_k e_j
        return e + jnp.einsum("bhji,bhjd->bid", scores, values), None

    e, _ = jax.lax.scan(layer, _tokens(x, y, x_query), full_matrices(params))
    return -e[:, -1, -1]


def layer_grams(params: Params, G0: Array) -> tuple[Array, Array]:
    """(G^l, K^l = Σ_k P_k G^l Q_k) for l = 0..L-1, each (L, B, D, D), propagating
    G^{l+1} = T^l G^l T^lᵀ with T^l = I + K^l."""
    eye = jnp.eye(G0.shape[-1], dtype=G0.dtype)

    per_layer, mix = _layer_mixers(params)

    def layer(G, theta):
        K = mix(theta, G)
        T = eye + K
        return T @ G @ jnp.swapaxes(T, -1, -2), (G, K)

    _, GK = jax.lax.scan(layer, G0, per_layer)
    return GK


def layer_mixes(params: Params, G0: Array) -> Array:
    """K^l = Σ_k P_k G^l Q_k for l = 0..L-1: (L, B, D, D)."""
    return layer_grams(params, G0)[1]


def _final_weights(params: Params, x, y) -> Array:
    """w^L without the implicit state: the query moves by T^{L-1}⋯T^0, so
    w^L = −(e_Dᵀ T^{L-1}⋯T^0)[:d], one row vector carried back through the layers."""
    d = params.d
    K = layer_mixes(params, gram(x, y))
    row = jnp.zeros((x.shape[0], d + 1), x.dtype).at[:, d].set(1.0)
    row, _ = jax.lax.scan(lambda r, K: (r + jnp.einsum("bi,bij->bj", r, K), None), row, K, reverse=True)
    return -row[:, :d]


def _forward_gram(params: Params, x, y, x_query) -> Array:
    def layer(e, K):
        return e + jnp.einsum("bij,bj->bi", K, e), None

    e0 = jnp.concatenate([x_query, jnp.zeros_like(x_query[:, :1])], axis=-1)
    e, _ = jax.lax.scan(layer, e0, layer_mixes(params, gram(x, y)))
    return -e[:, -1]


def _forward_omega(params: Params, x, y, x_query) -> Array:
    n = x.shape[1]

    def layer(xy, omega):
        X, Y = xy
        w_xx, w_xy, w_yx, w_yy = omega
        Xc, Yc = X[:, :n], Y[:, :n]
        Sigma = jnp.einsum("bnd,bne->bde", Xc, Xc)
        alpha = jnp.einsum("bnd,bn->bd", Xc, Yc)
        lam = jnp.einsum("bn,bn->b", Yc, Yc)
        X_new = X + w_xx * jnp.einsum("bde,bie->bid", Sigma, X) + w_xy * Y[..., None] * alpha[:, None]
        Y_new = Y + w_yx * jnp.einsum("bd,bid->bi", alpha, X) + w_yy * lam[:, None] * Y
        return (X_new, Y_new), None

    X0 = jnp.concatenate([x, x_query[:, None]], axis=1)
    Y0 = jnp.concatenate([y, jnp.zeros_like(y[:, :1])], axis=1)
    (_, Y), _ = jax.lax.scan(layer, (X0, Y0), omegas(params))
    return -Y[:, -1]


_FORWARD = {"tokens": _forward_tokens, "gram": _forward_gram, "omega": _forward_omega}


class ImplicitState(NamedTuple):
    """Per-layer implicit linear model, leading axis l = 0..L (docs/math.md §4):
    x_i^l = M^l x_i + y_i u^l,   y_i^l = a^l y_i − <w^l, x_i>."""

    M: Array  # (L+1, B, d, d)
    u: Array  # (L+1, B, d)
    a: Array  # (L+1, B)
    w: Array  # (L+1, B, d)


def _implicit(params: Params, x, y) -> ImplicitState:
    d = params.d
    B = x.shape[0]

    def layer(state, K):
        M, u, a, w = state
        A, b, c, delta = K[:, :d, :d], K[:, :d, d], K[:, d, :d], K[:, d, d]
        IA = jnp.eye(d, dtype=x.dtype) + A
        new = (
            IA @ M - b[:, :, None] * w[:, None, :],
            jnp.einsum("bij,bj->bi", IA, u) + a[:, None] * b,
            (1 + delta) * a + jnp.einsum("bi,bi->b", c, u),
            (1 + delta)[:, None] * w - jnp.einsum("bji,bj->bi", M, c),
        )
        return new, new

    init = (
        jnp.broadcast_to(jnp.eye(d, dtype=x.dtype), (B, d, d)),
        jnp.zeros((B, d), x.dtype),
        jnp.ones((B,), x.dtype),
        jnp.zeros((B, d), x.dtype),
    )
    _, states = jax.lax.scan(layer, init, layer_mixes(params, gram(x, y)))
    return ImplicitState(*(jnp.concatenate([i[None], s]) for i, s in zip(init, states)))


# --------------------------------------------------------------------------- public
#
# Each public function checks its arguments' shapes, which are static under jit and
# vmap, so it is as safe inside a caller's jit (the training step, an evaluation) as
# at the top level, where its own jit compiles it once per shape.


def check_batch(x, y, x_query=None, d: int | None = None) -> None:
    """Raise ValueError unless x (B, n, d), y (B, n)[, x_query (B, d)] agree."""
    xs, ys = jnp.shape(x), jnp.shape(y)
    if len(xs) != 3:
        raise ValueError(f"x must have shape (B, n, d), got {xs}")
    if ys != xs[:2]:
        raise ValueError(f"y must have shape (B, n) = {xs[:2]} to match x {xs}, got {ys}")
    if x_query is not None and jnp.shape(x_query) != (xs[0], xs[2]):
        raise ValueError(f"x_query must have shape (B, d) = {(xs[0], xs[2])}, got {jnp.shape(x_query)}")
    if d is not None and xs[2] != d:
        raise ValueError(f"the model was built for d = {d} but x has d = {xs[2]}")
    if min(xs) < 1:
        raise ValueError(f"x must be non-empty in every axis, got shape {xs}")


def predict(params: Params, x: Array, y: Array, x_query: Array, form: str = "gram") -> Array:
    """ŷ (B,) for context x (B, n, d), y (B, n) and query x_query (B, d)."""
    check_params(params)
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; expected one of {', '.join(FORMS)}")
    if form == "omega" and params.variant == "full":
        raise ValueError("form 'omega' exists for the diag and gdpp variants only")
    check_batch(x, y, x_query, params.d)
    return _predict(params, x, y, x_query, form)


@partial(jax.jit, static_argnames="form")
def _predict(params, x, y, x_query, form):
    return _FORWARD[form](params, x, y, x_query)


@jax.jit
def implicit_state(params: Params, x: Array, y: Array) -> ImplicitState:
    """(M, u, a, w) for layers 0..L, each with leading axis L+1, then the batch axis."""
    check_params(params)
    check_batch(x, y, d=params.d)
    return _implicit(params, x, y)


@jax.jit
def weights(params: Params, x: Array, y: Array) -> Array:
    """w^L (B, d): the model's prediction is exactly <w^L, x_query>. Equal to
    implicit_state(...).w[-1], by a cheaper route (the training objective's)."""
    check_params(params)
    check_batch(x, y, d=params.d)
    return _final_weights(params, x, y)
