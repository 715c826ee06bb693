"""Look inside a linear transformer (docs/math.md §3–4): the ω values of each layer, how
close a FULL model is to DIAG, the regressor held after every layer, and the
momentum view of DIAG layers (the paper's Lemma 4.4).

Everything here returns data (arrays, dataclasses, dicts); the CLI and the figures
are thin layers over it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from . import baselines
from .metrics import Evaluation, per_layer_profile
from .model import check_batch, context, gram, implicit_state, layer_grams
from .params import OMEGA_NAMES, Params, check_params, diag_matrix, full_matrices, omegas
from .params import head_omegas as model_head_omegas
from .noise import Fixed, as_noise
from .paper import PAPER_N
from .products import einsum
from .tasks import positive_int, sample_tasks



# --------------------------------------------------------------------------- structure


def diagonal_part(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scalars (m_x, m_y) of diag(m_x I_d, m_y), the DIAG-form matrix nearest to M
    (..., D, D) in Frobenius norm: m_x the mean of the x-block's diagonal, m_y = M_yy."""
    M = np.asarray(M)
    d = M.shape[-1] - 1
    return np.trace(M[..., :d, :d], axis1=-2, axis2=-1) / d, M[..., d, d]


@dataclass(frozen=True)
class Diagonality:
    """How far the P (or Q) matrices of a FULL model are from the DIAG form, per layer.

    fraction: ‖D(M)‖_F / ‖M‖_F over the heads, D the nearest DIAG-form matrix (1 = DIAG).
    rank: rank of the remainder M − D(M): singular values above `rank_tol` times the
          largest singular value of M (the largest over heads).
    singular: the remainder's singular values over ‖M‖₂, descending (head 0)."""

    fraction: np.ndarray  # (L,)
    rank: np.ndarray  # (L,)
    singular: np.ndarray  # (L, D)


def diagonality(M: np.ndarray, rank_tol: float = 0.1) -> Diagonality:
    """`Diagonality` of matrices M (L, H, D, D)."""
    M = np.asarray(M, np.float64)
    d = M.shape[-1] - 1
    Dm = np.asarray(diag_matrix(*(jnp.asarray(a) for a in diagonal_part(M)), d))
    R = M - Dm
    frac = np.sqrt((Dm**2).sum(axis=(1, 2, 3)) / np.maximum((M**2).sum(axis=(1, 2, 3)), np.finfo(float).tiny))
    norm_M = np.linalg.norm(M, ord=2, axis=(-2, -1))  # (L, H)
    sv = np.linalg.svd(R, compute_uv=False)  # (L, H, D)
    rel = sv / np.maximum(norm_M, np.finfo(float).tiny)[..., None]
    return Diagonality(fraction=frac, rank=(rel > rank_tol).sum(axis=-1).max(axis=-1), singular=rel[:, 0])


def nearest_diag(params: Params) -> Params:
    """The DIAG model whose P_k, Q_k are the DIAG-form matrices nearest to the given ones
    (itself, up to the GD++ q_y = 0, for DIAG/GD++ models)."""
    check_params(params)
    P, Q = (np.asarray(a, np.float64) for a in full_matrices(params))
    return Params("diag", params.d, *(jnp.asarray(np.stack(diagonal_part(M), -1)) for M in (P, Q)), params.normalised)


def head_omegas(params: Params) -> np.ndarray:
    """(L, H, 4) [ω_xx, ω_xy, ω_yx, ω_yy] of each head alone (of the nearest DIAG for FULL)."""
    return np.asarray(model_head_omegas(nearest_diag(params)), np.float64)


# --------------------------------------------------------------------------- per layer


def truncated_predictions(params: Params, x: Array, y: Array, x_query: Array) -> Array:
    """(L, B): <w^l, x_query> for l = 1..L, the prediction of the model cut after layer l."""
    check_batch(x, y, x_query, params.d)
    return einsum("lbd,bd->lb", implicit_state(params, x, y).w[1:], x_query)


@dataclass(frozen=True)
class Inspection:
    """What `inspect` finds in one model. For FULL models `omega` is that of the
    nearest DIAG model (`nearest_diag`) and `P`/`Q` say how near it is."""

    variant: str
    layers: int
    heads: int
    d: int
    omega: np.ndarray  # (L, 4) summed over heads
    head_omega: np.ndarray  # (L, H, 4)
    rank_one_gap: np.ndarray  # (L, H) |ω_xx ω_yy − ω_xy ω_yx| of each head alone
    noise: str
    sequences: int
    layer_adjusted_loss: list[Evaluation]  # after layers 1..L
    P: Diagonality | None = None
    Q: Diagonality | None = None

    def rows(self) -> list[dict]:
        """One row per layer: ω, the adjusted loss after it, and for FULL how near
        DIAG its P and Q are (for DIAG/GD++, how far its heads are from rank one)."""
        rows = []
        for l in range(self.layers):
            row = {"layer": l + 1, **dict(zip(("ω_xx", "ω_xy", "ω_yx", "ω_yy"), self.omega[l].tolist())),
                   "adjusted loss": self.layer_adjusted_loss[l].mean}
            if self.P is not None:
                row.update({"P diag share": float(self.P.fraction[l]), "P rest rank": int(self.P.rank[l]),
                            "Q diag share": float(self.Q.fraction[l]), "Q rest rank": int(self.Q.rank[l])})
            else:
                row["head |ω_xx ω_yy − ω_xy ω_yx|"] = float(self.rank_one_gap[l].max())
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        out = {
            "variant": self.variant,
            "layers": self.layers,
            "heads": self.heads,
            "d": self.d,
            "omega_order": list(OMEGA_NAMES),
            "omega": self.omega.tolist(),
            "head_omega": self.head_omega.tolist(),
            "rank_one_gap": self.rank_one_gap.tolist(),
            "noise": self.noise,
            "sequences": self.sequences,
            "layer_adjusted_loss": [e.mean for e in self.layer_adjusted_loss],
            "layer_evaluation": [e.to_dict() for e in self.layer_adjusted_loss],
        }
        if self.P is not None:
            out["omega_source"] = "nearest diag model (diagonal parts of P and Q)"
            for name, dg in (("P", self.P), ("Q", self.Q)):
                out[name] = {"diagonal_fraction": dg.fraction.tolist(), "remainder_rank": dg.rank.tolist(),
                             "remainder_singular_values": dg.singular.tolist()}
        return out


def inspect_model(
    params: Params,
    noise="uniform:5",
    sequences: int = 10_000,
    n: int = PAPER_N,
    key: Array | None = None,
    rank_tol: float = 0.1,
    dtype=None,
) -> Inspection:
    """ω per layer, FULL diagonality, and the per-layer adjusted loss on `noise`
    (sequences in `dtype`, by default that of the parameters)."""
    check_params(params)
    dtype = params.p.dtype if dtype is None else dtype
    noise = as_noise(noise)
    key = jax.random.key(0) if key is None else key
    ho = head_omegas(params)
    full = params.variant == "full"
    P, Q = (np.asarray(a) for a in full_matrices(params))
    profile = per_layer_profile(params, key, noise, positive_int(sequences, "sequences"), positive_int(n, "n"), dtype)
    return Inspection(
        variant=params.variant,
        layers=params.layers,
        heads=params.heads,
        d=params.d,
        omega=ho.sum(axis=1),
        head_omega=ho,
        rank_one_gap=np.abs(ho[..., 0] * ho[..., 3] - ho[..., 1] * ho[..., 2]),
        noise=noise.spec,
        sequences=int(sequences),
        layer_adjusted_loss=profile[1:],
        P=diagonality(P, rank_tol) if full else None,
        Q=diagonality(Q, rank_tol) if full else None,
    )


# --------------------------------------------------------------------------- momentum view

MOMENTUM_SUMMARIES = ("effective_step", "step", "rescaling", "momentum_ratio", "a")


@jax.jit
def _momentum_terms(params: Params, x: Array, y: Array) -> dict[str, Array]:
    d = params.d
    st = implicit_state(params, x, y)
    G, _ = layer_grams(params, gram(*context(params, x, y)))  # G^l for l = 0..L-1, as the layers see them
    M, u, a, w = st.M[:-1], st.u[:-1], st.a[:-1], st.w[:-1]
    Sigma, alpha, lam = G[0, :, :d, :d], G[0, :, :d, d], G[0, :, d, d]
    w_ols = baselines.ols(x, y)  # normal equations hold, so Σ_i r_i x_i = 0
    rho = lam - einsum("bd,bd->b", alpha, w_ols)  # Σ_i r_i²
    w_yx, w_yy = (o[:, None] for o in omegas(params).T[2:])  # (L, 1) each; ω_xx, ω_xy act through M and u
    neg_grad = einsum("bde,lbe->lbd", Sigma, a[..., None] * w_ols - w)  # −∇f(w^l)
    MtM = einsum("lbji,lbjk->lbik", M, M)
    carried = einsum("bd,lbd->lb", w_ols, neg_grad) + a * rho
    gradient = -w_yx[..., None] * einsum("lbij,lbj->lbi", MtM, neg_grad)
    momentum = -(w_yx * carried)[..., None] * einsum("lbji,lbj->lbi", M, u)
    norm = partial(jnp.linalg.norm, axis=-1)
    return {
        "gradient": gradient,
        "momentum": momentum,
        "rescale": (w_yy * G[:, :, d, d])[..., None] * w,
        "delta": st.w[1:] - w,
        "alpha": G[:, :, :d, d],
        "alpha_identity": einsum("lbij,lbj->lbi", M + u[..., None] * w_ols[None, :, None, :], neg_grad)
        + (a * rho)[..., None] * u,
        "effective_step": einsum("lbd,lbd->lb", gradient + momentum, neg_grad) / jnp.sum(neg_grad**2, -1),
        "step": -w_yx * jnp.trace(MtM, axis1=-2, axis2=-1) / d,
        "rescaling": 1 + w_yy * G[:, :, d, d],
        "momentum_ratio": norm(momentum) / norm(gradient),
        "a": a,
    }


def momentum_terms(params: Params, x: Array, y: Array) -> dict[str, Array]:
    """The paper's Lemma 4.4 for a DIAG/GD++ model, each entry (L, B[, d]) for layers
    l = 0..L-1. With f(w) = ½ Σ_i (a^l y_i − <w, x_i>)², the update of the implicit
    regressor splits exactly (docs/math.md §4) as

        w^{l+1} − w^l = rescale + gradient + momentum
        rescale  = ω_yy λ^l w^l                                 (output rescaling)
        gradient = ω_yx M^lᵀ M^l ∇f(w^l)                        (preconditioned GD step)
        momentum = −ω_yx (a^l ρ − w_olsᵀ ∇f(w^l)) M^lᵀ u^l      (carried by u^l)

    with ρ = Σ_i r_i² the OLS residual sum. Also returned: `delta` (the left side),
    `alpha` and `alpha_identity` (α^l computed two ways), the scalar summaries
    `effective_step` = <gradient + momentum, −∇f>/‖∇f‖² (the step taken along the
    gradient, momentum included), `step` = −ω_yx tr(M^lᵀ M^l)/d (that of the
    preconditioned term alone), `rescaling` = 1 + ω_yy λ^l,
    `momentum_ratio` = ‖momentum‖/‖gradient‖ and `a` = a^l."""
    check_params(params)
    if params.variant == "full":
        raise ValueError("the momentum view needs a diag or gdpp model (four ω per layer); inspect a FULL model instead")
    check_batch(x, y, d=params.d)
    return _momentum_terms(params, x, y)


def momentum_profile(params: Params, sigmas, sequences: int = 2000, n: int = PAPER_N, key: Array | None = None,
                     dtype=None) -> dict[str, np.ndarray]:
    """Mean over `sequences` fresh sequences at each fixed σ of each of MOMENTUM_SUMMARIES:
    {name: (len(sigmas), L)}, plus 'sigma'. Sequences in `dtype` (default: the parameters')."""
    key = jax.random.key(0) if key is None else key
    dtype = params.p.dtype if dtype is None else dtype
    sigmas = np.asarray(sigmas, float)
    out = {k: [] for k in MOMENTUM_SUMMARIES}
    for i, s in enumerate(sigmas):
        t = sample_tasks(jax.random.fold_in(key, i), Fixed(float(s)), positive_int(sequences, "sequences"), n, params.d, dtype)
        terms = momentum_terms(params, t.x, t.y)
        for k in MOMENTUM_SUMMARIES:
            out[k].append(np.nanmean(np.asarray(terms[k], np.float64), axis=1))
    return {"sigma": sigmas, **{k: np.stack(v) for k, v in out.items()}}


# --------------------------------------------------------------------------- figures


def heatmap_figure(params: Params, title: str = ""):
    """Figure 4's view: heat maps of Q^l (top) and P^l (bottom) of head 0, per layer."""
    from .plotting import pyplot

    plt = pyplot()
    P, Q = (np.asarray(a[:, 0]) for a in full_matrices(params))
    L = P.shape[0]
    fig, axes = plt.subplots(2, L, figsize=(3.2 * L, 6.4), squeeze=False)
    for row, (name, mats) in enumerate((("Q", Q), ("P", P))):
        for l, ax in enumerate(axes[row]):
            lim = max(float(np.max(np.abs(mats[l]))), np.finfo(float).tiny)
            im = ax.imshow(mats[l], cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(f"{name}^{l + 1}")
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title)
    return fig


def momentum_figure(profile: dict[str, np.ndarray], title: str = ""):
    """Step sizes, output rescaling and momentum share per layer against σ."""
    from .plotting import pyplot

    plt = pyplot()
    sig = profile["sigma"]
    L = profile["step"].shape[1]
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2), layout="constrained")
    cmap = plt.get_cmap("viridis")
    panels = (("effective_step", "step along −∇f, momentum included"), ("step", "preconditioned step −ω_yx tr(MᵀM)/d"),
              ("rescaling", "output rescaling 1 + ω_yy λ^l"), ("momentum_ratio", "‖momentum term‖ / ‖gradient term‖"))
    for ax, (k, label) in zip(axes, panels):
        for l in range(L):
            ax.plot(sig, profile[k][:, l], "o-", ms=3, color=cmap(l / max(L - 1, 1)), label=f"layer {l + 1}")
        ax.set_xlabel("σ of the sequence")
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
