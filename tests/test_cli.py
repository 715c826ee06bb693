"""The CLI runs in a subprocess with JAX's defaults (float32 only)."""

import json
import os
import subprocess
import sys

import pytest

from lticl.paper import paper_settings, paper_value


def lticl(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    return subprocess.run([sys.executable, "-m", "lticl.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


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


@pytest.mark.parametrize(
    "args,match",
    [
        (["--noise", "uniform:-1"], "sigma_max must be >= 0"),
        (["--noise", "categorical:"], "empty set"),
        (["--method", "lasso"], "unknown baseline"),
        (["--sequences", "0"], "--sequences"),
        (["--n", "5", "--noise", "uniform:1"], "needs n > d"),
        (["--format", "xml"], "--format"),
        (["--bogus"], "No such option"),
    ],
)
def test_bad_arguments_give_one_line_errors(args, match):
    r = lticl("baselines", "--sequences", "10", "--tune-sequences", "10", *args)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], r.stderr
    assert "Traceback" not in r.stderr


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
