"""Continuations: a run that starts from a finished run's seeds, the sweep phase that
makes them, and the reproduction's decision (validation and tail sets only)."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lticl.config import TrainConfig
from lticl.engine import init_state
from lticl.experiments import BUDGETS, cells, matching
from lticl.io import load_npz, save_npz
from lticl.paper import paper_value
from lticl.params import as_diag, as_full
from lticl.reproduce import Reproduction
from lticl.rundir import MODEL, SEEDS, config_hash, continuation_start, load_seeds, run_name, save_seeds
from lticl.metrics import Evaluation
from lticl.runs import origin, run
from lticl.sweep import Sweep
from lticl.selection import tail_limit
from lticl.table1 import gdpp_bound, verdict
from lticl.train import checked

TINY = dict(d=3, n=8, batch=64, steps=40, chunk=10, seeds=2, validation_sequences=500, evaluation_sequences=500,
            tail_sequences=2000)


def test_continues_names_a_directory_and_enters_the_hash_only_when_set():
    config = TrainConfig("full", 2, "uniform:2", **TINY)
    assert config_hash(replace(config, continues="full-L2-abc")) != config_hash(config)
    for bad in ("a/b", "..", "x\\y", 3):
        with pytest.raises(ValueError, match="continues must be the name of a run directory"):
            replace(config, continues=bad)


def test_a_start_must_fit_the_config():
    config = TrainConfig("full", 2, "uniform:2", **TINY)
    state = init_state(config)
    again = init_state(config, state.params)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(a, b)
    assert int(again.opt_state[1][0].count[0]) == 0  # a fresh optimiser
    with pytest.raises(ValueError, match="a start of 2 full-2 models"):
        init_state(config, init_state(replace(config, variant="diag")).params)
    with pytest.raises(ValueError, match="a start of 2 full-2 models"):
        init_state(config, init_state(replace(config, seeds=3)).params)


@pytest.mark.slow
def test_a_continuation_starts_from_its_parent_and_is_deterministic(tmp_path):
    parent = TrainConfig("diag", 2, "uniform:2", **TINY)
    child = replace(parent, continues=run_name(parent), first_seed=2, steps=30, lr=1e-3)
    with pytest.raises(ValueError, match="not a finished run"):
        continuation_start(child, tmp_path / "a" / run_name(parent))
    results = []
    for root in ("a", "b"):
        run(parent, tmp_path / root / run_name(parent))
        state, losses = continuation_start(child, tmp_path / root / run_name(parent))
        seeds = load_seeds(tmp_path / root / run_name(parent) / SEEDS)
        np.testing.assert_array_equal(state.params.p, seeds.p)  # the parent's final seeds, exactly
        assert losses.shape == (2, 0) and int(state.step[0]) == 0
        results.append(run(child, tmp_path / root / run_name(child)))
    assert results[0] == {**results[1], "seconds": results[0]["seconds"]}
    assert results[0]["steps"] == 30
    # a FULL continuation of a DIAG run starts from the FULL model each DIAG seed is
    full = replace(child, variant="full")
    state, _ = continuation_start(full, tmp_path / "a" / run_name(parent))
    start = as_full(load_seeds(tmp_path / "a" / run_name(parent) / SEEDS))
    np.testing.assert_array_equal(state.params.p, start.p)
    np.testing.assert_array_equal(state.params.q, start.q)
    assert run(full, tmp_path / "a" / run_name(full))["steps"] == 30
    # a DIAG continuation of a FULL run starts from the DIAG model nearest each FULL seed
    back = replace(child, continues=run_name(full))
    state, _ = continuation_start(back, tmp_path / "a" / run_name(full))
    start = as_diag(load_seeds(tmp_path / "a" / run_name(full) / SEEDS))
    np.testing.assert_array_equal(state.params.p, start.p)
    np.testing.assert_array_equal(state.params.q, start.q)
    # a parent whose seeds were changed after it finished is refused
    with open(tmp_path / "a" / run_name(parent) / SEEDS, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="differs from the file its run wrote"):
        continuation_start(child, tmp_path / "a" / run_name(parent))


@pytest.mark.slow
def test_a_continuation_is_never_worse_than_its_start_on_validation_and_tail_sets(tmp_path):
    parent = TrainConfig("diag", 2, "uniform:2", **TINY)
    recorded = run(parent, tmp_path / run_name(parent))
    start = load_seeds(tmp_path / run_name(parent) / SEEDS)
    v0, t0 = checked(parent, start)  # a continuation's validation and tail sets are its parent's
    charged = lambda v, t: v.mean + t.worst / parent.tail_sequences  # what select_best compares
    started = {}
    for lr in (3.0, 1e-3):  # training on that wrecks the models, and training on that may help
        child = replace(parent, continues=run_name(parent), first_seed=2, steps=30, lr=lr)
        m = run(child, tmp_path / run_name(child))
        seeds = load_seeds(tmp_path / run_name(child) / SEEDS)
        started[lr] = m["started"]
        for k in range(child.seeds):
            v, t = Evaluation(**m["validation"][k]), Evaluation(**m["tail"][k])
            assert charged(v, t) <= charged(v0[k], t0[k]) * (1 + 1e-9)
            if m["started"][k]:  # the start itself, bit for bit, and its evaluations
                np.testing.assert_array_equal(seeds.p[k], start.p[k])
                np.testing.assert_array_equal(seeds.q[k], start.q[k])
                assert v.mean == pytest.approx(v0[k].mean, rel=1e-9) and t.worst == pytest.approx(t0[k].worst, rel=1e-9)
            else:
                assert not np.array_equal(seeds.p[k], start.p[k])
    assert started[3.0] == [True, True] and started[1e-3] != [True, True]
    # the parent's own models on the same sets: their evaluations are the parent's; a FULL continuation
    # of them is evaluated afresh, and keeps them as the FULL models they are
    assert origin(child, tmp_path).checks == tuple([Evaluation(**e) for e in recorded[f]] for f in ("validation", "tail"))
    full = replace(parent, variant="full", continues=run_name(parent), first_seed=2, steps=30, lr=3.0)
    assert origin(full, tmp_path).checks is None
    m = run(full, tmp_path / run_name(full))
    assert m["started"] == [True, True]
    np.testing.assert_array_equal(load_seeds(tmp_path / run_name(full) / SEEDS).p, as_full(start).p)
    assert [v["mean"] for v in m["validation"]] == pytest.approx([v.mean for v in v0], rel=1e-5)


def test_a_model_evaluated_for_a_decision_is_not_evaluated_again_when_its_continuation_starts(tmp_path, monkeypatch):
    """`train.checked` keeps its latest answers by the config's CHECKED fields and the
    models' bytes: a start the reproduction evaluated on a cell's sets (read from the
    run's model file) is the continuation's start (read from its seeds file), which
    `train._kept` does not evaluate again."""
    import lticl.train

    calls = []
    evaluate = lticl.train.evaluate_models
    monkeypatch.setattr(lticl.train, "evaluate_models", lambda *a: (calls.append(a), evaluate(*a))[1])
    for variant in ("full", "diag", "gdpp"):
        config = TrainConfig(variant, 2, "uniform:2", **{**TINY, "seeds": 1})
        models = jax.tree.map(lambda a: a * 1.01, init_state(config).params)
        save_seeds(tmp_path / f"{variant}-{SEEDS}", models)
        save_npz(jax.tree.map(lambda a: a[0], models), tmp_path / f"{variant}-{MODEL}")
        calls.clear()
        first = checked(config, jax.tree.map(lambda a: a[None], load_npz(tmp_path / f"{variant}-{MODEL}")))
        assert checked(config, load_seeds(tmp_path / f"{variant}-{SEEDS}")) == first and len(calls) == 1
        assert checked(replace(config, lr=1e-4, steps=7), models) == first and len(calls) == 1  # fields it does not read
        changed = checked(config, jax.tree.map(lambda a: a * 1.5, models))
        assert len(calls) == 2 and changed != first
        checked(replace(config, validation_sequences=400), models)
        assert len(calls) == 3


# A sweep that continues every key once: the sweep phase as a Reproduction uses it.
SCRIPT = """
import sys
from pathlib import Path
from lticl.config import TrainConfig
from lticl.sweep import Sweep

class Continuing(Sweep):
    def continuations(self, key):
        return [self.continued(key, steps=400, lr=1e-3)]

sweep = Continuing(Path(sys.argv[1]))
sweep.train({"a": TrainConfig("full", 2, "uniform:2", d=3, n=8, batch=256, steps=60, chunk=10, seeds=1,
                               validation_sequences=500, evaluation_sequences=500, tail_sequences=2000)})
print(sweep.metrics["a"]["seed"], len(sweep.runs["a"]))
"""


def _continuation_dir(out: Path) -> Path | None:
    for config in out.glob("runs/*/config.json"):
        if json.loads(config.read_text())["config"]["continues"]:
            return config.parent
    return None


@pytest.mark.slow
def test_a_continuation_killed_part_way_resumes_to_the_same_model(tmp_path):
    script = tmp_path / "continuing.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    cmd = lambda out: [sys.executable, str(script), str(tmp_path / out)]
    whole = subprocess.run(cmd("whole"), env=env, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert whole.stdout.split()[1] == "2"  # the first run and its continuation

    proc = subprocess.Popen(cmd("killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        found = _continuation_dir(tmp_path / "killed")
        if found is not None and (found / "checkpoint.npz").exists():
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = _continuation_dir(tmp_path / "killed")
    assert killed is not None and not (killed / MODEL).exists(), "the continuation ended before the kill"
    resumed = subprocess.run(cmd("killed"), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout == whole.stdout
    a, b = (load_npz(_continuation_dir(tmp_path / out) / MODEL) for out in ("whole", "killed"))
    assert killed.name == _continuation_dir(tmp_path / "whole").name
    np.testing.assert_array_equal(a.p, b.p)
    np.testing.assert_array_equal(a.q, b.q)


def _cell(rep, key, mean, tail_worst=1.0, usable=True):
    """A trained cell as the reproduction records it, with no evaluation at all: the
    decision may read validation and tail sets only."""
    config = rep.config(*key)
    ev = lambda mean, worst: {"mean": mean, "sem": 1e-3, "worst": worst, "nonfinite": 0, "block_spread": 0.0,
                              "sequences": 20_000}
    m = {"seed": 0, "usable": usable, "validation": [ev(mean, 1.0)], "tail": [ev(1.0, tail_worst)]}
    rep.configs[key], rep.metrics[key], rep.runs[key] = config, m, [(config, m)]
    return config


def test_a_cell_continues_when_it_misses_on_validation_and_never_reads_its_evaluation(tmp_path):
    rep = Reproduction(tmp_path, "laptop")
    starts = lambda key: [c.continues for c in rep.continuations(key)]
    key = ("full", 5, "uniform:4")
    paper = paper_value("full", "uniform:4", 5)
    config = _cell(rep, key, paper * 0.99)
    assert rep.continuations(key) == [] and rep.foreseen(key) == []  # within on validation
    # within, charged with its tail set's worst too, but that worst is above the tame limit:
    # FULL's continuations end in the polish, so it continues from its own model; DIAG-5's do not
    heavy = 2 * tail_limit(config.d)
    assert verdict(paper * 0.99, paper, heavy, config.tail_sequences) == "within"
    _cell(rep, key, paper * 0.99, tail_worst=heavy)
    assert matching(BUDGETS["laptop"].continuation, *key[:2]).get("polish")
    assert starts(key) == [run_name(config)]
    _cell(rep, ("diag", 5, "uniform:4"), paper * 0.99, tail_worst=heavy)
    assert not matching(BUDGETS["laptop"].continuation, "diag", 5).get("polish")
    assert rep.continuations(("diag", 5, "uniform:4")) == []
    _cell(rep, key, paper * 1.2)
    more, = rep.continuations(key)
    assert more.continues == run_name(config) and more.first_seed == 1
    fields = matching(BUDGETS["laptop"].continuation, *key[:2])
    assert fields and all(getattr(more, k) == v for k, v in fields.items())
    # the cell's own config but for the continuation's fields
    assert replace(more, continues="", first_seed=0, **{k: getattr(config, k) for k in fields}) == config
    # within on validation, but one tail-set sequence would move a mean over the pool out of it
    _cell(rep, key, paper * 0.99, tail_worst=0.1 * paper * config.tail_sequences)
    assert starts(key) == [run_name(config)]  # no other start: its own, heavy tail and all
    _cell(rep, key, paper * 1.2, usable=False)
    assert rep.continuations(key) == []  # a failed model is not continued
    # the same variant one layer shallower, tame and lower on the same validation sequences, is grown instead
    below = _cell(rep, ("full", 4, "uniform:4"), paper * 1.1)
    assert starts(key) == [run_name(below)]  # the failed cell gets a grown start
    _cell(rep, key, paper * 1.2)
    grown, = rep.continuations(key)
    assert (grown.continues, grown.layers, grown.first_seed) == (run_name(below), 5, 1)
    _cell(rep, key, paper * 1.09)
    assert starts(key) == [run_name(config)]  # its own model is lower
    _cell(rep, key, paper * 1.2)
    _cell(rep, ("full", 4, "uniform:4"), paper * 1.1, tail_worst=1e6)
    assert starts(key) == [run_name(config)]  # the shallower one has a heavy tail
    # DIAG's model of the same depth is a FULL one: the lowest tame start wins
    diag = _cell(rep, ("diag", 5, "uniform:4"), paper * 1.05)
    assert starts(key) == [run_name(diag)]
    _cell(rep, ("full", 4, "uniform:4"), paper * 1.02)
    assert starts(key) == [run_name(below)]
    _cell(rep, ("diag", 5, "uniform:4"), paper * 1.01, tail_worst=1e6)
    assert starts(key) == [run_name(below)]  # DIAG's has a heavy tail
    # its own model, lowest but heavy-tailed, is continued in a second run beside the lowest tame start
    _cell(rep, key, paper * 0.9, tail_worst=1e6)
    beside = rep.continuations(key)
    assert [c.continues for c in beside] == [run_name(below), run_name(config)]
    assert [(c.first_seed, c.seeds) for c in beside] == [(1, 1), (2, 1)]  # numbered after each other
    _cell(rep, ("full", 4, "uniform:4"), paper * 1.02, tail_worst=1e6)
    assert starts(key) == [run_name(config)]  # no tame start: its own alone
    _cell(rep, key, paper * 0.5)
    _cell(rep, ("diag", 5, "uniform:4"), paper * 1.2)
    # FULL's model starts DIAG only projected onto DIAG, where that is tame and lowest on DIAG's validation
    projected = {}
    rep.projected = lambda k: {key: projected[k]} if k in projected else {}
    assert starts(("diag", 5, "uniform:4")) == [run_name(diag)]
    projected[("diag", 5, "uniform:4")] = (paper * 1.1, False)
    assert starts(("diag", 5, "uniform:4")) == [run_name(config)]
    projected[("diag", 5, "uniform:4")] = (paper * 1.1, True)
    assert starts(("diag", 5, "uniform:4")) == [run_name(diag)]  # heavy-tailed, projected
    projected[("diag", 5, "uniform:4")] = (paper * 1.3, False)
    assert starts(("diag", 5, "uniform:4")) == [run_name(diag)]
    projected.clear()
    # the same variant and depth's model on a setting of the same largest noise level (evaluated on the
    # cell's own sets) starts the cell where it is tame and lowest there
    u3, c13, c135 = ("full", 5, "uniform:3"), ("full", 5, "categorical:1,3"), ("full", 5, "categorical:1,3,5")
    p3 = paper_value("full", "uniform:3", 5)
    own, sibling = _cell(rep, u3, p3 * 1.2), _cell(rep, c13, p3 * 2)  # c13's own validation mean is not comparable
    _cell(rep, c135, p3 * 0.5)
    seen, asked = {}, []
    rep._on_own_sets = lambda k, peers, model: (asked.append((k, peers)), {p: seen[p] for p in peers if p in seen})[1]
    assert starts(u3) == [run_name(own)] and (u3, [c13]) in asked
    seen[c13] = (p3 * 1.1, False)
    assert starts(u3) == [run_name(sibling)]
    # what its continuations draw (tail set, polish sample) is known without evaluating any start
    asked.clear()
    ahead, = rep.foreseen(u3)
    assert asked == [] and ahead == replace(own, **matching(BUDGETS["laptop"].continuation, "full", 5, noise=u3[2]))
    drawn = ("seed", "noise", "n", "d", "tail_sequences", "stratum", "polish", "polish_score", "polish_pool",
             "polish_sequences")
    assert all(getattr(c, f) == getattr(ahead, f) for c in rep.continuations(u3) for f in drawn)
    seen[c13] = (p3 * 1.1, True)
    assert starts(u3) == [run_name(own)]  # heavy-tailed on the cell's sets
    seen[c13] = (p3 * 1.3, False)
    assert starts(u3) == [run_name(own)]
    assert rep.siblings(c135) == {} and rep.siblings(("diag", 5, "uniform:3")) == {}
    # a DIAG cell also continues its tame shallower model grown below the last layer (the budget's regrown)
    below = _cell(rep, ("diag", 4, "uniform:4"), paper * 1.3)
    _cell(rep, ("diag", 5, "uniform:4"), paper * 1.2)
    runs = rep.continuations(("diag", 5, "uniform:4"))
    assert [(c.continues, c.grow_below, c.first_seed) for c in runs] == [(run_name(diag), False, 1),
                                                                         (run_name(below), True, 2)]
    _cell(rep, ("diag", 4, "uniform:4"), paper * 1.3, tail_worst=1e6)
    assert starts(("diag", 5, "uniform:4")) == [run_name(diag)]  # not from a heavy tail
    # GD++-3 on uniform:5: the paper's value lies below the bound no GD++ model beats
    gdpp = ("gdpp", 3, "uniform:5")
    assert paper_value("gdpp", "uniform:5", 3) < gdpp_bound("uniform:5", 0) - 0.01
    _cell(rep, gdpp, gdpp_bound("uniform:5", 0))
    assert rep.continuations(gdpp) == []
    smoke = Reproduction(tmp_path, "smoke")  # a budget without continuations
    _cell(smoke, key, paper * 1.2)
    assert smoke.continuations(key) == []


def test_a_diag_cell_reads_fulls_model_projected_on_its_own_validation_and_tail_sets(tmp_path):
    """FULL's model of a DIAG cell's depth, projected onto DIAG (`Reproduction.projected`):
    where FULL's model is a DIAG one written as FULL, the projection is that DIAG
    model, and its mean on the DIAG cell's validation set is the one the DIAG run recorded."""
    rep = Reproduction(tmp_path, "laptop")
    key, peer = ("diag", 2, "uniform:2"), ("full", 2, "uniform:2")
    assert rep.projected(key) == {}  # FULL's not trained
    config = TrainConfig("diag", 2, "uniform:2", **TINY)
    m = run(config, tmp_path / run_name(config))
    rep.configs[key], rep.metrics[key], rep.runs[key] = config, m, [(config, m)]
    full = replace(config, variant="full")
    rep.configs[peer], rep.metrics[peer], rep.runs[peer] = full, m, [(full, m)]
    rep.params = lambda k: as_full(load_npz(tmp_path / run_name(config) / MODEL)) if k == peer else None
    (got, tailed), = rep.projected(key).values()
    assert got == pytest.approx(m["validation"][m["seed"]]["mean"], rel=1e-5) and tailed is False
    assert rep.projected(peer) == {} and rep.projected(("gdpp", 2, "uniform:2")) == {}
    rep.metrics[peer] = {**m, "usable": False}
    assert rep.projected(key) == {}  # no usable FULL model
    # the same model as DIAG's on a setting of the same largest noise level (`siblings`): on the cell's
    # own validation set it has the mean the cell's run recorded
    sibling = ("diag", 2, "categorical:1,2")
    assert rep.siblings(key) == {}
    other = replace(config, noise="categorical:1,2")
    rep.configs[sibling], rep.metrics[sibling], rep.runs[sibling] = other, m, [(config, m)]
    rep.params = lambda k: load_npz(tmp_path / run_name(config) / MODEL) if k == sibling else None
    (got, tailed), = rep.siblings(key).values()
    assert got == pytest.approx(m["validation"][m["seed"]]["mean"], rel=1e-5) and tailed is False
    assert list(rep.siblings(key)) == [sibling] and rep.siblings(("diag", 2, "uniform:3")) == {}


def test_a_cell_decides_its_continuation_after_the_cells_it_may_start_from(tmp_path):
    """Table 1's cells in waves: each in the first wave after all of its candidates
    (the same variant one layer shallower; for FULL, DIAG's of its depth), every cell
    once, in the given order within a wave."""
    rep = Reproduction(tmp_path, "laptop")
    keys = sorted(cells("table1"))
    waves = rep.waves(keys)
    assert sorted(k for w in waves for k in w) == keys and all(w == sorted(w) for w in waves)
    at = {k: i for i, w in enumerate(waves) for k in w}
    for k in keys:
        assert at[k] == 1 + max((at[c] for c in rep.candidates(k) if c in at), default=-1), k
    assert at[("diag", 7, "uniform:2")] > at[("diag", 6, "uniform:2")]
    assert at[("full", 3, "uniform:2")] > at[("diag", 3, "uniform:2")]


class _Chain(Sweep):
    """A sweep whose key k may start from key k − 1, and that continues every key
    once, recording what each decision saw; training only records the runs."""

    def __init__(self, out):
        super().__init__(out)
        self.seen = {}

    def _train(self, runs, note=""):
        for key, config in runs:
            self.runs.setdefault(key, []).append((config, {}))

    def tailed(self, key):
        return False

    def candidates(self, key):
        return [key - 1] if key else []

    def continuations(self, key):
        self.seen[key] = [c.continues for c, _ in self.runs.get(key - 1, [])]
        return [replace(self.configs[key], continues=f"run-{key}")]


def test_a_sweep_continues_a_key_after_its_candidates_continued(tmp_path):
    chain = _Chain(tmp_path)
    chain.train({k: TrainConfig("diag", 1 + k, "uniform:2", **TINY) for k in (2, 0, 1)})
    assert chain.waves([2, 0, 1]) == [[0], [1], [2]]
    assert chain.seen == {0: [], 1: ["", "run-0"], 2: ["", "run-1"]}
    assert Sweep(tmp_path).waves([2, 0, 1]) == [[2, 0, 1]]  # no candidates: one wave


def test_a_grown_model_keeps_its_parents_layers_and_adds_a_small_gd_step():
    """In float64: the first L−1 implicit states of the grown model are the parent's
    exactly; the added layer is a GD step of GROWN_STEP × the best one-step size, so
    on a parent of L−1 GD steps of size η* it lowers the mean loss, and by at most the
    gain of one full step η* more."""
    from lticl.engine import GROWN_STEP, grown
    from lticl.inits import gd_init
    from lticl.metrics import sequence_loss
    from lticl.model import implicit_state
    from lticl.noise import as_noise
    from lticl.tasks import sample_tasks
    from lticl.theory import best_one_step_size

    with jax.enable_x64(True):
        config = TrainConfig("diag", 3, "uniform:1", d=4, n=12, init_scale=0.0)
        eta = best_one_step_size(12, 4, as_noise("uniform:1").second_moment)
        parent = gd_init(jax.random.key(0), "diag", 2, 4, step_size=eta, dtype=jnp.float64)
        stacked = jax.tree.map(lambda a: a[None], parent)
        child = jax.tree.map(lambda a: a[0], grown(config, stacked))
        assert child.p.shape == (3, 1, 2) and child.p.dtype == jnp.float64
        np.testing.assert_array_equal(child.p[:2], parent.p)
        top = gd_init(jax.random.key(0), "diag", 1, 4, step_size=GROWN_STEP * eta, dtype=jnp.float64)
        np.testing.assert_allclose(child.p[2:], top.p, rtol=1e-12)
        np.testing.assert_allclose(child.q[2:], top.q, rtol=1e-12)
        t = sample_tasks(jax.random.key(1), "uniform:1", 20_000, 12, 4, dtype=jnp.float64)
        w_parent = implicit_state(parent, t.x, t.y).w
        w_child = implicit_state(child, t.x, t.y).w
        np.testing.assert_allclose(w_child[:3], w_parent, rtol=0, atol=1e-12)
        full = gd_init(jax.random.key(0), "diag", 3, 4, step_size=eta, dtype=jnp.float64)
        loss = lambda w: float(jnp.mean(sequence_loss(w, t.w)))
        parent_loss, child_loss = loss(w_parent[-1]), loss(w_child[-1])
        assert loss(implicit_state(full, t.x, t.y).w[-1]) < child_loss < parent_loss


def test_a_model_grown_below_its_last_layer_gets_a_small_copy_of_the_layer_under_it():
    """With grow_below, the first L−2 layers and the last are the parent's; between them
    sits the parent's layer L−2 with P and Q scaled by GROWN_STEP, so its ω's are
    GROWN_STEP² of that layer's. A 1-layer parent has no such layer."""
    from lticl.engine import GROWN_STEP, grown
    from lticl.inits import precondition_init
    from lticl.inspection import head_omegas

    config = TrainConfig("diag", 4, "uniform:1", grow_below=True)
    one = precondition_init(jax.random.key(0), "diag", 3, 10, 20, step_size=0.02)
    parent = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), one)
    child = grown(config, parent)
    assert child.p.shape == (2, 4, 1, 2)
    for k in range(2):
        np.testing.assert_array_equal(child.p[k, [0, 1, 3]], parent.p[k])
        np.testing.assert_array_equal(child.q[k, [0, 1, 3]], parent.q[k])
        omegas = head_omegas(jax.tree.map(lambda a: a[k], child)), head_omegas(jax.tree.map(lambda a: a[k], parent))
        np.testing.assert_allclose(omegas[0][2], GROWN_STEP ** 2 * omegas[1][1], rtol=1e-6)
    with pytest.raises(ValueError, match="at least 2 layers"):
        grown(replace(config, layers=2), jax.tree.map(lambda a: a[:, :1], parent))


def test_a_learning_curve_says_which_runs_continue_another():
    from lticl.sweep import _note

    config = TrainConfig("diag", 7, "uniform:2", **TINY)
    below = replace(config, layers=6)
    assert _note(config, config) == ""
    assert _note(replace(config, continues=run_name(config)), config) == " (continued)"
    assert _note(replace(config, continues=run_name(below)), config) == " (grown from 6 layers)"
    full = replace(config, variant="full")
    assert _note(replace(full, continues=run_name(config)), full) == " (from DIAG)"
    stratified = replace(config, stratum=1024, stratum_fraction=0.1, first_seed=1)
    assert _note(stratified, config) == " (stratified)"  # a stratified retry of a plain cell
    assert _note(replace(stratified, continues=run_name(stratified)), config) == " (stratified) (continued)"
    assert _note(stratified, replace(config, stratum=1024, stratum_fraction=0.1)) == ""  # stratified throughout


def test_a_sweep_draws_the_polish_samples_of_its_continuations_before_its_new_seeds_train(tmp_path, monkeypatch):
    """The continuations foreseen after the first runs have their tail sets and polish
    samples queued on the drawing thread then, before the new seeds and the
    continuations train, with the configs the continuations themselves will read."""
    import lticl.sweep

    order = []
    monkeypatch.setattr(lticl.sweep, "prefetch_draws", lambda configs: order.extend(("prefetch", c) for c in configs))

    class Polishing(_Chain):
        def _train(self, runs, note=""):
            order.append(("train", note))
            super()._train(runs, note)

        def tailed(self, key):
            return key == 1  # key 1 gets new seeds

        def continuations(self, key):
            return [replace(c, polish=30, polish_score="own") for c in super().continuations(key)]

    sweep = Polishing(tmp_path)
    sweep.train({k: TrainConfig("diag", 1 + k, "uniform:2", **TINY) for k in (0, 1)})
    first, *rest = [i for i, (what, _) in enumerate(order) if what == "train"]
    prefetched = [c for what, c in order[first:rest[0]] if what == "prefetch"]
    assert order[rest[0]][1] == " (new seeds: heavy tail)"
    assert [c.continues for c in prefetched] == ["run-0", "run-1"] and all(c.polish == 30 for c in prefetched)
    assert prefetched == [sweep.continuations(k)[0] for k in (0, 1)]


def test_the_drawing_thread_gets_every_tail_set_before_any_polish_sample(monkeypatch):
    """A resumed sweep queues its continuations' draws before any run trains: the tail
    sets, which every run's selection reads, must not wait behind the polish's banks."""
    import lticl.train

    order = []
    monkeypatch.setattr(lticl.train, "prefetch_tail_set", lambda seed, noise, *a: order.append(("tail", noise)))
    monkeypatch.setattr(lticl.train, "prefetch_polish_sample", lambda c: order.append(("polish", c.noise)))
    lticl.train.prefetch_draws([TrainConfig("diag", 3, s, **TINY) for s in ("uniform:1", "uniform:2")])
    assert order == [("tail", "uniform:1"), ("tail", "uniform:2"), ("polish", "uniform:1"), ("polish", "uniform:2")]
