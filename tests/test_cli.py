"""The CLI runs in a subprocess with JAX's defaults (float32 only)."""

import json

import pytest

from conftest import assert_one_line_error, slow_unless
from conftest import run_cli as lticl
from lticl.paper import paper_settings, paper_value


@pytest.mark.slow
def test_baselines_match_the_paper_at_a_small_budget(tmp_path):
    r = lticl("baselines", "--sequences", "30000", "--tune-sequences", "30000", "--noise", "uniform:5",
              "--noise", "categorical:1,3", "--noise", "uniform:0", "--format", "json", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert set(summary) == {"constrr", "adarr", "tunedrr", "oracle_loss"}
    record = json.loads((tmp_path / "baselines.json").read_text())
    assert record["environment"]["packages"]["jax"] and record["config"]["sequences"] == 30000
    assert (tmp_path / "baselines.md").read_text().count("uniform:5") == 1
    for method in ("constrr", "adarr", "tunedrr"):
        assert set(summary[method]) == {"uniform:5", "categorical:1,3", "uniform:0"}
        for setting, ours in summary[method].items():
            ev = record["details"][setting]["evaluation"][method]
            assert ev["nonfinite"] == 0 and ev["mean"] == ours
            # the paper rounds to 3 decimals; allow 4 standard errors of our estimate on top
            assert abs(ours - paper_value(method, setting)) <= 4 * ev["sem"] + 0.0015, (method, setting)
    # TUNEDRR < ADARR < CONSTRR wherever there is noise to adapt to
    for s in ("uniform:5", "categorical:1,3"):
        assert summary["tunedrr"][s] < summary["adarr"][s] < summary["constrr"][s]


BASELINE_ERRORS = [
    (("--noise", "uniform:-1"), "sigma_max must be >= 0"),
    (("--noise", "categorical:"), "empty set"),
    (("--method", "lasso"), "unknown baseline"),
    (("--sequences", "0"), "--sequences"),
    (("--n", "5", "--noise", "uniform:1"), "needs n > d"),
    (("--format", "xml"), "--format"),
    (("--bogus",), "No such option"),
]


@pytest.mark.parametrize("args,match", slow_unless(BASELINE_ERRORS, {BASELINE_ERRORS[0], BASELINE_ERRORS[6]}))
def test_bad_arguments_give_one_line_errors(args, match):
    r = lticl("baselines", "--sequences", "10", "--tune-sequences", "10", *args)
    assert_one_line_error(r, match)


def test_help():
    r = lticl("--help")
    assert r.returncode == 0 and "baselines" in r.stdout


def test_paper_table_file():
    settings = paper_settings()
    assert settings[0] == "uniform:0" and settings[-1] == "categorical:1,3,5" and len(settings) == 10
    assert paper_value("tunedrr", "uniform:5") == 0.049
    assert paper_value("full", "categorical:1,3", layers=7) == 0.010
    assert paper_value("gdpp", "uniform:4", layers=4) == 0.258
    assert paper_value("full", "uniform:5", layers=9) is None


@pytest.mark.slow
def test_train_writes_a_model_that_evaluates_independently(tmp_path):
    import functools

    import jax

    import lticl as lt
    from lticl.tasks import data_key

    r = lticl("train", "--variant", "diag", "--layers", "2", "--noise", "uniform:2", "--d", "3", "--n", "8",
              "--batch", "128", "--steps", "60", "--seeds", "2", "--sequences", "4000", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    config = json.loads((tmp_path / "config.json").read_text())["config"]
    assert {"adjusted_loss", "loss", "oracle_loss", "seed", "steps", "recoveries"} <= set(metrics)
    assert config["variant"] == "diag" and config["layers"] == 2 and config["noise"] == "uniform:2"
    params = lt.load_npz(tmp_path / "model.npz")
    method = {"m": functools.partial(lt.weights, params)}
    # the same evaluation stream gives the same number
    same = lt.evaluate(method, data_key(0, "uniform:2", "evaluation"), "uniform:2", 4000, 8, 3)["m"]
    assert abs(same.mean - metrics["adjusted_loss"]) < 1e-5
    # fresh sequences agree within sampling error
    fresh = lt.evaluate(method, jax.random.key(12345), "uniform:2", 20000, 8, 3)["m"]
    assert abs(fresh.mean - metrics["adjusted_loss"]) < 5 * (fresh.sem + same.sem)


TRAIN_ERRORS = [
    (("--variant", "conv"), "--variant"),
    (("--noise", "uniform:-1"), "sigma_max must be >= 0"),
    (("--layers", "0"), "--layers"),
    (("--objective", "mse"), "unknown objective"),
    (("--init", "zeros"), "unknown init"),
]


@pytest.mark.parametrize("args,match", slow_unless(TRAIN_ERRORS, {TRAIN_ERRORS[3]}))
def test_train_bad_arguments_give_one_line_errors(tmp_path, args, match):
    base = {"--variant": "diag", "--layers": "2", "--out": str(tmp_path)}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    r = lticl("train", *[x for kv in base.items() for x in kv])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and match in lines[0], r.stderr


def test_train_without_a_terminal_prints_plain_progress_and_logs_json_lines(tmp_path):
    """Under a pipe (no terminal) `lticl train` prints plain progress lines on stderr,
    the first when the task starts and the last at its final step, and every update
    is one JSON object per line in OUT/log.jsonl."""
    r = lticl("train", "--variant", "diag", "--layers", "2", "--noise", "uniform:2", "--d", "3", "--n", "8",
              "--batch", "64", "--steps", "40", "--sequences", "2000", "--budget", "smoke", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("diag-2 uniform:2: step ")]
    assert lines[0].startswith("diag-2 uniform:2: step 0/40") and "step 40/40, best loss" in lines[-1], r.stderr
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {"time", "task", "step", "steps", "best_loss", "elapsed_s", "eta_s"} <= set(records[-1])
    assert records[0]["step"] == 0 and records[-1]["step"] == 40 and records[-1]["eta_s"] == 0
    assert all(r["best_loss"] is None or r["best_loss"] > 0 for r in records)
