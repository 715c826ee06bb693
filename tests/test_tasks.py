import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lticl
from lticl.tasks import (_BOUND_SLACK, CHUNK, _score_bound, data_key, mixture_tasks, normal, stack_chunks, tail_score,
                         tail_tasks, task_chunks, tasks_given_sigma)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("shape", [(3,), (7, 5), (2, 3, 4), (1, 1, 9), (64, 20, 10)])
def test_a_flat_draw_is_jaxs_shaped_draw_bit_for_bit(shape, dtype):
    """tasks.normal draws flat and reshapes, for XLA's sake: the numbers are those of
    jax.random.normal with the shape, eagerly, jitted and vmapped over keys."""
    key = jax.random.key(11)
    np.testing.assert_array_equal(normal(key, shape, dtype), jax.random.normal(key, shape, dtype))
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(3))
    ours = jax.jit(jax.vmap(lambda k: normal(k, shape, dtype)))(keys)
    np.testing.assert_array_equal(ours, jax.vmap(lambda k: jax.random.normal(k, shape, dtype))(keys))
    assert ours.shape == (3, *shape) and ours.dtype == dtype


@pytest.mark.slow
@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6))
@settings(max_examples=10, deadline=None)
def test_shapes_for_any_sizes(batch, n, d):
    t = lticl.sample_tasks(jax.random.key(0), "uniform:2", batch, n, d)
    assert t.x.shape == (batch, n, d) and t.y.shape == (batch, n) and t.w.shape == (batch, d)
    assert t.sigma.shape == t.y_query.shape == (batch,) and t.x_query.shape == (batch, d)
    assert (t.batch, t.n, t.d) == (batch, n, d)
    assert all(a.dtype == jnp.float32 for a in t)


def test_generative_model():
    t = lticl.sample_tasks(jax.random.key(1), "categorical:1,3", 20_000, 8, 3, jnp.float64)
    # the query target is noise-free
    np.testing.assert_allclose(t.y_query, jnp.einsum("bd,bd->b", t.x_query, t.w), rtol=1e-12)
    # the context residuals are N(0, σ_τ²) with σ_τ shared within a sequence
    xi = np.asarray(t.y - jnp.einsum("bnd,bd->bn", t.x, t.w))
    for s in (1.0, 3.0):
        r = xi[np.asarray(t.sigma) == s]
        assert abs(r.std() / s - 1) < 0.01 and abs(r.mean()) < 0.02 * s
    assert abs(float(jnp.var(t.x)) - 1) < 0.01 and abs(float(jnp.var(t.w)) - 1) < 0.02


def test_streams_are_independent_of_the_noise():
    """w and x come from their own streams: changing p(σ) only changes the noise."""
    a = lticl.sample_tasks(jax.random.key(2), "fixed:0", 7, 4, 3)
    b = lticl.sample_tasks(jax.random.key(2), "uniform:5", 7, 4, 3)
    np.testing.assert_array_equal(a.w, b.w)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.x_query, b.x_query)
    assert not np.array_equal(a.y, b.y)


def test_chunks_are_prefix_stable():
    key = jax.random.key(3)
    small = stack_chunks(lticl.task_chunks(key, "uniform:1", 100, 4, 2))
    large = stack_chunks(lticl.task_chunks(key, "uniform:1", CHUNK + 50, 4, 2))
    assert small.batch == 100 and large.batch == CHUNK + 50
    for a, b in zip(small, large):
        np.testing.assert_array_equal(a, b[:100])


def test_data_keys_differ_by_purpose_and_setting():
    keys = [data_key(0, s, p) for s in ("uniform:1", "uniform:2") for p in ("train", "tune", "evaluation", "tail", "bank")]
    raw = {tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in keys}
    assert len(raw) == len(keys)
    # the same setting written differently is the same stream
    assert np.array_equal(jax.random.key_data(data_key(0, "uniform:2.0", "tune")),
                          jax.random.key_data(data_key(0, "uniform:2", "tune")))
    with pytest.raises(ValueError, match="unknown data purpose"):
        data_key(0, "uniform:1", "test")


def test_tail_score_is_mean_y2_times_top_eigenvalue():
    t = lticl.sample_tasks(jax.random.key(3), "uniform:5", 4000, 20, 10, jnp.float64)
    g = np.einsum("bni,bnj->bij", t.x, t.x) / 20
    exact = np.mean(np.asarray(t.y) ** 2, axis=1) * np.linalg.eigvalsh(g)[:, -1]
    score = np.asarray(tail_score(t))
    # a Rayleigh quotient: never above λ_max, and at it to 1e-6 for all but rare near-ties
    assert np.all(score <= exact * (1 + 1e-12))
    assert np.quantile(np.abs(score / exact - 1), 0.99) < 1e-6


@pytest.mark.parametrize("keep", [50, 3000])
def test_tail_tasks_are_the_top_scores_of_the_pool(keep):
    """The sequences of the pool, in the order, that scoring every one and sorting
    gives: the score bound lets no sequence of the top through unscored. Scores are
    float32 and computed in chunks of other shapes, so two sequences whose scores are
    equal to rounding may come in either order (and either may be the last kept)."""
    key, pool = data_key(0, "uniform:3", "tail"), 2 * CHUNK + 100
    everything = stack_chunks(task_chunks(key, "uniform:3", pool, 20, 10))
    scores = np.asarray(tail_score(everything))
    order = np.argsort(-scores, kind="stable")[:keep]
    top = tail_tasks(key, "uniform:3", pool, keep, 20, 10)
    row = {np.asarray(x).tobytes(): i for i, x in enumerate(np.asarray(everything.x))}
    kept = np.array([row[np.asarray(x).tobytes()] for x in np.asarray(top.x)])  # each a sequence of the pool
    assert len(set(kept)) == keep
    np.testing.assert_allclose(scores[kept], scores[order], rtol=1e-6)  # the same scores, place by place
    np.testing.assert_allclose(np.asarray(tail_score(top)), scores[order], rtol=1e-6)
    swapped = kept != order
    assert swapped.mean() < 0.01  # near-ties are rare: almost every place holds the sorted pool's sequence
    assert tail_tasks(key, "uniform:3", 30, 50, 20, 10).batch == 30  # never more than the pool


@pytest.mark.parametrize("n", [1, 3, 20])
def test_score_bound_is_never_below_the_score(n):
    """mean(y²)·‖G²‖_F^½ ≥ mean(y²)·λ_max(G), to float32 rounding, and equal where G
    has rank one (n = 1); spiked spectra included."""
    sigma = jnp.full(CHUNK, 2.0)
    t, _ = mixture_tasks(jax.random.key(8), sigma, n, 10, spike=(0.5, 3.0))
    bound, score = np.asarray(_score_bound(t)), np.asarray(tail_score(t))
    assert np.all(bound >= score * (1 - _BOUND_SLACK / 10))
    if n == 1:
        np.testing.assert_allclose(bound, score, rtol=1e-5)


@pytest.mark.slow
def test_mixture_weights_give_unbiased_means_and_see_the_tail_more_often():
    key, batch, d = jax.random.key(4), 400_000, 10
    sigma = jnp.ones(batch, jnp.float64)
    t, weight = mixture_tasks(key, sigma, 2, d, wide=(0.3, 1.7))
    w2, weight = np.sum(np.asarray(t.w) ** 2, axis=1), np.asarray(weight)
    assert np.all(weight > 0) and np.max(weight) <= 1 / 0.7
    # Under p, E[1] = 1, E[‖w‖²] = d and P(‖w‖² > 30) = χ²₁₀'s survival e^−15·Σ_{j<5} 15^j/j!;
    # each weighted mean within 4 of its standard errors.
    tail = math.exp(-15) * sum(15**j / math.factorial(j) for j in range(5))
    for f, expected in ((np.ones(batch), 1.0), (w2, d), (w2 > 30, tail)):
        terms = weight * f
        assert abs(np.mean(terms) - expected) < 4 * np.std(terms) / np.sqrt(batch), (np.mean(terms), expected)
    assert np.mean(w2 > 30) > 30 * tail  # yet such sequences are drawn far more often
    # the wide share is the leading 30% of the batch; the rest, and fraction 0, are plain draws
    plain = tasks_given_sigma(key, sigma, 2, d)
    for same, ones in (mixture_tasks(key, sigma, 2, d, wide=(0.0, 1.7)), mixture_tasks(key, sigma, 2, d)):
        for a, b in zip(plain, same):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(ones, 1.0)
    np.testing.assert_allclose(t.w[120_000:], plain.w[120_000:], rtol=1e-15)
    np.testing.assert_allclose(t.w[:120_000], 1.7 * plain.w[:120_000], rtol=1e-15)


@pytest.mark.slow
def test_spiked_spectra_are_weighted_to_the_plain_expectation():
    """A share of sequences drawn with a spike of scale 2 in XᵀX, weighted by p/q
    over the mixture of the basis's directions, gives E tr((XᵀX/n)²) = d(n + d + 1)/n
    (Wishart) within 4 standard errors; weights stay at most 1/(1 − β), and the
    spiked sequences reach far larger λ_max than the plain ones."""
    key, batch, n, d = jax.random.key(5), 20_000, 20, 10
    sigma = jnp.full(batch, 0.5, jnp.float64)
    t, weight = mixture_tasks(key, sigma, n, d, spike=(0.3, 2.0))
    s = np.einsum("bni,bnj->bij", t.x, t.x) / n
    terms = np.asarray(weight) * np.einsum("bij,bji->b", s, s)
    assert abs(terms.mean() - d * (n + d + 1) / n) < 4 * terms.std() / np.sqrt(batch)
    assert np.asarray(weight).max() <= 1 / 0.7 + 1e-12
    top = np.linalg.eigvalsh(s)[:, -1]
    assert np.median(top[-6_000:]) > np.quantile(top[:14_000], 0.999)
    # the plain share is the plain draw; with fraction 0, or none, every sequence is, weighted 1
    plain = tasks_given_sigma(key, sigma, n, d)
    np.testing.assert_array_equal(t.x[:14_000], plain.x[:14_000])
    for same, ones in (mixture_tasks(key, sigma, n, d, spike=(0.0, 2.0)), mixture_tasks(key, sigma, n, d)):
        for a, b in zip(plain, same):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ones, 1.0)


@pytest.mark.parametrize("kwargs,match", [(dict(n=0), "n must be >= 1"), (dict(d=-1), "d must be >= 1"),
                                          (dict(batch=0), "batch must be >= 1"), (dict(noise="uniform:-2"), ">= 0")])
def test_sampler_rejects_bad_input(kwargs, match):
    args = dict(key=jax.random.key(0), noise="uniform:1", batch=2, n=3, d=2) | kwargs
    with pytest.raises(ValueError, match=match):
        lticl.sample_tasks(**args)


def test_kept_chunks_are_the_drawn_chunks_drawn_once_within_their_byte_budget(monkeypatch):
    """Validation and evaluation sets are drawn once per process (`tasks.kept_chunks`):
    the same chunks as a fresh draw, none drawn again while they fit in KEPT_BYTES, the
    least recently used dropped first when they do not."""
    import collections

    import lticl.tasks as tasks

    draws = []
    draw = tasks.task_chunks
    monkeypatch.setattr(tasks, "task_chunks", lambda key, *a, **k: (draws.append(key), draw(key, *a, **k))[1])
    monkeypatch.setattr(tasks, "_kept", collections.OrderedDict())
    keys = [data_key(0, "uniform:2", p) for p in ("validation", "evaluation", "tail")]
    got = tasks.kept_chunks(keys[0], "uniform:2", CHUNK + 5, 8, 3)
    fresh = list(draw(keys[0], "uniform:2", CHUNK + 5, 8, 3, whole=True))
    assert len(got) == len(fresh) == 2
    for a, b in zip(got, fresh):
        jax.tree.map(np.testing.assert_array_equal, a, b)
    assert tasks.kept_chunks(keys[0], "uniform:2", CHUNK + 5, 8, 3) is got and len(draws) == 1
    tasks.kept_chunks(keys[0], "uniform:3", CHUNK + 5, 8, 3)  # another setting, other sequences
    tasks.kept_chunks(keys[0], "uniform:2", CHUNK, 8, 3)  # another size
    assert len(draws) == 3
    size = sum(a.nbytes for a in jax.tree.leaves(got))
    monkeypatch.setattr(tasks, "KEPT_BYTES", 2 * size)  # room for two of these sets
    tasks._kept.clear()
    for key in (keys[0], keys[1], keys[0], keys[2]):  # the third drops the least recently used: the second
        tasks.kept_chunks(key, "uniform:2", CHUNK + 5, 8, 3)
    assert len(draws) == 6
    tasks.kept_chunks(keys[0], "uniform:2", CHUNK + 5, 8, 3)
    assert len(draws) == 6
    tasks.kept_chunks(keys[1], "uniform:2", CHUNK + 5, 8, 3)
    assert len(draws) == 7
