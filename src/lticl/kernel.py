"""The training step's loss and gradient by hand (docs/math.md §9): the engine's fast
path. `engine` keeps autodiff through `model.weights` as the reference that tests
compare this against. Its forward pass alone (`weights`) is how selection and
evaluation compute a model's w^L.

    loss, grads = value_and_grad(params, x, y, loss_of_w)   # loss_of_w(w^L (B, d)) -> scalar
    w = weights(params, x, y)                                # (B, d)

Layout: every per-sequence (D, D) matrix is stored batch-last, (D, D, B), so that a
product of two of them is eleven multiply-adds of whole rows of B lanes, which XLA
fuses into one vectorised loop. Each product ends in a division by ones computed
from the data, an array of the product's shape (a broadcast divisor XLA would turn
into a multiplication): XLA counts division as expensive and so keeps the product
in its own loop instead of recomputing it inside every consumer that reads it,
eleven times over (docs/log/2026-12-02-kernel.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import jax
import jax.numpy as jnp
from jax import Array

from .model import context
from .params import Params, full_matrices
from .products import einsum, matmul


class _Ops:
    """Products of batch-last matrices, each materialised once (see the module's note)."""

    def __init__(self, one: Array):
        self.one = one

    def keep(self, a: Array) -> Array:
        return a / self.one

    def mm(self, a: Array, b: Array) -> Array:  # a b: (I, J, B) × (J, K, B)
        return self.keep(sum(a[:, j, None, :] * b[None, j, :, :] for j in range(a.shape[1])))

    def mm_t(self, a: Array, b: Array) -> Array:  # a bᵀ: (I, J, B) × (K, J, B)
        return self.keep(sum(a[:, j, None, :] * b[None, :, j, :] for j in range(a.shape[1])))

    def t_mm(self, a: Array, b: Array) -> Array:  # aᵀ b: (J, I, B) × (J, K, B)
        return self.keep(sum(a[j, :, None, :] * b[None, j, :, :] for j in range(a.shape[0])))

    def left(self, P: Array, X: Array) -> Array:  # P X: (I, J) × (J, K, B)
        return self.keep(sum(P[:, j, None, None] * X[None, j] for j in range(P.shape[1])))

    def right(self, X: Array, Q: Array) -> Array:  # X Q: (I, K, B) × (K, M)
        return self.keep(sum(X[:, k, None, :] * Q[None, k, :, None] for k in range(Q.shape[0])))


def _t(a: Array) -> Array:
    """The transpose of each sequence's matrix."""
    return jnp.swapaxes(a, 0, 1)


def _mixer(params: Params, o: _Ops):
    """(per-layer parameters θ, mix(θ, G) = Σ_k P_k G Q_k, its adjoint (θ, G, dK) ->
    (dθ, dG), dθ -> gradient in params)."""
    if params.variant == "full":
        def mix(th, G):
            P, Q = th
            return sum(o.left(P[h], o.right(G, Q[h])) for h in range(P.shape[0]))

        def adjoint(th, G, dK):
            P, Q = th
            dP, dQ, dG = [], [], 0.0
            for h in range(P.shape[0]):
                R, St = o.right(dK, Q[h].T), o.right(_t(dK), P[h])  # dK Qᵀ and (Pᵀ dK)ᵀ
                dP.append(einsum("imb,jmb->ij", R, G))  # Σ_b dK Qᵀ G  (G symmetric)
                dQ.append(einsum("mjb,kjb->mk", St, G).T)  # Σ_b G Pᵀ dK
                dG = dG + o.left(P[h].T, R)
            return (jnp.stack(dP), jnp.stack(dQ)), dG

        return (params.p, params.q), mix, adjoint, lambda d: replace(params, p=d[0], q=d[1])

    # DIAG and GD++: Σ_k P_k G Q_k = M ⊙ G with one (D, D) mask per layer.
    def mask(prm):
        P, Q = full_matrices(prm)
        return einsum("lhii,lhjj->lij", P, Q)

    def adjoint(m, G, dK):  # Σ_b dK ⊙ G as a matrix-vector product, which XLA does well
        lanes = G.shape[-1]
        return matmul((dK * G).reshape(-1, lanes), jnp.ones(lanes, G.dtype)).reshape(m.shape), m[:, :, None] * dK

    masks, to_params = jax.vjp(mask, params)
    return masks, lambda m, G: m[:, :, None] * G, adjoint, lambda d: to_params(d)[0]


def _forward(params: Params, x: Array, y: Array, lengths: Array | None):
    """The forward pass in this layout: the ones of `_Ops`, the mixer (`_mixer`), G^l and
    T^l of every layer (L, D, D, B), rs[l] = r_{l+1}, the query's row after layer l
    (L, D, B), and w^L (B, d)."""
    B, _, d = x.shape
    x, y = context(params, x, y, lengths)
    e = jnp.transpose(jnp.concatenate([x, y[..., None]], axis=-1), (2, 1, 0))  # (D, n, B)
    G0 = einsum("inb,jnb->ijb", e, e)
    o = _Ops(jnp.sign(jnp.abs(G0) + 1))  # ones (inf included) that XLA cannot fold, not a broadcast
    mixer = _mixer(params, o)
    theta, mix = mixer[:2]
    eye = jnp.eye(d + 1, dtype=x.dtype)[:, :, None]

    def forward(G, th):  # G^{l+1} = T G Tᵀ with T = I + K
        T = o.keep(eye + mix(th, G))
        return o.mm_t(o.mm(T, G), T), (G, T)

    _, (Gs, Ts) = jax.lax.scan(forward, G0, theta)
    # The query's row: r_L = e_D, r_l = r_{l+1} T_l, w^L = −r_0[:d]; rs[l] = r_{l+1}.
    r_last = jnp.zeros((d + 1, B), x.dtype).at[d].set(1.0)
    _, rs = jax.lax.scan(lambda r, T: (_row(r, T), r), r_last, Ts, reverse=True)
    return o, mixer, Gs, Ts, rs, -_row(rs[0], Ts[0])[:d].T


def _row(r: Array, T: Array) -> Array:
    """r T for a row r (D, B) of each sequence."""
    return sum(r[i][None] * T[i] for i in range(T.shape[0]))


def weights(params: Params, x: Array, y: Array, lengths: Array | None = None) -> Array:
    """w^L (B, d) in this layout: `model.weights` to rounding, and faster on a CPU from
    two layers up (BENCHMARKS.md, Evaluation's forward pass)."""
    return _forward(params, x, y, lengths)[-1]


def value_and_grad(params: Params, x: Array, y: Array, loss_of_w: Callable[[Array], Array],
                   lengths: Array | None = None) -> tuple[Array, Params]:
    """loss_of_w(w^L) for context x (B, n, d), y (B, n), and its gradient in params:
    equal to jax.value_and_grad of loss_of_w(model.weights(params, x, y, lengths)) to
    rounding."""
    B, _, d = x.shape
    o, (theta, _, adjoint, as_params), Gs, Ts, rs, w = _forward(params, x, y, lengths)
    loss, dw = jax.value_and_grad(loss_of_w)(w)
    dr0 = jnp.concatenate([-dw.T.astype(w.dtype), jnp.zeros((1, B), w.dtype)])

    def row_back(dr, Tr):  # dr_{l+1} = dr_l T_lᵀ, and T_l's share: r_{l+1} ⊗ dr_l
        T, r = Tr
        return sum(T[:, j] * dr[j][None] for j in range(d + 1)), r[:, None, :] * dr[None, :, :]

    _, dT_rows = jax.lax.scan(row_back, dr0, (Ts, rs))

    def backward(H, inputs):  # H = dG^{l+1} + its transpose (G is symmetric)
        G, T, dT, th = inputs
        G, T, dT = o.keep(G), o.keep(T), o.keep(dT)  # read once here, not through a slice in every product
        HT = o.mm(H, T)
        dK = o.keep(dT + o.mm(HT, G))
        d_theta, dG = adjoint(th, G, dK)
        return o.t_mm(T, HT) + dG + _t(dG), d_theta

    _, d_theta = jax.lax.scan(backward, jnp.zeros_like(Gs[0]), (Gs, Ts, dT_rows, theta), reverse=True)
    return loss, as_params(jax.tree.map(lambda g, th: g.astype(th.dtype), d_theta, theta))
