import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lticl
from lticl.noise import Categorical, Custom, Fixed, Uniform, parse_noise

sigma = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
distributions = st.one_of(
    sigma.map(Fixed),
    sigma.map(Uniform),
    st.lists(sigma, min_size=1, max_size=6, unique=True).map(lambda v: Categorical(tuple(v))),
)


@given(distributions)
def test_spec_round_trips(dist):
    assert parse_noise(dist.spec) == dist
    assert parse_noise(f"  {dist.spec.upper().replace(':', ' : ')}  ") == dist


@given(st.text(max_size=30))
@settings(max_examples=300)
def test_parser_never_fails_with_anything_but_value_error(text):
    try:
        dist = parse_noise(text)
    except ValueError as e:
        assert str(e)  # a message, not a bare error
    else:
        assert parse_noise(dist.spec) == dist


@pytest.mark.parametrize(
    "spec,match",
    [
        ("uniform", "lacks ':'"),
        ("gaussian:1", "unknown noise kind"),
        ("uniform:-1", "must be >= 0"),
        ("fixed:-0.5", "must be >= 0"),
        ("uniform:abc", "not a number"),
        ("uniform:1,2", "exactly one number"),
        ("fixed:", "exactly one number"),
        ("categorical:", "empty set"),
        ("categorical:1,,3", "empty value"),
        ("categorical:1,1", "distinct"),
        ("uniform:nan", "finite"),
        ("fixed:inf", "finite"),
    ],
)
def test_malformed_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_noise(spec)


def test_constructors_validate():
    with pytest.raises(ValueError, match="sigma_max must be >= 0"):
        Uniform(-1)
    with pytest.raises(ValueError, match="empty set"):
        Categorical(())
    with pytest.raises(ValueError, match="callable"):
        Custom(3, "x", 1.0)
    with pytest.raises(ValueError, match="expected a noise distribution"):
        lticl.as_noise([1, 2])


def test_categorical_is_a_sorted_set():
    assert Categorical((5, 1, 3)).spec == "categorical:1,3,5"
    assert Categorical((1, 3)).second_moment == 5.0


@pytest.mark.parametrize("dist", [Fixed(0.7), Uniform(5), Categorical((1, 3, 5))])
def test_samples_follow_the_distribution(dist):
    s = np.asarray(dist.sample(jax.random.key(0), 200_000, jnp.float64))
    assert s.shape == (200_000,) and s.min() >= 0 and s.max() <= dist.sigma_max
    # E[σ²] within 5 standard errors
    assert abs((s**2).mean() - dist.second_moment) <= 5 * (s**2).std() / np.sqrt(s.size) + 1e-12
    if isinstance(dist, Categorical):
        assert set(np.unique(s)) == set(dist.values)


def test_custom_distribution():
    half_normal = Custom(lambda k, b, dt: jnp.abs(jax.random.normal(k, (b,), dt)), "halfnormal", 4.0)
    assert half_normal.spec == "custom:halfnormal"
    t = lticl.sample_tasks(jax.random.key(0), half_normal, 50_000, 3, 2, jnp.float64)
    assert abs(float(jnp.mean(t.sigma**2)) - 1.0) < 0.03
