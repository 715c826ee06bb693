"""Devices: what JAX computes on, and how many models one compiled call may hold."""

import importlib.util

import jax
import jax.numpy as jnp

import lticl
from lticl import baselines, devices
from lticl.config import TrainConfig
from lticl.devices import MEMORY_SHARE, model_bytes, plan_calls
from lticl.engine import init_state, run_steps
from lticl.experiments import DEPTHS, SETTINGS, VARIANTS, budget_config
from lticl.tasks import sample_tasks, tail_score

GiB = 2**30


def test_calls_hold_what_the_memory_holds_and_every_config_once():
    configs = [budget_config("gpu", "full", 7, s) for s in SETTINGS]
    one = configs[0].seeds * model_bytes(configs[0])
    assert plan_calls(configs, None) == [list(range(10))]  # no memory reported: one call
    for fits in (1, 3, 4, 10):
        calls = plan_calls(configs, int(fits * one / MEMORY_SHARE) + 1)
        assert sorted(i for c in calls for i in c) == list(range(10))  # each config once, in order
        assert [i for c in calls for i in c] == list(range(10))
        assert all(len(c) <= fits for c in calls) and len(calls) == -(-10 // fits)
    # a config larger than the room alone still gets a call of its own
    assert plan_calls(configs[:3], one // 2) == [[0], [1], [2]]


def test_the_gpu_budget_groups_are_sized_from_the_device_memory_it_is_told():
    """On a device of 141 GiB (an H200) every program of Table 1 (a variant and a
    depth, ten settings, two seeds each) is one call; on 2 GiB the deep ones split."""
    for memory, whole in ((141 * GiB, True), (2 * GiB, False)):
        calls = {(v, L): plan_calls([budget_config("gpu", v, L, s) for s in SETTINGS], memory)
                 for v in VARIANTS for L in DEPTHS}
        assert all(len(c) == 1 for c in calls.values()) == whole
        for (v, L), c in calls.items():
            need = sum(budget_config("gpu", v, L, SETTINGS[i]).seeds * model_bytes(budget_config("gpu", v, L, SETTINGS[i]))
                       for i in c[0])
            assert len(c[0]) == 1 or need <= MEMORY_SHARE * memory


def test_model_bytes_grow_with_batch_and_depth():
    small = budget_config("gpu", "diag", 2)
    assert model_bytes(budget_config("gpu", "diag", 7)) > model_bytes(small)
    assert model_bytes(budget_config("gpu", "diag", 2, batch=4096)) == 2 * model_bytes(small)


def test_the_backend_is_named_and_a_cpu_fallback_is_never_silent(monkeypatch):
    assert devices.describe().startswith(f"{jax.default_backend()}: {jax.local_device_count()} × ")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if "cuda" in name else real(name, *a))
    warning = devices.cpu_fallback_warning()
    assert (warning is not None) == (jax.default_backend() == "cpu")


def _dot_precisions(jaxpr):
    """The precision of every dot_general in a jaxpr and in the jaxprs inside it."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn.params["precision"]
        for value in eqn.params.values():
            for inner in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns"):
                    yield from _dot_precisions(inner)


def test_every_product_asks_for_the_precision_of_its_inputs():
    """JAX's default lets a GPU compute float32 products in TF32 (BENCHMARKS.md, "One
    GPU"): every product of a training step (both gradient paths, spiked batches),
    of each form of the model, of the data, the tail score, the baselines and the
    implicit regressor asks for the highest precision."""
    highest = (jax.lax.Precision.HIGHEST,) * 2
    t = sample_tasks(jax.random.key(0), "uniform:1", 8, 20, 10, jnp.float32)
    config = TrainConfig("full", 3, "uniform:1", batch=8, steps=4, spike_fraction=0.1)
    state = init_state(config)
    traced = {"fast step": lambda: run_steps(config, state, 2), "reference step": lambda: run_steps(config, state, 2, True),
              "data": lambda: sample_tasks(jax.random.key(0), "uniform:1", 8, 20, 10, jnp.float32),
              "tail score": lambda: tail_score(t), "ridge": lambda: baselines.ridge(t.x, t.y, 0.5),
              "implicit": lambda: lticl.implicit_state(lticl.gd_init(jax.random.key(1), "diag", 3, 10), t.x, t.y)}
    for variant, forms in (("full", ("tokens", "gram")), ("diag", lticl.FORMS)):
        params = lticl.gd_init(jax.random.key(1), variant, 3, 10)
        for form in forms:
            traced[f"{variant} {form}"] = lambda p=params, f=form: lticl.predict(p, t.x, t.y, t.x_query, f)
    for name, fn in traced.items():
        precisions = list(_dot_precisions(jax.make_jaxpr(fn)().jaxpr))
        assert precisions and all(p == highest for p in precisions), (name, precisions)
