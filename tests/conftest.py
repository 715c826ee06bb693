"""Tests run with float64 available; each test picks its dtype explicitly, and the
library keeps the dtype of its inputs. The CLI tests run lticl in a subprocess
with JAX's default (float32 only), so both configurations are exercised."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

jax.config.update("jax_enable_x64", True)

import lticl  # noqa: E402  (after the x64 switch)
from lticl.devices import use_compilation_cache, use_cpu_cores  # noqa: E402

use_cpu_cores(2)  # as the CLI does on a 2-core machine: groups of models spread over both
# As the CLI does: the test workers, the CLI and the scripts the tests start share one
# compilation cache, so a program is compiled once per suite, not once per process.
use_compilation_cache()

N, D = 20, 10  # the paper's sizes


def gd_like_params(key, variant, layers, d, heads, n, dtype=jnp.float64):
    """Random parameters whose dynamics stay bounded at every depth on all but rare
    sequences (a large λ_max(XᵀX/n) takes a GD step past 2/λ_max): GD layers of step
    1/(n+d+1) with every entry perturbed (ε = 0.05/L), so every term of every form is
    exercised."""
    return lticl.gd_init(key, variant, layers, d, heads, 1.0 / (n + d + 1), 0.05 / layers, dtype)


def slow_unless(cases, fast):
    """Parametrize cases, each marked slow unless it is one of `fast`: the fast subset
    keeps a few representative cases, the full suite runs them all."""
    return [pytest.param(*(c if isinstance(c, tuple) else (c,)), marks=() if c in fast else pytest.mark.slow)
            for c in cases]


@pytest.fixture
def key():
    return jax.random.key(0)


def run_cli(*args, timeout=600):
    """`lticl ARGS` in a subprocess with JAX's defaults (float32 only)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    return subprocess.run([sys.executable, "-m", "lticl.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_one_line_error(r, match):
    """The CLI failed with exit code 2 and one stderr line naming the problem."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def pytest_collection_modifyitems(items):
    """The smoke reproduction's tests first: under pytest-xdist (`--dist loadscope`,
    no reorder) its module then starts at once on one worker while the other
    workers take the rest, rather than starting last and running alone."""
    items.sort(key=lambda item: "smoke" not in getattr(item, "fixturenames", ()))
