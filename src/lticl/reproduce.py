"""`lticl reproduce`: the runs and evaluations behind the paper's Table 1 and Figures 1–7.

A reproduction is a `sweep.Sweep` over the paper's grid: every target names the
cells it reads (`experiments.cells`), runs live in OUT/runs/<name>-<hash>, so
targets share them and a restarted reproduction skips finished runs and resumes
unfinished ones. Besides a sweep's results table and learning curves it writes its
own: Table 1 (`table1`) and the figures (`figures`).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from .config import TrainConfig
from .experiments import BASELINES, budget, budget_config, matching
from .io import read_json
from .metrics import evaluate, evaluate_baselines, layer_adjusted_losses, tune_baselines
from .params import Params, as_diag
from .noise import Fixed, as_noise
from .paper import PAPER_D, PAPER_N
from .rundir import write_json
from .selection import heavy_tailed, in_background
from .sweep import Sweep, curve_figures, result_row, write_results
from .table1 import training_verdict
from .train import checked
from .tasks import data_key, sample_tasks, stack_chunks, task_chunks


class Reproduction(Sweep):
    """The runs and evaluations of one `lticl reproduce` call: a Sweep over the
    paper's grid, keyed by cell (variant, layers, noise)."""

    def __init__(self, out: Path, budget_name: str, seed: int = 0, resume: bool = True,
                 progress: Callable[[str, int, int], None] | None = None, executor: str = "local", **overrides):
        self.plan = budget(budget_name)
        super().__init__(out, resume, progress, executor)
        self.budget, self.seed, self.overrides = budget_name, seed, overrides
        self.baselines_ahead: tuple = ()  # settings whose baseline rows `prefetch` computes in the background
        self._ahead: Future | None = None

    def config(self, variant: str, layers: int, noise: str) -> TrainConfig:
        """A cell's first run."""
        return budget_config(self.budget, variant, layers, noise, seed=self.seed, **self.overrides)

    def retry(self, key) -> TrainConfig:
        """A heavy-tailed cell's new seeds, with the budget's `retry` fields for its
        variant and depth (the laptop's: stratified batches up to 4 layers, which show
        training the sequences that blow models up)."""
        variant, layers, noise = key
        return replace(super().retry(key), **matching(self.plan.retry, variant, layers, noise=noise))

    def continuations(self, key) -> list[TrainConfig]:
        """A cell whose chosen model misses Table 1's rule on validation or its tail
        set (`table1.training_verdict`; the evaluation set is never read) trains on
        with the budget's `continuation` fields for its variant and depth; so does a
        cell within that rule whose chosen model has a heavy tail where those fields end
        in the polish (the tail set's worst is a lower bound of the million's, and the
        polish is what takes a tail down). It starts
        from the lowest on the same validation sequences of the tame ones among its own
        chosen model and its `candidates`, as they are after their own continuations:
        the same variant's one layer shallower, grown by a layer, and, for FULL, DIAG's
        of the same depth (a DIAG model is a FULL one whose blocks are scaled
        identities); for DIAG also FULL's of the same depth as it stands then, projected
        onto DIAG (`projected`), and for every cell the same variant and depth's on the
        settings of the same largest noise level (`siblings`), these two evaluated on the
        cell's own sets. Where its own model has a heavy tail, it also continues that
        model, in a second run: continuing sometimes keeps a tail and sometimes trains
        it away. Where the budget's `regrown` fields match, it also continues the tame
        shallower model grown as they say (the laptop's DIAG: below the last layer). A
        GD++ cell whose paper value lies below the bound is not continued, nor is a cell
        with no usable model to start from. Each seed of a continuation keeps its start
        where training on did not help (`train.train_group`'s origins)."""
        fields = self._continuing(key)
        if not fields:
            return []
        variant, layers, noise = key
        m = self.metrics[key]
        mean = lambda k: self.metrics[k]["validation"][self.metrics[k]["seed"]]["mean"]
        candidates = self.candidates(key)
        checks = ({k: (mean(k), self.tailed(k)) for k in [key] + candidates if k in self.metrics}
                  | self.projected(key) | self.siblings(key))
        tame = [k for k, (_, tailed) in checks.items() if not tailed]
        lowest = [min(tame, key=lambda k: checks[k][0])] if tame else []  # the first of equals: the cell's own model
        starts = [(k, fields) for k in lowest + ([key] if m["usable"] and key not in tame else [])]
        regrown = matching(self.plan.regrown, variant, layers, noise=noise)
        if regrown and candidates[0] in tame:
            starts.append((candidates[0], fields | regrown))
        runs = []
        for start, run_fields in starts:  # each numbered after the ones before it
            runs.append(self.continued(key, start, sum(r.seeds for r in runs), **run_fields))
        return runs

    def _continuing(self, key) -> dict:
        """The budget's continuation fields where the cell is continued (see
        `continuations`), else {}."""
        fields = matching(self.plan.continuation, *key[:2], noise=key[2])
        if not fields:
            return {}
        m = self.metrics[key]
        v = training_verdict(*key, m["validation"][m["seed"]], m["tail"][m["seed"]], self.configs[key].tail_sequences,
                             self.seed)
        return {} if v == "bound" or (v == "within" and not (fields.get("polish") and self.tailed(key))) else fields

    def foreseen(self, key) -> list[TrainConfig]:
        """The cell's chosen run with its continuation fields, where it would be
        continued: what its continuations draw (tail set, polish sample) whatever
        their starts, which are not evaluated for it."""
        fields = self._continuing(key)
        return [replace(self.chosen_run(key), **fields)] if fields else []

    def candidates(self, key) -> list:
        """A cell's other starts: the same variant one layer shallower and, for FULL,
        DIAG's of the same depth. Their continuations are decided first (`Sweep.waves`)."""
        variant, layers, noise = key
        return [(variant, layers - 1, noise)] + ([("diag", layers, noise)] if variant == "full" else [])

    def projected(self, key) -> dict:
        """For a DIAG cell, {FULL's key of the same depth: (validation mean, heavy
        tail)} of FULL's chosen model projected onto DIAG (`params.as_diag`), on the
        cell's own validation and tail sets; {} for other cells, or where FULL's has
        no usable model. FULL decides after DIAG (`candidates`), so this is FULL's model
        before its continuations: where FULL's shallow models are DIAG ones in all but
        name, the projection can be the better DIAG start (docs/training.md)."""
        variant, layers, noise = key
        peer = ("full", layers, noise)
        return self._on_own_sets(key, [peer], as_diag) if variant == "diag" else {}

    def siblings(self, key) -> dict:
        """{key: (validation mean, heavy tail)} of the chosen models of the same variant
        and depth on the other settings with the same largest noise level (uniform:3
        and categorical:1,3), on the cell's own validation and tail sets, as they stand
        when the cell decides (they decide in the same wave). A categorical setting
        trains a model to tell its noise levels apart, which on the uniform setting
        of the same range FULL does not learn from its own batches (FULL-3 uniform:3,
        docs/training.md)."""
        top = as_noise(key[2]).sigma_max
        peers = [k for k in self.metrics if k[:2] == key[:2] and k != key and as_noise(k[2]).sigma_max == top]
        return self._on_own_sets(key, peers, lambda params: params)

    def _on_own_sets(self, key, peers: list, model: Callable[[Params], Params]) -> dict:
        """{peer: (validation mean, heavy tail)} of model(each usable peer's chosen
        model), evaluated on the cell's own validation and tail sets (`train.checked`)."""
        found = {}
        for peer in peers:
            if peer in self.metrics and self.metrics[peer]["usable"]:
                c = self.configs[key]
                (v,), (t,) = checked(c, jax.tree.map(lambda a: a[None], model(self.params(peer))))
                found[peer] = (v.mean, heavy_tailed(v, c.d) or heavy_tailed(t, c.d))
        return found

    def train(self, keys: set) -> None:
        """Train every cell in `keys` not yet trained (see `Sweep.train`)."""
        super().train({k: self.config(*k) for k in sorted(keys)})

    def prefetch(self, keys: list) -> None:
        """`Sweep.prefetch`, then the baseline rows of `baselines_ahead` (the settings
        of a target that reads them), computed on the drawing thread once the first
        runs have trained."""
        super().prefetch(keys)
        if self.executor == "local" and self.baselines_ahead and self._ahead is None:
            self._ahead = in_background(self._baselines, self.baselines_ahead)

    # ------------------------------------------------------------------ baselines

    @property
    def baseline_sequences(self) -> int:
        """Baseline rows are tuned and evaluated on as many sequences as the models."""
        return self.config("full", 1, "uniform:5").evaluation_sequences

    def baselines(self, settings) -> dict[str, dict[str, float]]:
        """{setting: {method: adjusted loss}} for Table 1's baseline rows, evaluated on
        the runs' evaluation stream, tuned on the separate tune stream; cached in
        OUT under a name that hashes everything the numbers depend on."""
        if self._ahead is not None:  # computed in the background (`prefetch`): wait for it
            self._ahead.result()
        return self._baselines(settings)

    def _baselines(self, settings) -> dict[str, dict[str, float]]:
        key = {"methods": list(BASELINES), "seed": self.seed, "sequences": self.baseline_sequences,
               "tune_sequences": self.baseline_sequences, "n": PAPER_N, "d": PAPER_D}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        path = self.out / f"baselines-{digest}.json"
        cached = read_json(path, ("settings",))["settings"] if path.exists() else {}
        todo = [s for s in settings if s not in cached]
        fresh = evaluate_baselines(BASELINES, todo, self.seed, key["sequences"], key["tune_sequences"], PAPER_N,
                                   PAPER_D)
        for s, r in fresh.items():
            cached[s] = {**{m: r["evaluation"][m].to_dict() for m in BASELINES}, "tuned": r["tuned"]}
        if todo:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, {"key": key, "settings": cached})
        return {s: {m: cached[s][m]["mean"] for m in BASELINES} for s in settings}

    # ------------------------------------------------------------------ profiles

    def sigma_grid(self, sigma_max: float) -> np.ndarray:
        return np.linspace(0.0, sigma_max + 1.0, self.plan.profile_points)

    def _profile_tasks(self, i: int, sigma: float):
        """The profile's fresh sequences at its i-th σ (fixed noise)."""
        return sample_tasks(jax.random.fold_in(data_key(self.seed, "fixed:0", "evaluation"), i), Fixed(float(sigma)),
                            self.plan.profile_sequences, PAPER_N, PAPER_D)

    def layer_profiles(self, params: Params, sigmas) -> np.ndarray:
        """(K, len(sigmas), L+1) adjusted loss after each layer, for K stacked models,
        at each fixed σ (means over the budget's profile sequences)."""
        return np.stack([np.asarray(_mean_layer_losses(params, self._profile_tasks(i, s)))
                         for i, s in enumerate(sigmas)], axis=1)

    def profile(self, key, sigmas) -> np.ndarray:
        """(len(sigmas), L+1) layer profiles of one cell's chosen model."""
        return self.layer_profiles(jax.tree.map(lambda a: a[None], self.params(key)), sigmas)[0]

    def seed_layer_profile(self, key) -> np.ndarray:
        """(K, L+1) adjusted loss after each layer of every seed of a cell, on the
        cell's own noise setting."""
        noise = key[2]
        tasks = stack_chunks(task_chunks(data_key(self.seed, noise, "evaluation"), noise,
                                         self.plan.profile_sequences, PAPER_N, PAPER_D))
        return np.asarray(_mean_layer_losses(self.seeds(key), tasks))

    def baseline_profiles(self, setting: str, sigmas) -> dict[str, np.ndarray]:
        """Adjusted loss vs σ of the baselines tuned on `setting`, and the oracle's loss."""
        fitted = tune_baselines(BASELINES, setting, self.seed, self.baseline_sequences, PAPER_N, PAPER_D)
        rows = defaultdict(list)
        for i, s in enumerate(sigmas):
            ev = evaluate(fitted, jax.random.fold_in(data_key(self.seed, "fixed:0", "evaluation"), i),
                          Fixed(float(s)), self.plan.profile_sequences, PAPER_N, PAPER_D)
            for m, e in ev.items():
                rows[m].append(e.mean)
        return {m: np.array(v) for m, v in rows.items()}


@jax.jit
def _mean_layer_losses(params: Params, tasks) -> jax.Array:
    """(K, L+1) mean adjusted loss after each layer, K stacked models."""
    return jax.vmap(lambda p: layer_adjusted_losses(p, tasks).mean(axis=-1))(params)


def reproduce(target: str, rep: Reproduction) -> list[Path]:
    """Train the cells a target reads, write its files into rep.out and return their paths."""
    from .experiments import FIGURES, SETTINGS, cells
    from .figures import figure
    from .provenance import environment
    from .table1 import table1_rows, write_table1

    needed = cells(target)
    if target in ("table1", "fig1", "all"):  # the targets with baseline rows (table1_rows, figures.fig1)
        rep.baselines_ahead = SETTINGS
    rep.out.mkdir(parents=True, exist_ok=True)
    write_json(rep.out / "reproduce.json",
               {"target": target, "budget": rep.budget, "seed": rep.seed, "overrides": rep.overrides,
                "config": rep.config("full", 7, "uniform:5").to_dict(), "environment": environment()})
    rep.train(needed)
    written = []
    if target in ("table1", "all"):  # the whole grid: a sweep's table and curves, then Table 1
        keys = sorted(needed)
        written += write_results([result_row(rep, k, dict(zip(("variant", "layers", "noise"), k))) for k in keys],
                                 rep.out, f"Every cell at budget {rep.budget}: adjusted loss on fresh sequences")
        written += curve_figures(rep, keys, rep.out / "curves")
        written += write_table1(table1_rows(rep), rep.out, rep.budget)
    for name in FIGURES if target == "all" else [target] if target in FIGURES else []:
        written += figure(name, rep)
    return written
