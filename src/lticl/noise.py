"""Noise distributions p(σ) over the per-sequence noise level σ_τ (docs/math.md §1).

σ_τ is a standard deviation, fixed inside a sequence and drawn once per sequence.
Every distribution is a frozen (hashable) dataclass, so it can be a static
argument of a jitted function, and has a compact spec string for the CLI:

    fixed:0.5    uniform:5    categorical:1,3,5

A distribution answers everything the library asks of it (its range, E[σ²], the
intervals training draws from, the ridge shrinkage it implies), so no caller
looks at its type. A user's own distribution is any object with the
`NoiseDistribution` members; `Custom` wraps a plain sampling function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from jax import Array


@runtime_checkable
class NoiseDistribution(Protocol):
    """What the rest of lticl needs from a noise distribution."""

    @property
    def spec(self) -> str: ...

    @property
    def sigma_max(self) -> float:
        """Largest σ the distribution draws (sets the per-variance plot range)."""
        ...

    @property
    def second_moment(self) -> float | None:
        """E[σ²] (sets the best single GD step and the ridge penalty of the GD++ bound);
        None where unknown."""
        ...

    def intervals(self) -> tuple[tuple[float, float], ...]:
        """p(σ) as equally likely intervals [lo, hi], σ uniform inside one (a point is
        lo = hi): how training draws σ as data, without compiling per distribution."""
        ...

    def shrinkage(self, mu: Array) -> Array:
        """E_σ[σ²/(μ + σ²)] for eigenvalues μ of XᵀX (0 where μ = σ = 0)."""
        ...

    def sample(self, key: Array, batch: int, dtype=jnp.float32) -> Array:
        """σ_τ for `batch` sequences, shape (batch,)."""
        ...


NoiseLike = NoiseDistribution | str | float  # what `as_noise` accepts


def _check_sigma(value: float, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{what} must be finite, got {v}")
    if v < 0:
        raise ValueError(f"{what} must be >= 0 (it is a standard deviation), got {v}")
    return v


def _fmt(v: float) -> str:
    """Shortest text that parses back to exactly `v` (5.0 -> '5')."""
    s = repr(float(v))
    return s[:-2] if s.endswith(".0") else s


class _Spec:
    """`spec` = 'KIND:v1,v2,…' of the numbers that define the distribution."""

    KIND = ""

    @property
    def spec(self) -> str:
        return f"{self.KIND}:" + ",".join(_fmt(v) for v in self.spec_values())


class _OneNumber(_Spec):
    """A distribution set by one σ-valued number, its first field."""

    def __post_init__(self):
        name = fields(self)[0].name
        object.__setattr__(self, name, _check_sigma(getattr(self, name), f"{self.KIND} {name}"))

    def spec_values(self) -> tuple[float, ...]:
        return (getattr(self, fields(self)[0].name),)


@dataclass(frozen=True)
class Fixed(_OneNumber):
    """σ_τ = sigma for every sequence."""

    KIND = "fixed"
    sigma: float

    @property
    def sigma_max(self) -> float:
        return self.sigma

    @property
    def second_moment(self) -> float:
        return self.sigma**2

    def intervals(self) -> tuple[tuple[float, float], ...]:
        return ((self.sigma, self.sigma),)

    def shrinkage(self, mu: Array) -> Array:
        s2 = self.sigma**2
        return s2 / (mu + s2) if s2 > 0 else jnp.zeros_like(mu)

    def sample(self, key: Array, batch: int, dtype=jnp.float32) -> Array:
        del key
        return jnp.full((batch,), self.sigma, dtype)


@dataclass(frozen=True)
class Uniform(_OneNumber):
    """σ_τ ~ U(0, sigma_max)."""

    KIND = "uniform"
    sigma_max: float

    def intervals(self) -> tuple[tuple[float, float], ...]:
        return ((0.0, self.sigma_max),)

    @property
    def second_moment(self) -> float:
        return self.sigma_max**2 / 3

    def shrinkage(self, mu: Array) -> Array:
        a = self.sigma_max
        if a == 0:
            return jnp.zeros_like(mu)
        # (1/a) ∫_0^a σ²/(μ + σ²) dσ = 1 − (√μ/a) arctan(a/√μ), → 1 as μ → 0
        r = jnp.sqrt(jnp.maximum(mu, 0.0))
        return jnp.where(r > 0, 1 - r / a * jnp.arctan(a / jnp.where(r > 0, r, 1.0)), 1.0)

    def sample(self, key: Array, batch: int, dtype=jnp.float32) -> Array:
        return jax.random.uniform(key, (batch,), dtype, 0.0, self.sigma_max)


@dataclass(frozen=True)
class Categorical(_Spec):
    """σ_τ uniform over a finite set of values (stored sorted, without repeats)."""

    KIND = "categorical"
    values: tuple[float, ...]

    def __post_init__(self):
        try:
            raw = tuple(self.values)
        except TypeError:
            raise ValueError(f"categorical values must be a sequence, got {self.values!r}") from None
        if not raw:
            raise ValueError("categorical noise needs at least one value, got an empty set")
        vals = tuple(_check_sigma(v, "categorical value") for v in raw)
        if len(set(vals)) != len(vals):
            raise ValueError(f"categorical values must be distinct (it is a set), got {vals}")
        object.__setattr__(self, "values", tuple(sorted(vals)))

    def spec_values(self) -> tuple[float, ...]:
        return self.values

    @property
    def sigma_max(self) -> float:
        return max(self.values)

    @property
    def second_moment(self) -> float:
        return sum(v * v for v in self.values) / len(self.values)

    def intervals(self) -> tuple[tuple[float, float], ...]:
        return tuple((v, v) for v in self.values)

    def shrinkage(self, mu: Array) -> Array:
        return sum(Fixed(v).shrinkage(mu) for v in self.values) / len(self.values)

    def sample(self, key: Array, batch: int, dtype=jnp.float32) -> Array:
        table = jnp.asarray(self.values, dtype)
        return table[jax.random.randint(key, (batch,), 0, len(self.values))]


@dataclass(frozen=True)
class Custom:
    """A user's distribution from a sampling function.

    `sampler(key, batch, dtype)` must return `batch` non-negative values; it runs
    inside jit, so it cannot be checked there — `sample` trusts it. Evaluation and
    profiles need only the sampler and `sigma_max`; what a sampler cannot say
    (training intervals, the closed-form shrinkage) raises a ValueError that names
    the distribution.
    """

    sampler: Callable[[Array, int, object], Array]
    name: str
    sigma_max: float
    second_moment: float | None = None  # E[σ²], where known

    def __post_init__(self):
        if not callable(self.sampler):
            raise ValueError("Custom noise needs a callable sampler(key, batch, dtype)")
        if not self.name or any(c in self.name for c in ": ,"):
            raise ValueError(f"Custom noise name must be non-empty without ':', ',' or spaces, got {self.name!r}")
        object.__setattr__(self, "sigma_max", _check_sigma(self.sigma_max, "sigma_max"))
        if self.second_moment is not None:
            object.__setattr__(self, "second_moment", _check_sigma(self.second_moment, "second_moment"))

    @property
    def spec(self) -> str:
        return f"custom:{self.name}"

    def intervals(self) -> tuple[tuple[float, float], ...]:
        raise ValueError(f"training draws σ from fixed, uniform or categorical noise, not {self.spec!r}")

    def shrinkage(self, mu: Array) -> Array:
        raise ValueError(f"the GD++ bound needs the noise in closed form (fixed, uniform, categorical), "
                         f"not {self.spec!r}")

    def sample(self, key: Array, batch: int, dtype=jnp.float32) -> Array:
        return jnp.asarray(self.sampler(key, batch, dtype), dtype).reshape(batch)


_KINDS = {
    "fixed": lambda args: Fixed(_one_number(args, "fixed")),
    "uniform": lambda args: Uniform(_one_number(args, "uniform")),
    "categorical": lambda args: Categorical(tuple(_number(a, "categorical") for a in args)),
}


def _number(text: str, kind: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"noise spec '{kind}:…' has a value that is not a number: {text!r}") from None


def _one_number(args: list[str], kind: str) -> float:
    if len(args) != 1:
        raise ValueError(f"noise spec '{kind}:' takes exactly one number, got {len(args)}")
    return _number(args[0], kind)


def parse_noise(spec: str) -> NoiseDistribution:
    """Parse 'fixed:S', 'uniform:SMAX' or 'categorical:S1,S2,…' (spaces allowed)."""
    if not isinstance(spec, str):
        raise ValueError(f"noise spec must be a string, got {type(spec).__name__}")
    kind, sep, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    if not sep:
        raise ValueError(f"noise spec {spec!r} lacks ':'; expected e.g. fixed:0.5, uniform:5, categorical:1,3,5")
    if kind not in _KINDS:
        raise ValueError(f"unknown noise kind {kind!r} in {spec!r}; expected one of {', '.join(_KINDS)}")
    args = [a.strip() for a in rest.split(",")]
    if args == [""]:
        args = []
    if "" in args:
        raise ValueError(f"noise spec {spec!r} has an empty value")
    if not args and kind == "categorical":
        raise ValueError("categorical noise needs at least one value, got an empty set")
    return _KINDS[kind](args)


def as_noise(noise: NoiseDistribution | str | float) -> NoiseDistribution:
    """Accept a distribution, a spec string, or a number (meaning fixed σ)."""
    if isinstance(noise, str):
        return parse_noise(noise)
    if isinstance(noise, (int, float)) and not isinstance(noise, bool):
        return Fixed(noise)
    if isinstance(noise, NoiseDistribution):
        return noise
    raise ValueError(f"expected a noise distribution, spec string or number, got {noise!r}")
