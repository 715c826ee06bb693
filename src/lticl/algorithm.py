"""A trained linear transformer as a plain regression solver, and how it compares.

`algorithm(model)` returns a NumPy function (X, y) -> w that runs the model's
learned algorithm on any regression problem, with any number of points n, in the
Gram form of docs/math.md §4: G = [X y]ᵀ[X y] once (O(n d²)), then per layer
T = I + Σ_k P_k G Q_k, G ← T G Tᵀ (O(d³)); the query moves by the product of the
T's, so w = −(T^{L-1}⋯T^0)[d, :d]. No JAX is involved.

`compare(...)` runs it next to OLS, ADARR, TUNEDRR and GD with as many steps as the
model has layers on held-out problems: other n than trained on, σ outside the
training range, and the diabetes data of scikit-learn cut into many small problems.
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .io import load_npz
from .paper import PAPER_D, PAPER_N
from .params import Params, check_params, full_matrices

Solver = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _matrices(model) -> tuple[np.ndarray, np.ndarray, bool]:
    if isinstance(model, (str, os.PathLike)):
        model = load_npz(model)
    check_params(model)
    P, Q = (np.asarray(a, np.float64) for a in full_matrices(model))
    return P, Q, model.normalised


def algorithm(model: Params | str | os.PathLike, trained_n: int | None = None) -> Solver:
    """The model's learned algorithm as a NumPy function (X, y) -> w in float64.

    X (n, d) and y (n,) give w (d,); stacked problems X (B, n, d), y (B, n) give (B, d).
    Its prediction for a query x is <w, x>, exactly the model's ŷ = −y_query.

    A plain model's ω are tuned to the size of G at the n it was trained on, and G
    grows with n. With `trained_n` set, G is first scaled by trained_n / n (the sums
    become trained_n × averages), a variant that the model itself is not. A
    normalised model (Params.normalised) divides G by n itself."""
    P, Q, normalised = _matrices(model)
    if trained_n is not None and (int(trained_n) != trained_n or trained_n < 1):
        raise ValueError(f"trained_n must be a positive integer, got {trained_n}")
    if trained_n is not None and normalised:
        raise ValueError("the model is normalised (it divides G by n itself); trained_n rescales plain models only")
    D = P.shape[-1]
    d = D - 1

    def solve(X, y) -> np.ndarray:
        X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
        single = X.ndim == 2
        if single:
            X, y = X[None], y[None]
        if X.ndim != 3 or X.shape[-1] != d or y.shape != X.shape[:2] or X.shape[1] < 1:
            raise ValueError(f"expected X (n, {d}) and y (n,) [or stacked (B, n, {d}), (B, n)], got X {X.shape}, y {y.shape}")
        if not (np.isfinite(X).all() and np.isfinite(y).all()):
            raise ValueError("X and y must be finite (no NaN or infinity)")
        Z = np.concatenate([X, y[..., None]], axis=-1)
        G = np.einsum("bni,bnj->bij", Z, Z)
        if trained_n is not None or normalised:
            G *= (trained_n or 1) / X.shape[1]
        moved = np.broadcast_to(np.eye(D), G.shape).copy()  # T^{l-1}⋯T^0
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging model gives inf/nan, not warnings
            for P_l, Q_l in zip(P, Q):
                T = np.eye(D) + np.einsum("hij,bjk,hkm->bim", P_l, G, Q_l)
                G = T @ G @ np.swapaxes(T, -1, -2)
                moved = T @ moved
        w = -moved[:, d, :d]
        return w[0] if single else w

    return solve


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class ProblemSet:
    """Held-out regression problems. With `w` known the loss of ŵ is ½‖ŵ − w‖²
    (the query-averaged loss); otherwise ½ mean over the held-out points (x_j, y_j)
    of (<ŵ, x_j> − y_j)²."""

    name: str
    x: np.ndarray  # (B, n, d)
    y: np.ndarray  # (B, n)
    w: np.ndarray | None = None  # (B, d)
    sigma: np.ndarray | None = None  # (B,) when known: the oracle is reported too
    x_test: np.ndarray | None = None  # (B, m, d) held-out points when w is unknown
    y_test: np.ndarray | None = None

    def losses(self, w_hat: np.ndarray) -> np.ndarray:
        w_hat = np.asarray(w_hat, np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            if self.w is not None:
                return 0.5 * np.sum((w_hat - self.w) ** 2, axis=-1)
            resid = np.einsum("bmd,bd->bm", self.x_test, w_hat) - self.y_test
            return 0.5 * np.mean(resid**2, axis=-1)


def synthetic_problems(name: str, noise, problems: int, n: int, d: int, seed: int) -> ProblemSet:
    """Problems drawn as in docs/math.md §1 (x, w ~ N(0, I), σ per problem from `noise`)."""
    import jax

    from .tasks import sample_tasks

    with jax.enable_x64(True):
        t = sample_tasks(jax.random.key(seed), noise, problems, n, d, np.float64)
        return ProblemSet(name, *(np.asarray(a) for a in (t.x, t.y, t.w, t.sigma)))


def require_data() -> None:
    """Raise ValueError unless the `data` extra (scikit-learn) is installed."""
    try:
        importlib.import_module("sklearn.datasets")
    except ImportError:
        raise ValueError("the diabetes comparison needs scikit-learn: pip install 'lticl[data]'") from None


def diabetes_problems(problems: int, n: int, seed: int, target_scale: float | None = None) -> ProblemSet:
    """scikit-learn's diabetes data (442 patients, d = 10), features and target
    standardised, as many small problems: each takes n random patients as its
    context and is scored on all the others.

    The target is multiplied by `target_scale` (default √d) so that Var y = d, the
    variance of y = <w, x> with w ~ N(0, I) that the models were trained on;
    losses are reported in standardised target units (divided by the scale²), so
    scale-equivariant methods (OLS, GD, ADARR) are unaffected by it."""
    require_data()
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    d = X.shape[1]
    scale = math.sqrt(d) if target_scale is None else float(target_scale)
    if not 0 < n < len(y):
        raise ValueError(f"the diabetes data has {len(y)} points; n must be in 1..{len(y) - 1}, got {n}")
    rng = np.random.default_rng(seed)
    order = np.stack([rng.permutation(len(y)) for _ in range(problems)])
    ctx, test = order[:, :n], order[:, n:]
    return _Scaled(f"diabetes (n={n})", X[ctx], scale * y[ctx], x_test=X[test], y_test=scale * y[test], scale=scale)


@dataclass(frozen=True)
class _Scaled(ProblemSet):
    scale: float = 1.0

    def losses(self, w_hat):
        return super().losses(w_hat) / self.scale**2


def baseline_solvers(noise, layers: int, n: int = PAPER_N, d: int = PAPER_D, tune_problems: int = 20_000, seed: int = 1) -> dict[str, Solver]:
    """OLS, ADARR, TUNEDRR (tuned on `noise`) and GD with `layers` steps (step size
    tuned on `noise`), all at the training size n, as NumPy-in, NumPy-out solvers."""
    import jax

    from . import baselines
    from .tasks import sample_tasks

    t = sample_tasks(jax.random.key(seed), noise, tune_problems, n, d)
    tuned = baselines.fit(["tunedrr"], t)["tunedrr"]
    step = baselines.tune_gd(t, layers)

    def wrap(fn, needs_noise_estimate=False):
        def solve(X, y):
            if needs_noise_estimate and X.shape[-2] <= X.shape[-1]:
                return np.full(X.shape[:-2] + X.shape[-1:], np.nan)
            with jax.enable_x64(True):
                return np.asarray(fn(np.asarray(X, np.float64), np.asarray(y, np.float64)))

        return solve

    return {
        "ols": wrap(baselines.ols),
        "adarr": wrap(baselines.adarr, True),
        "tunedrr": wrap(lambda X, y: baselines.tunedrr(X, y, **tuned.tuned), True),
        f"gd ({layers} steps)": wrap(lambda X, y: baselines.gd(X, y, layers, step)),
    }


def compare(solvers: dict[str, Solver], problem_sets: list[ProblemSet], adjusted: bool = False) -> list[dict]:
    """One row per problem set: mean loss, its standard error and the median for each
    solver (and the oracle's mean where σ is known); nan marks a method that does not
    apply (ADARR and TUNEDRR need n > d). `adjusted`: every loss less the oracle's on
    the same problem (Table 1's adjusted loss), for sets whose σ is known only."""
    import jax

    from . import baselines

    if adjusted and any(ps.sigma is None for ps in problem_sets):
        raise ValueError("the adjusted loss needs problems of known σ (synthetic ones); "
                         f"{next(ps.name for ps in problem_sets if ps.sigma is None)} has none")
    rows = []
    for ps in problem_sets:
        row = {"problems": ps.name, "n": int(ps.x.shape[1]), "count": int(ps.x.shape[0])}
        oracle = None
        if ps.sigma is not None:
            with jax.enable_x64(True):
                oracle = ps.losses(np.asarray(baselines.oracle(ps.x, ps.y, ps.sigma)))
        for name, solve in solvers.items():
            v = ps.losses(solve(ps.x, ps.y))
            with np.errstate(over="ignore", invalid="ignore"):
                v = v - oracle if adjusted else v
                row[name] = float(np.mean(v))
                row[f"{name} sem"] = float(np.std(v, ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
                row[f"{name} median"] = float(np.median(v))
        if oracle is not None:
            row["oracle"] = float(np.mean(oracle))
        rows.append(row)
    return rows


def grid_problem_sets(ns: list[int], sigmas: list[float] | None, noise, d: int = PAPER_D, problems: int = 2000,
                      seed: int = 2) -> list[ProblemSet]:
    """Synthetic problems at every n of `ns` and every fixed σ of `sigmas` (σ drawn
    from `noise` where `sigmas` is None), each set from its own seed."""
    from .noise import as_noise

    noises = {as_noise(noise).spec: noise} if sigmas is None else {f"σ = {s:g}": f"fixed:{s:g}" for s in sigmas}
    return [synthetic_problems(f"{name}, n={n}", z, problems, n, d, seed + 100 * i + j)
            for i, (name, z) in enumerate(noises.items()) for j, n in enumerate(ns)]


def default_problem_sets(noise, d: int = PAPER_D, problems: int = 2000, seed: int = 2, with_data: bool = True) -> list[ProblemSet]:
    """The held-out suite: the training distribution at n = 20 and at other n, fixed
    σ up to 3 beyond the training range, and the diabetes data (n = 20 and 40)."""
    from .noise import as_noise

    noise = as_noise(noise)
    top = noise.sigma_max
    sets = [synthetic_problems(f"{noise.spec}, n={n}", noise, problems, n, d, seed + i)
            for i, n in enumerate((20, 12, 40, 80))]
    for j, s in enumerate((top + 1.0, top + 3.0)):
        sets.append(synthetic_problems(f"σ = {s:g} (outside training), n=20", f"fixed:{s:g}", problems, 20, d, seed + 10 + j))
    if with_data and d == 10:
        sets += [diabetes_problems(problems, n, seed + 20 + n) for n in (20, 40)]
    return sets
