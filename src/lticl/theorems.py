"""The paper's theorems made executable (docs/math.md §8), and the GD++ bound
beside the paper's numbers.

Each check builds the objects a theorem speaks about, runs them through the
library's own model in float64, and returns table rows (dicts): `lticl theory NAME`
prints them and the tests assert the theorems' claims on them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .inits import gd_init, init_params, preconditioner_gammas
from .model import implicit_state, weights
from .noise import Fixed, as_noise
from .paper import PAPER_D, PAPER_N
from .params import OMEGA_NAMES, Params, check_params
from .products import einsum
from .tasks import normal, positive_int, sample_tasks
from .theory import below_bound, linear_bound

# What each check's table shows (`lticl theory NAME`).
TITLES = {
    "thm42": "Thm 4.2: |cos| between layer outputs y^l and (x_i(1)²)_i on noiseless data (bound: best any X c can do)",
    "thm51": "Thm 5.1: layers of GD++ (preconditioning, then one GD step) to relative error ε, against GD's steps",
    "thm52": "Thm 5.2: 2-layer model for σ ∈ {σ1, σ2}, x ~ N(0, I/n): mean ‖w² − w_ridge‖²/‖w_ridge‖²",
    "sec53": "§5.3: ω_xy layer then GD layer = GD step −ω_yx(1 + ω_xy λ), λ = ρ + w_olsᵀΣw_ols; noise part −ω_yx(1 + ω_xy ρ)",
    "gdpp_bound": "GD++ is linear in y: no GD++ model beats ridge at E[σ²] (bound, adjusted loss) against the paper's best GD++",
}

def diag_model(d: int, layers: list[dict]) -> Params:
    """A one-head float64 DIAG model with the given ω per layer (the rest zero).

    One head holds ω = (p_x q_x, p_x q_y, p_y q_x, p_y q_y), so a layer sets either
    the x-row pair (ω_xx, ω_xy) or the y-row pair (ω_yx, ω_yy), not both."""
    d = positive_int(d, "d")
    p, q = [], []
    for om in layers:
        unknown = set(om) - set(OMEGA_NAMES)
        if unknown:
            raise ValueError(f"unknown ω name(s) {sorted(unknown)}; expected some of {', '.join(OMEGA_NAMES)}")
        xx, xy, yx, yy = (float(om.get(k, 0.0)) for k in OMEGA_NAMES)
        if (xx or xy) and (yx or yy):
            raise ValueError(f"one head cannot hold both an x-row and a y-row ω: {om}")
        p.append([1.0, 0.0] if (xx or xy) else [0.0, 1.0])
        q.append([xx, xy] if (xx or xy) else [yx, yy])
    return check_params(Params("diag", d, jnp.asarray(p, jnp.float64)[:, None], jnp.asarray(q, jnp.float64)[:, None]))


# ---- Thm 4.2 -------------------------------------------------------------------


def quadratic_feature_cosines(params: Params, x, y) -> tuple[np.ndarray, np.ndarray]:
    """(cos, bound). cos (L+1, B): cosine between the context outputs y^l of layers
    l = 0..L and the feature q = (x_i(1)²)_i. bound (B,): ‖P_X q‖/‖q‖, the largest
    cosine any vector X c reaches. On noiseless data y^l = X (a^l w − w^l) is such a
    vector, whatever the parameters: the mechanism of Thm 4.2."""
    st = implicit_state(params, x, y)
    out = st.a[..., None] * y[None] - einsum("lbd,bnd->lbn", st.w, x)  # y_i^l
    q = x[..., 0] ** 2
    cos = einsum("lbn,bn->lb", out, q) / (jnp.linalg.norm(out, axis=-1) * jnp.linalg.norm(q, axis=-1))
    coef = jnp.linalg.solve(einsum("bni,bnj->bij", x, x), einsum("bni,bn->bi", x, q)[..., None])
    bound = jnp.linalg.norm(einsum("bni,bi->bn", x, coef[..., 0]), axis=-1) / jnp.linalg.norm(q, axis=-1)
    return np.asarray(cos), np.asarray(bound)


def default_thm42_models(d: int = PAPER_D, n_train: int = PAPER_N, seed: int = 0) -> dict[str, Params]:
    """Random FULL and DIAG models (entries N(0, 0.05²)) and a perturbed 7-layer GD model."""
    key = jax.random.key(seed)
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "random FULL, 3 layers": init_params(k1, "full", 3, d, scale=0.05, dtype=jnp.float64),
        "random DIAG, 3 layers": init_params(k2, "diag", 3, d, scale=0.3, dtype=jnp.float64),
        "GD init (perturbed), 7 layers": gd_init(k3, "full", 7, d, step_size=1 / (n_train + d + 1), scale=0.1,
                                                 dtype=jnp.float64),
    }


def thm42(models: dict[str, Params] | None = None, n: int = 5000, d: int = PAPER_D, sequences: int = 16,
          n_train: int = PAPER_N, seed: int = 0) -> list[dict]:
    """Thm 4.2 on noiseless data y = <w, x>, n ≫ d: per model and layer, the largest
    and mean |cosine| between y^l and (x_i(1)²)_i over `sequences` sequences, and the
    column-space bound. x_i ~ N(0, (n_train/n) I), so that Σ has the scale the
    (trained) models saw at n_train points; cosines do not depend on that scale."""
    n, d, sequences = (positive_int(v, k) for v, k in ((n, "n"), (d, "d"), (sequences, "sequences")))
    if n <= d:
        raise ValueError(f"Thm 4.2 is about n ≫ d; got n = {n}, d = {d}")
    with jax.enable_x64(True):
        models = default_thm42_models(d, n_train, seed) if models is None else models
        t = sample_tasks(jax.random.key(seed + 1), Fixed(0.0), sequences, n, d, jnp.float64)
        x = t.x * (n_train / n) ** 0.5
        y = einsum("bnd,bd->bn", x, t.w)
        rows = []
        for name, params in models.items():
            if params.d != d:
                raise ValueError(f"model {name!r} has d = {params.d}, not {d}")
            params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
            cos, bound = quadratic_feature_cosines(params, x, y)
            for l in range(cos.shape[0]):
                c = np.abs(cos[l])
                rows.append({"model": name, "layer": l, "max_abs_cos": float(np.max(c)), "mean_abs_cos": float(np.mean(c)),
                             "bound_max": float(np.max(bound)), "n": n, "d": d})
    return rows


# ---- Thm 5.1 -------------------------------------------------------------------


def spectrum_after(mu: np.ndarray, gammas) -> np.ndarray:
    """Eigenvalues of Σ after the preconditioning steps: μ ↦ μ (1 − γ μ)² per step."""
    mu = np.asarray(mu, np.float64)
    for g in gammas:
        mu = mu * (1 - g * mu) ** 2
    return mu


def gdpp_newton_model(mu: np.ndarray, steps: int) -> Params:
    """Thm 5.1's construction for a Σ with eigenvalues `mu`: `steps` preconditioning
    layers (ω_xx = −γ_l), then one GD layer with ω_yx = −2/(μ_max + μ_min) of the
    preconditioned spectrum. Returned as a DIAG model with q_y = 0 (a GD++ model)."""
    mu = np.asarray(mu, np.float64)
    gammas, _ = preconditioner_gammas(mu.max(), steps)  # Thm 5.1: γ_l ν_l = 1/3
    final = spectrum_after(mu, gammas)
    layers = [{"omega_xx": -g} for g in gammas] + [{"omega_yx": -2.0 / (final.max() + final.min())}]
    return diag_model(mu.size, layers)


def _design(key, mu: np.ndarray, n: int) -> np.ndarray:
    """X (n, d) whose Σ = XᵀX has eigenvalues mu (random eigenvectors): X = U diag(√μ) Vᵀ."""
    d = mu.size
    U = np.linalg.qr(np.asarray(normal(key, (n, d), jnp.float64)))[0]
    V = np.linalg.qr(np.asarray(normal(jax.random.fold_in(key, 1), (d, d), jnp.float64)))[0]
    return U @ np.diag(np.sqrt(mu)) @ V.T


def thm51(kappas=(10.0, 1e2, 1e3, 1e4), epsilons=(1e-1, 1e-2, 1e-4, 1e-8), d: int = PAPER_D, n: int = 40,
          seed: int = 0, max_layers: int = 40) -> list[dict]:
    """Thm 5.1: for Σ with condition number κ (eigenvalues log-spaced in [1, κ]) and
    noiseless y = Xw, the fewest layers L (L − 1 preconditioning steps, one GD step)
    whose prediction w^L has ‖w^L − w‖/‖w‖ ≤ ε, measured by running the model;
    beside it the closed-form bound of the construction, GD's step count at its
    best fixed step ((κ−1)/(κ+1) per step) and log κ + log log(1/ε)."""
    d, n = positive_int(d, "d"), positive_int(n, "n")
    if n < d:
        raise ValueError(f"need n >= d for a full-rank Σ; got n = {n}, d = {d}")
    rows = []
    with jax.enable_x64(True):
        for i, kappa in enumerate(kappas):
            if not kappa >= 1:
                raise ValueError(f"condition numbers must be >= 1, got {kappa}")
            mu = np.geomspace(1.0, kappa, d)
            key = jax.random.fold_in(jax.random.key(seed), i)
            X = _design(key, mu, n)
            w = np.asarray(jax.random.normal(jax.random.fold_in(key, 2), (d,), jnp.float64))
            y = X @ w
            errors = []
            for steps in range(max_layers):
                params = gdpp_newton_model(mu, steps)
                w_L = np.asarray(weights(params, jnp.asarray(X[None]), jnp.asarray(y[None])))[0]
                errors.append(float(np.linalg.norm(w_L - w) / np.linalg.norm(w)))
            for eps in epsilons:
                hit = [s for s, e in enumerate(errors) if e <= eps]
                fin = spectrum_after(mu, preconditioner_gammas(mu.max(), hit[0] if hit else 0)[0])
                rows.append({
                    "kappa": float(kappa),
                    "epsilon": float(eps),
                    "layers": hit[0] + 1 if hit else None,
                    "error": errors[hit[0]] if hit else None,
                    "bound": float((fin.max() - fin.min()) / (fin.max() + fin.min())),
                    "gd_steps": math.ceil(math.log(1 / eps) / math.log((kappa + 1) / (kappa - 1))) if kappa > 1 else 1,
                    "log_kappa_plus_loglog": math.log(kappa) + math.log(math.log(1 / eps)),
                })
    return rows


# ---- Thm 5.2 -------------------------------------------------------------------


def two_noise_omegas(sigma1: float, sigma2: float, n: int) -> tuple[float, float]:
    """(ω_yx, ω_yy) with (1 + n σ² ω_yy) s = 1/(1 + σ²) for σ ∈ {σ1, σ2}, s = −ω_yx
    the GD step (our sign convention, ŷ = −y_query):
    s = (1 + σ1² + σ2²)/((1 + σ1²)(1 + σ2²)), n ω_yy s = −1/((1 + σ1²)(1 + σ2²))."""
    a, b = 1 + float(sigma1) ** 2, 1 + float(sigma2) ** 2
    if a == b:
        raise ValueError("Thm 5.2 needs two different noise levels")
    step = (a + b - 1) / (a * b)
    return -step, -1 / (a * b) / (n * step)


def thm52(sigmas=(1.0, 3.0), ns=(10, 100, 1000, 10_000, 100_000), d: int = 5, sequences: int = 32,
          seed: int = 0) -> list[dict]:
    """Thm 5.2: x_i ~ N(0, I/n), σ ∈ {σ1, σ2}; the 2-layer model (ω_yx only, then
    ω_yy only) of `two_noise_omegas`. Per n and σ: mean ‖w² − w_ridge‖²/‖w_ridge‖²
    with w_ridge = (Σ + σ² I)⁻¹ α, the sequence's own σ (the oracle), and for contrast
    the same for the best single-penalty ridge of one GD step, s α."""
    from . import baselines

    d, sequences = positive_int(d, "d"), positive_int(sequences, "sequences")
    rows = []
    with jax.enable_x64(True):
        for i, n in enumerate(ns):
            n = positive_int(n, "n")
            w_yx, w_yy = two_noise_omegas(*sigmas, n)
            params = diag_model(d, [{"omega_yx": w_yx}, {"omega_yy": w_yy}])
            for j, sigma in enumerate(sigmas):
                t = sample_tasks(jax.random.fold_in(jax.random.key(seed), 100 * i + j), Fixed(float(sigma)), sequences, n, d,
                                 jnp.float64)
                x = t.x / n**0.5  # x_i ~ N(0, I/n); the noise ξ_i = y_i − <w, x_i> keeps its σ
                y = t.y + einsum("bnd,bd->bn", x - t.x, t.w)
                ridge = baselines.ridge(x, y, float(sigma) ** 2)
                w2 = weights(params, x, y)
                gd_step = -w_yx * einsum("bnd,bn->bd", x, y)
                rel = lambda v: float(jnp.mean(jnp.sum((v - ridge) ** 2, -1) / jnp.sum(ridge**2, -1)))
                rows.append({"n": n, "sigma": float(sigma), "omega_yx": w_yx, "omega_yy": w_yy,
                             "model_vs_ridge": rel(w2), "one_gd_step_vs_ridge": rel(gd_step)})
    return rows


# ---- §5.3 ----------------------------------------------------------------------


def sec53(omega_xy: float = -5e-4, omega_yx: float = -1 / 31, sigmas=(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0),
          n: int = PAPER_N, d: int = PAPER_D, sequences: int = 4000, seed: int = 0) -> list[dict]:
    """§5.3: a layer with only ω_xy, then a GD layer (only ω_yx). Exactly,
    w² = −ω_yx (1 + ω_xy λ) α with λ = Σ y_i² = ρ + w_olsᵀ Σ w_ols and ρ = Σ r_i² the
    OLS residual sum; the noise enters through ρ, giving the GD step of size
    −ω_yx (1 + ω_xy ρ). Per σ: the identity's largest relative error, the mean
    exact step and the mean −ω_yx (1 + ω_xy ρ), and the loss of w² against one
    plain GD step −ω_yx α."""
    from . import baselines

    n, d = positive_int(n, "n"), positive_int(d, "d")
    rows = []
    with jax.enable_x64(True):
        params = diag_model(d, [{"omega_xy": omega_xy}, {"omega_yx": omega_yx}])
        for i, sigma in enumerate(sigmas):
            t = sample_tasks(jax.random.fold_in(jax.random.key(seed), i), Fixed(float(sigma)), sequences, n, d, jnp.float64)
            w2 = weights(params, t.x, t.y)
            alpha = einsum("bnd,bn->bd", t.x, t.y)
            lam = jnp.sum(t.y**2, -1)
            rho = lam - einsum("bd,bd->b", alpha, baselines.ols(t.x, t.y))
            step = -omega_yx * (1 + omega_xy * lam)
            pred = step[:, None] * alpha
            loss = lambda v: float(jnp.mean(0.5 * jnp.sum((v - t.w) ** 2, -1)))
            rows.append({
                "sigma": float(sigma),
                "identity_rel_error": float(jnp.max(jnp.linalg.norm(w2 - pred, axis=-1) / jnp.linalg.norm(pred, axis=-1))),
                "step_exact": float(jnp.mean(step)),
                "step_noise_part": float(jnp.mean(-omega_yx * (1 + omega_xy * rho))),
                "mean_rho": float(jnp.mean(rho)),
                "loss_model": loss(w2),
                "loss_plain_gd_step": loss(-omega_yx * alpha),
            })
    return rows


def gdpp_bound(settings=None, n: int = PAPER_N, d: int = PAPER_D, sequences: int = 20_000, seed: int = 0,
               evaluation: int = 100_000) -> list[dict]:
    """Per noise setting: `linear_bound` (no GD++ model can beat it in expectation)
    beside the paper's GD++ numbers (the best over depth) and its CONSTRR.
    `evaluation_sem`: the standard error of an `evaluation`-sequence mean of ridge
    at E[σ²] (the paper's evaluation noise, from sampled tasks); `paper_below_bound`:
    `below_bound` for the paper's best GD++."""
    from . import baselines
    from .metrics import oracle_loss, sequence_loss
    from .paper import paper_settings, paper_value

    rows = []
    for i, s in enumerate(settings or paper_settings()):
        bound, se = linear_bound(s, n, d, sequences, seed + i)
        with jax.enable_x64(True):
            t = sample_tasks(jax.random.fold_in(jax.random.key(seed), 1000 + i), s, sequences, n, d, jnp.float64)
            per_seq = sequence_loss(baselines.ridge(t.x, t.y, as_noise(s).second_moment), t.w) - oracle_loss(t)
            sem = float(jnp.std(per_seq)) / math.sqrt(evaluation)
        best = min(v for L in range(1, 8) if (v := paper_value("gdpp", s, L)) is not None)
        rows.append({"setting": s, "bound": bound, "bound_se": se, "evaluation_sem": sem, "paper_gdpp_best": best,
                     "paper_constrr": paper_value("constrr", s), "paper_below_bound": below_bound(best, bound, sem)})
    return rows
