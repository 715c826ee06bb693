"""Devices: what JAX computes on, and how many models one compiled call may hold."""

import importlib.util

import jax

from lticl import devices
from lticl.devices import MEMORY_SHARE, model_bytes, plan_calls
from lticl.experiments import DEPTHS, SETTINGS, VARIANTS, budget_config

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
