"""Linear transformers (docs/math.md §2–4): three exact forward forms and the
implicit regressor.

A layer with heads k = 1..H updates every token e_i = (x_i, y_i), query included:

    e_i ← e_i + Σ_k P_k (Σ_{j≤n} e_j e_jᵀ) Q_k e_i        (context only in the sum)

and the prediction is ŷ = −y_query after the last layer. The forms, all exact:

- "tokens": the attention literally — scores e_jᵀ Q_k e_i, values P_k e_j; O(n² d) per layer.
- "gram":   every token moves by T^l = I + Σ_k P_k G^l Q_k with G^l = Σ_j e_j e_jᵀ,
            and G^{l+1} = T^l G^l T^lᵀ; O(d³) per layer after the first G.
- "omega":  DIAG/GD++ only, the closed form of docs/math.md §3.

A normalised model (Params.normalised) divides every sum over the context by its
number of points, G/n in place of G; `context` applies that, and the `lengths` of
contexts of different sizes padded into one batch, before any form runs.

`implicit_state` gives the per-layer linear regressor (M^l, u^l, a^l, w^l) of
docs/math.md §4, with ŷ after layer l equal to <w^l, x_query>. The parameters
themselves are `params.Params`; initial ones come from `inits`.

Shapes: B sequences, n context points, d inputs, D = d + 1, L layers, H heads.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from .params import Params, check_params, full_matrices, omegas
from .products import einsum, matmul

FORMS = ("tokens", "gram", "omega")


# --------------------------------------------------------------------------- forms


def _tokens(x: Array, y: Array, x_query: Array) -> Array:
    """(B, n+1, D): context tokens (x_i, y_i) then the query token (x_query, 0)."""
    ctx = jnp.concatenate([x, y[..., None]], axis=-1)
    query = jnp.concatenate([x_query, jnp.zeros_like(x_query[:, :1])], axis=-1)
    return jnp.concatenate([ctx, query[:, None]], axis=1)


def gram(x: Array, y: Array) -> Array:
    """G⁰ = Σ_i e_i e_iᵀ over the context tokens: (B, D, D)."""
    e = jnp.concatenate([x, y[..., None]], axis=-1)
    return einsum("bnd,bne->bde", e, e)


def _mix(P: Array, Q: Array, G: Array) -> Array:
    """Σ_k P_k G Q_k for one layer: P, Q (H, D, D), G (B, D, D) -> (B, D, D)."""
    return einsum("hij,bjk,hkm->bim", P, G, Q)


def _layer_mixers(params: Params):
    """(per-layer parameters, mix(parameters, G) -> Σ_k P_k G Q_k) for a scan over layers.
    DIAG/GD++ mix elementwise: diag(p) G diag(q) = G ⊙ p qᵀ, so Σ_k is one (D, D) mask."""
    if params.variant == "full":
        return full_matrices(params), lambda PQ, G: _mix(*PQ, G)
    P, Q = full_matrices(params)
    mask = einsum("lhii,lhjj->lij", P, Q)
    return mask, lambda mask, G: mask * G


def _forward_tokens(params: Params, x, y, x_query) -> Array:
    n = x.shape[1]

    def layer(e, PQ):
        P, Q = PQ
        ctx = e[:, :n]
        queries = einsum("hde,bie->bhid", Q, e)  # Q_k e_i
        scores = einsum("bjd,bhid->bhji", ctx, queries)  # e_jᵀ Q_k e_i
        values = einsum("hde,bje->bhjd", P, ctx)  # P_k e_j
        return e + einsum("bhji,bhjd->bid", scores, values), None

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
        return matmul(matmul(T, G), jnp.swapaxes(T, -1, -2)), (G, K)

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
    row, _ = jax.lax.scan(lambda r, K: (r + einsum("bi,bij->bj", r, K), None), row, K, reverse=True)
    return -row[:, :d]


def _forward_gram(params: Params, x, y, x_query) -> Array:
    def layer(e, K):
        return e + einsum("bij,bj->bi", K, e), None

    e0 = jnp.concatenate([x_query, jnp.zeros_like(x_query[:, :1])], axis=-1)
    e, _ = jax.lax.scan(layer, e0, layer_mixes(params, gram(x, y)))
    return -e[:, -1]


def _forward_omega(params: Params, x, y, x_query) -> Array:
    n = x.shape[1]

    def layer(xy, omega):
        X, Y = xy
        w_xx, w_xy, w_yx, w_yy = omega
        Xc, Yc = X[:, :n], Y[:, :n]
        Sigma = einsum("bnd,bne->bde", Xc, Xc)
        alpha = einsum("bnd,bn->bd", Xc, Yc)
        lam = einsum("bn,bn->b", Yc, Yc)
        X_new = X + w_xx * einsum("bde,bie->bid", Sigma, X) + w_xy * Y[..., None] * alpha[:, None]
        Y_new = Y + w_yx * einsum("bd,bid->bi", alpha, X) + w_yy * lam[:, None] * Y
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
            matmul(IA, M) - b[:, :, None] * w[:, None, :],
            einsum("bij,bj->bi", IA, u) + a[:, None] * b,
            (1 + delta) * a + einsum("bi,bi->b", c, u),
            (1 + delta)[:, None] * w - einsum("bji,bj->bi", M, c),
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


def context(params: Params, x: Array, y: Array, lengths: Array | None = None) -> tuple[Array, Array]:
    """The context (x, y) as the layers see it. With `lengths` (B,), sequence b is its
    first lengths[b] points: the rest are zeroed, and a zero token adds nothing to any
    sum over the context and stays zero through every layer, so the padded sequence
    is exactly the short one. For a normalised model every point is divided by √n_b
    (n_b its number of points), so that every sum over the context becomes its mean."""
    if lengths is not None:
        keep = jnp.arange(x.shape[1]) < lengths[:, None]
        x, y = jnp.where(keep[..., None], x, 0), jnp.where(keep, y, 0)
    if params.normalised:
        count = jnp.full(x.shape[:1], x.shape[1], x.dtype) if lengths is None else lengths.astype(x.dtype)
        scale = jax.lax.rsqrt(count)
        x, y = x * scale[:, None, None], y * scale[:, None]
    return x, y


def check_batch(x, y, x_query=None, d: int | None = None, lengths=None) -> None:
    """Raise ValueError unless x (B, n, d), y (B, n)[, x_query (B, d)][, lengths (B,)
    of integers in 1..n, checked where they are known outside a trace] agree."""
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
    if lengths is not None:
        if jnp.shape(lengths) != xs[:1] or not jnp.issubdtype(jnp.result_type(lengths), jnp.integer):
            raise ValueError(f"lengths must be integers of shape (B,) = {xs[:1]}, got {jnp.result_type(lengths)} "
                             f"of shape {jnp.shape(lengths)}")
        if not isinstance(lengths, jax.core.Tracer) and not (1 <= jnp.min(lengths) and jnp.max(lengths) <= xs[1]):
            raise ValueError(f"lengths must be in 1..n = 1..{xs[1]}, got {jnp.min(lengths)}..{jnp.max(lengths)}")


def predict(params: Params, x: Array, y: Array, x_query: Array, form: str = "gram",
            lengths: Array | None = None) -> Array:
    """ŷ (B,) for context x (B, n, d), y (B, n) and query x_query (B, d); `lengths`
    (B,): sequence b is its first lengths[b] context points (`context`)."""
    check_params(params)
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; expected one of {', '.join(FORMS)}")
    if form == "omega" and params.variant == "full":
        raise ValueError("form 'omega' exists for the diag and gdpp variants only")
    check_batch(x, y, x_query, params.d, lengths)
    return _predict(params, x, y, x_query, form, lengths)


@partial(jax.jit, static_argnames="form")
def _predict(params, x, y, x_query, form, lengths):
    return _FORWARD[form](params, *context(params, x, y, lengths), x_query)


@jax.jit
def implicit_state(params: Params, x: Array, y: Array, lengths: Array | None = None) -> ImplicitState:
    """(M, u, a, w) for layers 0..L, each with leading axis L+1, then the batch axis."""
    check_params(params)
    check_batch(x, y, d=params.d, lengths=lengths)
    return _implicit(params, *context(params, x, y, lengths))


@jax.jit
def weights(params: Params, x: Array, y: Array, lengths: Array | None = None) -> Array:
    """w^L (B, d): the model's prediction is exactly <w^L, x_query>. Equal to
    implicit_state(...).w[-1], by a cheaper route (the training objective's)."""
    check_params(params)
    check_batch(x, y, d=params.d, lengths=lengths)
    return _final_weights(params, *context(params, x, y, lengths))
