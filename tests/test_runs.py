"""Run directories: checkpoints, resume after SIGKILL, refusal to mix configurations."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lticl.runs import CHECKPOINT, METRICS, config_hash, load_checkpoint, run, run_name, save_checkpoint
from lticl.train import TrainConfig, budget_config, init_state, run_steps

TINY = dict(d=3, n=8, batch=64, steps=40, chunk=10, seeds=2, validation_sequences=500, evaluation_sequences=500)


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


def test_run_refuses_to_mix_or_overwrite(tmp_path):
    config = TrainConfig("gdpp", 1, "uniform:1", **TINY)
    first = run(config, tmp_path, resume=False)
    assert run(config, tmp_path, resume=True) == first  # finished: read back, not retrained
    with pytest.raises(ValueError, match="finished run"):
        run(config, tmp_path, resume=False)
    with pytest.raises(ValueError, match="another configuration"):
        run(TrainConfig("gdpp", 1, "uniform:2", **TINY), tmp_path)


def test_budgets():
    smoke = budget_config("smoke", "full", 2)
    assert smoke.steps < budget_config("laptop", "full", 2).steps < budget_config("paper", "full", 2).steps
    assert budget_config("smoke", "full", 2, steps=7, lr=None).steps == 7
    with pytest.raises(ValueError, match="unknown budget"):
        budget_config("huge", "full", 2)


def _cli(*args):
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    return [sys.executable, "-m", "lticl.cli", *args], env


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
