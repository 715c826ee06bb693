"""Run directories: checkpoints, resume after SIGKILL, refusal to mix configurations."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lticl.metrics import Evaluation
from lticl.rundir import CHECKPOINT, METRICS, config_hash, load_checkpoint, run_name, save_checkpoint
from lticl.runs import combine_runs, run, run_groups
from lticl.config import TrainConfig
from lticl.engine import init_state, run_steps
from lticl.selection import select_best, tail_limit

TINY = dict(d=3, n=8, batch=64, steps=40, chunk=10, seeds=2, validation_sequences=500, evaluation_sequences=500,
            tail_sequences=2000)


@pytest.mark.slow
def test_checkpoint_round_trip_is_exact(tmp_path):
    config = TrainConfig("diag", 2, "uniform:2", **TINY)
    state, losses = run_steps(config, init_state(config), 7)
    save_checkpoint(tmp_path / "c.npz", config, state, np.asarray(losses))
    back, back_losses = load_checkpoint(tmp_path / "c.npz", config)
    np.testing.assert_array_equal(back_losses, losses)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="another configuration"):
        load_checkpoint(tmp_path / "c.npz", TrainConfig("diag", 2, "uniform:3", **TINY))


def test_names_and_hashes_follow_the_config():
    a, b = TrainConfig("full", 3, "uniform:5"), TrainConfig("full", 3, "uniform:5", lr=1e-3)
    assert config_hash(a) == config_hash(TrainConfig("full", 3, "uniform:5")) != config_hash(b)
    assert run_name(a).startswith("full-L3-H1-uniform5-") and run_name(a) != run_name(b)
    # importance sampling is in the hash only when on: off, its scale changes nothing
    wide = replace(a, wide_fraction=0.5)
    assert config_hash(wide) != config_hash(a) == config_hash(replace(a, wide_scale=3.0))
    assert config_hash(replace(wide, wide_scale=3.0)) != config_hash(wide)
    spike = replace(a, spike_fraction=0.1)
    assert config_hash(spike) != config_hash(a) == config_hash(replace(a, spike_scale=3.0))
    # a screen is in the hash when set (test_lengths pins the hash without it); it is part of the tail pool
    assert config_hash(replace(a, screen_sequences=200_000)) != config_hash(a)
    assert replace(a, screen_sequences=200_000).program == a.program  # data only: the same compiled step
    assert config_hash(replace(a, grow_below=True)) != config_hash(a)  # how a continuation's start grows
    for bad, match in ((-1, "screen_sequences"), (a.tail_sequences + 1, "at most tail_sequences")):
        with pytest.raises(ValueError, match=match):
            replace(a, screen_sequences=bad)


@pytest.mark.slow
def test_run_refuses_to_mix_or_overwrite(tmp_path):
    config = TrainConfig("gdpp", 1, "uniform:1", **TINY)
    first = run(config, tmp_path, resume=False)
    assert run(config, tmp_path, resume=True) == first  # finished: read back, not retrained
    with pytest.raises(ValueError, match="finished run"):
        run(config, tmp_path, resume=False)
    with pytest.raises(ValueError, match="another configuration"):
        run(TrainConfig("gdpp", 1, "uniform:2", **TINY), tmp_path)


def _cli(*args):
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    return [sys.executable, "-m", "lticl.cli", *args], env


@pytest.mark.slow
def test_sigkilled_run_resumes_to_identical_parameters(tmp_path):
    args = ["train", "--variant", "full", "--layers", "2", "--noise", "uniform:2", "--budget", "smoke", "--d", "3",
            "--n", "8", "--batch", "256", "--steps", "1500", "--seeds", "2", "--sequences", "2000"]
    cmd, env = _cli(*args, "--out", str(tmp_path / "whole"))
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)

    cmd, env = _cli(*args, "--out", str(tmp_path / "killed"))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / CHECKPOINT
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists() and not (tmp_path / "killed" / METRICS).exists(), "the run ended before the kill"

    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    subprocess.run(cmd + ["--resume"], env=env, check=True, capture_output=True, timeout=600)
    whole, resumed = (np.load(tmp_path / d / "model.npz") for d in ("whole", "killed"))
    np.testing.assert_array_equal(whole["P"], resumed["P"])
    np.testing.assert_array_equal(whole["Q"], resumed["Q"])
    m_whole, m_resumed = (json.loads((tmp_path / d / METRICS).read_text()) for d in ("whole", "killed"))
    assert m_whole["adjusted_loss"] == m_resumed["adjusted_loss"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # Ray starts its processes from this one
def test_ray_executor_trains_the_groups_as_local_does(tmp_path):
    """Two groups as Ray tasks on a local Ray instance: the same runs, the same
    numbers as training them here (to float32 rounding: a Ray worker has one CPU
    device, this process two; the workers get this process's float64 switch), and
    a restarted sweep reads them back."""
    ray = pytest.importorskip("ray")

    def groups(root):
        configs = [[TrainConfig("diag", 2, s, **TINY) for s in ("uniform:1", "uniform:3")],
                   [TrainConfig("gdpp", 3, "uniform:2", **TINY)]]
        return [[(c, root / run_name(c)) for c in g] for g in configs]

    local = run_groups(groups(tmp_path / "local"), executor="local")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"JAX_ENABLE_X64": str(jax.config.jax_enable_x64)}})
    try:
        seen = []
        remote = run_groups(groups(tmp_path / "ray"), executor="ray", progress=lambda *a: seen.append(a))
    finally:
        ray.shutdown()
    assert sorted(seen) == [(0, 40, 40), (1, 40, 40)]
    for a, b in zip(sum(local, []), sum(remote, [])):
        np.testing.assert_allclose(b["adjusted_loss"], a["adjusted_loss"], rtol=1e-5)
        assert a["seed"] == b["seed"] and a["recoveries"] == b["recoveries"]
    for group in groups(tmp_path / "ray"):
        assert all((d / METRICS).exists() for _, d in group)
    # finished runs are read back, not trained again (no Ray needed)
    assert run_groups(groups(tmp_path / "ray"), executor="local") == remote
    with pytest.raises(ValueError, match="unknown executor"):
        run_groups([], executor="dask")


_seed = st.tuples(st.sampled_from([0.1, 0.2, 0.3, float("nan")]), st.sampled_from([1.0, 1e7]),
                  st.sampled_from([1.0, 1e3, 1e7, float("nan")]), st.booleans())  # validation mean, worst; tail worst; failed


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_seed, min_size=1, max_size=3), min_size=1, max_size=3))
def test_combined_runs_choose_the_seed_one_run_of_all_of_them_would(runs):
    """Runs of consecutive seeds, each having chosen its own best (as train_group
    does), combine to the seed select_best picks among all of them at once, with the
    per-seed lists joined (a run written before the polish was recorded: unpolished)."""
    d, pool = 10, 1e6
    ev = lambda mean, worst: Evaluation(mean, 0.01, worst, int(mean != mean), 0.0, 100).to_dict()
    metrics = []
    for seeds in runs:
        validation = [ev(mean, worst) for mean, worst, _, _ in seeds]
        tail = [ev(0.1, tail) for _, _, tail, _ in seeds]
        args = ([Evaluation(**v) for v in validation], [f for *_, f in seeds], [Evaluation(**t) for t in tail],
                tail_limit(d), pool)
        try:
            seed, usable = select_best(*args), True
        except RuntimeError:
            seed, usable = 0, False
        metrics.append(dict(seed=seed, usable=usable, validation=validation, tail=tail,
                            recoveries=[20 * f for *_, f in seeds], skipped_steps=[0] * len(seeds)))
        if len(metrics) % 2:  # the first, third run record their seeds as polished; the second has no record
            metrics[-1]["polished"] = [True] * len(seeds)
    combined = combine_runs(metrics, d, pool)
    every = [s for seeds in runs for s in seeds]
    assert len(combined["validation"]) == len(combined["tail"]) == len(combined["recoveries"]) == len(every)
    assert combined["polished"] == [i % 2 == 0 for i, seeds in enumerate(runs) for _ in seeds]
    try:
        expected = select_best([Evaluation(**v) for v in combined["validation"]], [f for *_, f in every],
                               [Evaluation(**t) for t in combined["tail"]], tail_limit(d), pool)
    except RuntimeError:
        assert not combined["usable"]
        return
    assert combined["usable"] and combined["seed"] == expected
