"""Closed-form regression baselines (docs/math.md §6), batched and jittable.

Every ridge-family estimator and k-step GD from w = 0 is a *spectral filter*:
with Σ = V diag(μ) Vᵀ and β = Vᵀ α,

    ŵ = V (f(μ) ⊙ β),   ridge: f = 1/(μ + r),   GD(k, η): f = (1 − (1 − ημ)^k)/μ.

So one eigendecomposition per sequence serves all of them, and the exact loss
½‖ŵ − w‖² = ½‖f ⊙ β − Vᵀw‖² costs O(d) per candidate penalty: tuning CONSTRR,
TUNEDRR and GD over grids is cheap. Tuning only ever sees the sequences it is
given; callers pass sequences kept apart from evaluation.

All functions take x (B, n, d), y (B, n) and return ŵ (B, d) unless stated.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from .model import check_batch
from .products import einsum
from .tasks import Tasks, positive_int


class Spectrum(NamedTuple):
    """Eigen-view of each sequence's normal equations."""

    mu: Array  # (B, d) eigenvalues of Σ = Σ_i x_i x_iᵀ, ascending
    V: Array  # (B, d, d) eigenvectors (columns)
    beta: Array  # (B, d) Vᵀ α with α = Σ_i y_i x_i


def spectrum(x: Array, y: Array) -> Spectrum:
    mu, V = jnp.linalg.eigh(einsum("bnd,bne->bde", x, x))
    beta = einsum("bdk,bd->bk", V, einsum("bnd,bn->bd", x, y))
    return Spectrum(mu, V, beta)


def _pinv_diag(mu: Array) -> Array:
    """1/μ where μ is numerically non-zero, else 0 (minimum-norm OLS when n < d)."""
    tol = mu[..., -1:] * mu.shape[-1] * jnp.finfo(mu.dtype).eps
    return jnp.where(mu > tol, 1.0 / jnp.where(mu > tol, mu, 1.0), 0.0)


def ridge_filter(mu: Array, penalty: Array) -> Array:
    """f(μ) of ridge; `penalty` broadcasts against mu[..., 0] (scalar or (B,)).
    A zero penalty gives the minimum-norm OLS filter."""
    r = jnp.asarray(penalty, mu.dtype)[..., None]
    return jnp.where(r > 0, 1.0 / (mu + r), _pinv_diag(mu))


def gd_filter(mu: Array, step_size, steps: int) -> Array:
    """f(μ) of `steps` GD steps of size η on ½Σ(y_i − <w, x_i>)² from w = 0."""
    eta = jnp.asarray(step_size, mu.dtype)[..., None]
    q = 1 - eta * mu
    # (1 − q^k)/μ = η Σ_{j<k} q^j, summed by Horner so μ → 0 stays exact.
    geometric = jax.lax.fori_loop(1, steps, lambda _, acc: 1 + q * acc, jnp.ones_like(q))
    return eta * geometric


def apply_filter(s: Spectrum, f: Array) -> Array:
    return einsum("bdk,bk->bd", s.V, f * s.beta)


def _eigen_loss(w_hat_eig: Array, w_eig: Array) -> Array:
    return 0.5 * jnp.sum((w_hat_eig - w_eig) ** 2, axis=-1)


# --------------------------------------------------------------------------- estimators


def _checked(x, y) -> Spectrum:
    check_batch(x, y)
    return spectrum(x, y)


def ridge(x: Array, y: Array, penalty) -> Array:
    """(Σ + rI)⁻¹ α; penalty r ≥ 0, scalar or (B,); r = 0 is OLS."""
    s = _checked(x, y)
    return apply_filter(s, ridge_filter(s.mu, penalty))


def ols(x: Array, y: Array) -> Array:
    """Least squares Σ⁻¹ α (minimum-norm solution when n < d)."""
    return ridge(x, y, 0.0)


def oracle(x: Array, y: Array, sigma: Array) -> Array:
    """Posterior mean for w ~ N(0, I): ridge with the true r = σ_τ², sigma (B,)."""
    return ridge(x, y, jnp.asarray(sigma) ** 2)


def _check_noise_estimable(x, y) -> None:
    check_batch(x, y)
    n, d = x.shape[1:]
    if n <= d:
        raise ValueError(f"estimating the noise (ADARR, TUNEDRR) needs n > d; got n = {n}, d = {d}")


def noise_estimate(x: Array, y: Array) -> Array:
    """σ̂² = RSS_OLS / (n − d) per sequence: (B,). Needs n > d."""
    _check_noise_estimable(x, y)
    return _noise_estimate(spectrum(x, y), y)


def _noise_estimate(s: Spectrum, y: Array) -> Array:
    # RSS = λ − αᵀ Σ⁻¹ α = λ − Σ β²/μ; the subtraction loses precision in float32, so
    # clip at 0 (an exact fit gives RSS ≈ 0, never below).
    n, d = y.shape[-1], s.mu.shape[-1]
    rss = jnp.sum(y * y, axis=-1) - jnp.sum(s.beta**2 * _pinv_diag(s.mu), axis=-1)
    return jnp.maximum(rss, 0.0) / (n - d)


def tunedrr_penalty(sigma2_hat: Array, cap, multiplier) -> Array:
    """TUNEDRR's penalty min(c σ̂², t)."""
    return jnp.minimum(multiplier * sigma2_hat, cap)


def adarr(x: Array, y: Array) -> Array:
    """Ridge with the estimated noise variance σ̂² as penalty."""
    return ridge(x, y, noise_estimate(x, y))


def tunedrr(x: Array, y: Array, cap, multiplier) -> Array:
    """Ridge with penalty min(multiplier · σ̂², cap)."""
    return ridge(x, y, tunedrr_penalty(noise_estimate(x, y), cap, multiplier))


def gd(x: Array, y: Array, steps: int, step_size) -> Array:
    """`steps` steps of GD with step size η from w = 0 (closed form)."""
    steps = positive_int(steps, "steps")
    s = _checked(x, y)
    return apply_filter(s, gd_filter(s.mu, step_size, steps))


@partial(jax.jit, static_argnames="iterations")
def _adarr_iterative(x, y, iterations):
    n, d = x.shape[1:]
    Sigma = einsum("bnd,bne->bde", x, x)
    alpha = einsum("bnd,bn->bd", x, y)
    # Max absolute row sum bounds the top eigenvalue without any factorisation.
    bound = jnp.max(jnp.sum(jnp.abs(Sigma), axis=-1), axis=-1)

    def descend(penalty):
        eta = (1.0 / (bound + penalty))[:, None]

        def step(w, _):
            grad = einsum("bde,be->bd", Sigma, w) + penalty[:, None] * w - alpha
            return w - eta * grad, None

        return jax.lax.scan(step, jnp.zeros_like(alpha), None, length=iterations)[0]

    w_ols = descend(jnp.zeros_like(bound))
    resid = y - einsum("bnd,bd->bn", x, w_ols)
    sigma2_hat = jnp.sum(resid**2, axis=-1) / (n - d)
    return descend(sigma2_hat)


def adarr_iterative(x: Array, y: Array, iterations: int = 100) -> Array:
    """ADARR without a matrix inverse: `iterations` GD steps for OLS, the noise
    estimate from its residuals, then `iterations` GD steps on the ridge objective.
    Step sizes come from a row-sum bound on the top eigenvalue of Σ."""
    _check_noise_estimable(x, y)
    return _adarr_iterative(x, y, positive_int(iterations, "iterations"))


# --------------------------------------------------------------------------- tuning


def _coarse_to_fine(loss, lo, hi, points: int, extra=(), rounds: int = 5, refine_points: int = 7):
    """Minimise loss(theta (K, P)) -> (K,) over a box in log10 space: a grid of
    `points` per axis, then `rounds` grids of `refine_points` per axis around the
    best point so far, each cell (refine_points − 1)/2 times finer. `extra`
    candidates (natural units, e.g. a zero penalty) are tried too.
    Returns the best theta (P,) in natural units."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    best, best_loss = None, np.inf
    if len(extra):
        vals = np.asarray(loss(jnp.asarray(extra, float)))
        i = int(np.nanargmin(vals))
        best, best_loss = np.asarray(extra[i], float), float(vals[i])
    for r in range(rounds + 1):
        k = points if r == 0 else refine_points
        axes = [np.linspace(a, b, k) for a, b in zip(lo, hi)]
        grid = np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=-1)
        vals = np.asarray(loss(jnp.asarray(10.0**grid)))
        i = int(np.nanargmin(vals))
        if vals[i] < best_loss:
            best, best_loss = 10.0 ** grid[i], float(vals[i])
        width = (hi - lo) / (k - 1)
        lo, hi = grid[i] - width, grid[i] + width
    return best


@partial(jax.jit, static_argnames="filter_of")
def _mean_losses(thetas, filter_of, mu, beta, w_eig, aux):
    """Mean loss (K,) of the filters filter_of(theta, mu, aux) for thetas (K, P),
    one candidate at a time: the work is memory-bound, and batching candidates
    measured slower."""
    thetas = thetas.astype(mu.dtype)
    mean_loss = lambda th: jnp.mean(_eigen_loss(filter_of(th, mu, aux) * beta, w_eig))
    return jax.lax.map(mean_loss, thetas)


def _tune(s: Spectrum, w: Array, filter_of, aux, lo, hi, points, extra=()):
    w_eig = einsum("bdk,bd->bk", s.V, w)
    loss = partial(_mean_losses, filter_of=filter_of, mu=s.mu, beta=s.beta, w_eig=w_eig, aux=aux)
    return _coarse_to_fine(loss, lo, hi, points, extra=extra)


def _constrr_filter(theta, mu, aux):
    return ridge_filter(mu, theta[0])


def _tunedrr_filter(theta, mu, sigma2_hat):
    return ridge_filter(mu, tunedrr_penalty(sigma2_hat, theta[0], theta[1]))


def _gd_filter(theta, mu, aux, *, steps):
    return gd_filter(mu, theta[0], steps)


def tune_constrr(tasks: Tasks, s: Spectrum | None = None) -> float:
    """The constant ridge penalty with the lowest mean loss on `tasks`
    (`s`: their spectrum, if already computed)."""
    s = spectrum(tasks.x, tasks.y) if s is None else s
    return float(_tune(s, tasks.w, _constrr_filter, None, [-4], [4], 81, extra=[[0.0]])[0])


class TunedRR(NamedTuple):
    cap: float  # t
    multiplier: float  # c


def tune_tunedrr(tasks: Tasks, s: Spectrum | None = None) -> TunedRR:
    """TUNEDRR's cap t and multiplier c (penalty min(c σ̂², t)) with the lowest mean loss."""
    _check_noise_estimable(tasks.x, tasks.y)
    s = spectrum(tasks.x, tasks.y) if s is None else s
    sigma2_hat = _noise_estimate(s, tasks.y)
    # cap up to 1e6 is no cap at all for σ ≤ 10; multiplier 0 is ridge-free OLS.
    cap, mult = _tune(s, tasks.w, _tunedrr_filter, sigma2_hat, [-3, -2], [6, 2], 13, extra=[[1e6, 0.0]])
    return TunedRR(float(cap), float(mult))


def tune_gd(tasks: Tasks, steps: int, s: Spectrum | None = None) -> float:
    """The GD step size with the lowest mean loss after `steps` steps from w = 0."""
    steps = positive_int(steps, "steps")
    s = spectrum(tasks.x, tasks.y) if s is None else s
    # Steps larger than 2/μ_max diverge; 1 bounds every useful step for n ≥ 1.
    return float(_tune(s, tasks.w, partial(_gd_filter, steps=steps), None, [-5], [0], 81)[0])


# --------------------------------------------------------------------------- registry


class Fitted(NamedTuple):
    """A tuned baseline: ŵ = fn(x, y, **tuned). Keeping the tuned values apart from
    the function lets one compiled evaluation serve every noise setting."""

    fn: object  # (x, y, **tuned) -> ŵ
    tuned: dict[str, float]

    def __call__(self, x: Array, y: Array) -> Array:
        return self.fn(x, y, **self.tuned)


_FIT = {
    "constrr": lambda tasks, s: Fitted(ridge, {"penalty": tune_constrr(tasks, s)}),
    "adarr": lambda tasks, s: Fitted(adarr, {}),
    "tunedrr": lambda tasks, s: Fitted(tunedrr, tune_tunedrr(tasks, s)._asdict()),
    "ols": lambda tasks, s: Fitted(ols, {}),
    "adarr_iterative": lambda tasks, s: Fitted(adarr_iterative, {}),
}
BASELINES = tuple(_FIT)


def fit(names, tuning_tasks: Tasks) -> dict[str, Fitted]:
    """Tune the baselines `names` (from BASELINES) on `tuning_tasks`."""
    unknown = [nm for nm in names if nm not in _FIT]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; expected some of {', '.join(BASELINES)}")
    s = spectrum(tuning_tasks.x, tuning_tasks.y)
    return {nm: _FIT[nm](tuning_tasks, s) for nm in names}
