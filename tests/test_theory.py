import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lticl
from lticl import baselines as bl
from lticl.theory import best_one_step_size
from lticl.tasks import stack_chunks


def test_best_one_layer_loss_is_the_papers_number():
    # SPEC §5: ½(d − nd/(n+d+1)) at σ = 0, d = 10, n = 20, which the paper rounds to 1.774.
    assert round(lticl.best_one_layer_loss(20, 10), 3) == 1.774


@pytest.mark.parametrize("noise", ["fixed:0", "uniform:3"])
def test_best_one_layer_loss_by_monte_carlo(noise):
    """A 1-layer DIAG model with ω_yx = −η* and the tuned 1-step GD both reach the
    analytic loss within their standard error; η* is where the tuned step lands."""
    s2 = lticl.as_noise(noise).second_moment
    eta = best_one_step_size(20, 10, s2)
    params = lticl.Params("diag", 10, jnp.array([[[0.0, 1.0]]]), jnp.array([[[-eta, 0.0]]]))
    t = stack_chunks(lticl.task_chunks(jax.random.key(0), noise, 200_000, 20, 10, jnp.float64))
    per_seq = np.asarray(lticl.sequence_loss(lticl.weights(params, t.x, t.y), t.w))
    sem = per_seq.std() / np.sqrt(per_seq.size)
    assert abs(per_seq.mean() - lticl.best_one_layer_loss(20, 10, s2)) < 3 * sem
    tuned = bl.tune_gd(stack_chunks(lticl.task_chunks(jax.random.key(1), noise, 50_000, 20, 10)), 1)
    assert abs(tuned / eta - 1) < 0.05


def test_bad_arguments():
    with pytest.raises(ValueError, match="sigma2_mean"):
        lticl.best_one_layer_loss(20, 10, -1)
    with pytest.raises(ValueError, match="n must be >= 1"):
        lticl.best_one_layer_loss(0, 10)
