"""`lticl sweep`: grid files, the sweep's table, figures and learning curves, resume
after SIGKILL; and learning curves as the engine trained them."""

import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli
from lticl.config import TrainConfig
from lticl.curves import curve, read_curve, write_curve
from lticl.engine import init_state, run_steps, schedule
from lticl.experiments import budget_config, budget_fields, matching
from lticl.sweep import parse_grid

GRID = {"budget": "smoke", "seed": 3, "base": {"d": 3, "n": 8, "steps": 20, "batch": 64, "chunk": 10},
        "grid": {"variant": ["full", "diag"], "layers": [1, 2], "noise": ["uniform:1", "uniform:3"]}}


def test_a_grid_is_the_product_of_its_axes_over_the_budget():
    g = parse_grid(GRID)
    configs = g.configs()
    assert len(configs) == 8
    assert list(configs)[:3] == [("full", 1, "uniform:1"), ("full", 1, "uniform:3"), ("full", 2, "uniform:1")]
    c = configs[("diag", 2, "uniform:3")]
    assert (c.variant, c.layers, c.noise, c.seed, c.d, c.steps) == ("diag", 2, "uniform:3", 3, 3, 20)
    assert c.validation_sequences == budget_fields("smoke", "diag", 2)["validation_sequences"]  # the budget's


def test_an_override_that_names_settings_applies_on_those_settings_only():
    entries = ((("gdpp",), range(4, 7), dict(spike_fraction=0.1), ("uniform:0",)),
               (("gdpp",), range(1, 8), dict(steps=7)))
    assert matching(entries, "gdpp", 4, noise="uniform:0.0") == dict(spike_fraction=0.1, steps=7)  # canonical
    assert matching(entries, "gdpp", 4, noise="uniform:1") == dict(steps=7)
    assert matching(entries, "gdpp", 4) == dict(steps=7)  # no setting: only the entries naming none
    assert matching(entries, "gdpp", 7, noise="uniform:0") == dict(steps=7)
    # The laptop budget spikes DIAG-5 at low noise only; a grid's run of the same cell gets what a
    # reproduction's gets, its noise passed by keyword.
    laptop = {s: budget_config("laptop", "diag", 5, s) for s in ("uniform:0", "uniform:4")}
    assert laptop["uniform:0"].spike_fraction > 0 and laptop["uniform:4"].spike_fraction == 0
    grid = parse_grid({"budget": "laptop", "grid": {"variant": ["diag"], "layers": [5], "noise": list(laptop)}})
    assert {k[2]: c for k, c in grid.configs().items()} == laptop


@pytest.mark.parametrize("change, match", [
    (dict(grid={"variant": ["full"], "layerz": [1]}), "unknown field(s) layerz"),
    (dict(grid={"variant": ["full"]}), "layers must be given"),
    (dict(base={"layers": 2}, grid={"layers": [1]}), "in both [base] and [grid]"),
    (dict(grid={"variant": ["full"], "layers": [1, 1]}), "repeats a value"),
    (dict(grid={"variant": ["full"], "layers": []}), "non-empty list"),
    (dict(grid={"variant": ["full"], "layers": [0]}), "layers must be >= 1"),
    (dict(budget="huge"), "unknown budget"),
    (dict(base={"seed": 1}), "the seed is top-level"),
    (dict(colour="red"), "unknown top-level key"),
])
def test_a_bad_grid_is_refused_before_any_training(change, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        parse_grid({**GRID, **change})


def test_the_curve_says_what_the_engine_did():
    """Steps fail (an explode threshold at the median batch loss of the same run
    without one) and seeds roll back: the curve's skipped steps and rollbacks are the
    engine's counts, and its learning rate of the next step is the schedule at the
    optimiser's own count times the seed's scale."""
    c = TrainConfig("full", 2, "uniform:2", d=3, n=8, batch=32, steps=301, chunk=301, seeds=2, patience=3, lr=1e-2,
                    warmup=5)
    median = float(np.median(np.asarray(run_steps(c, init_state(c), 300)[1])))
    c = replace(c, explode=median / (c.d / 2))
    before, first = run_steps(c, init_state(c), 300)
    _, last = run_steps(c, before, 1)
    cv = curve(c, np.concatenate([np.asarray(first), np.asarray(last)], axis=1))
    assert cv.rollbacks[:, 299].max() >= 1 and cv.skipped.sum() > cv.rollbacks[:, -1].sum() * c.patience
    np.testing.assert_array_equal(cv.skipped[:, :300].sum(axis=1), np.asarray(before.skipped))
    np.testing.assert_array_equal(cv.rollbacks[:, 299], np.asarray(before.recoveries))
    count = np.asarray(before.opt_state[1][1].count)  # optax's ScaleByScheduleState: updates taken
    expected = np.asarray(schedule(c)(count)) * np.asarray(before.lr_scale)
    np.testing.assert_allclose(cv.lr[:, 300], expected, rtol=1e-6)


def test_a_curve_file_reads_back_exactly(tmp_path):
    c = TrainConfig("diag", 1, "uniform:1", steps=7, seeds=2, first_seed=2, patience=2)
    losses = np.array([[1.0, np.nan, np.nan, 0.5, 0.25, np.nan, 0.125], [3.0, 2.0, 1.0, np.nan, 0.5, 0.4, 0.3]])
    cv = curve(c, losses)
    assert cv.rollbacks[0].tolist() == [0, 0, 1, 1, 1, 1, 1] and cv.rollbacks[1].max() == 0
    write_curve(tmp_path / "curve.csv", cv)
    back = read_curve(tmp_path / "curve.csv")
    assert back.seeds.tolist() == [2, 3]
    for a, b in zip((cv.loss, cv.lr, cv.skipped, cv.rollbacks), (back.loss, back.lr, back.skipped, back.rollbacks)):
        np.testing.assert_array_equal(a, b)


def _grid_file(path, grid=GRID):
    lines = [f'budget = "{grid["budget"]}"', f"seed = {grid['seed']}", "[base]"]
    lines += [f"{k} = {v!r}" for k, v in grid["base"].items()]
    lines += ["[grid]"] + [f"{k} = {[v for v in vs]!r}".replace("'", '"') for k, vs in grid["grid"].items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _results(out):
    with open(out / "results.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


@pytest.mark.slow
def test_a_sweep_killed_part_way_resumes_to_the_same_results(tmp_path):
    grid = _grid_file(tmp_path / "grid.toml")
    whole = run_cli("sweep", grid, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    rows = _results(tmp_path / "whole")
    assert [(r["variant"], r["layers"], r["noise"]) for r in rows][:2] == [("full", "1", "uniform:1"),
                                                                         ("full", "1", "uniform:3")]
    assert len(rows) == 8 and all(float(r["adjusted_loss"]) < 3 for r in rows)
    for axis in ("variant", "layers", "noise"):
        assert (tmp_path / "whole" / f"against-{axis}.png").stat().st_size > 5000
    for v in ("full", "diag"):
        for L in (1, 2):
            assert (tmp_path / "whole" / "curves" / f"curve-{v}-L{L}.png").stat().st_size > 5000
    run_dirs = sorted((tmp_path / "whole" / "runs").iterdir())
    assert len(run_dirs) >= 8 and all((d / "curve.csv").exists() for d in run_dirs)

    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    proc = subprocess.Popen([sys.executable, "-m", "lticl.cli", "sweep", str(grid), "--out", str(tmp_path / "killed")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((tmp_path / "killed").glob("runs/*/checkpoint.npz")) and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "results.csv").exists(), "the sweep ended before the kill"
    resumed = run_cli("sweep", grid, "--out", tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _results(tmp_path / "killed") == rows

    again = run_cli("sweep", grid, "--out", tmp_path / "whole")  # finished: read back, nothing retrained
    assert again.returncode == 0 and _results(tmp_path / "whole") == rows
    assert "step" not in again.stderr  # no training progress: every run was reused

    drawn = run_cli("curves", *run_dirs[:2], "--out", tmp_path / "two")
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / "two.png").stat().st_size > 5000 and run_dirs[0].name in drawn.stdout


def test_sweep_and_curves_refuse_bad_input_in_one_line(tmp_path):
    assert_one_line_error(run_cli("sweep", tmp_path / "none.toml", "--out", tmp_path / "o"), "cannot read the grid")
    (tmp_path / "bad.toml").write_text("budget = [")
    assert_one_line_error(run_cli("sweep", tmp_path / "bad.toml", "--out", tmp_path / "o"), "not valid TOML")
    assert_one_line_error(run_cli("curves", tmp_path, "--out", tmp_path / "c"), "holds no run")


def test_the_example_grid_is_the_documented_sweep():
    from pathlib import Path

    from lticl.sweep import read_grid

    g = read_grid(Path(__file__).parent.parent / "examples" / "depth-sweep.toml")
    assert len(g.configs()) == 12 and {c.steps for c in g.configs().values()} == {1000}
