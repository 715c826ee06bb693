"""Closed-form facts about linear transformers (SPEC §5, §8)."""

from __future__ import annotations

import math

from .tasks import positive_int


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
