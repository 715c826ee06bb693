"""`lticl reproduce`: the paper's Table 1 and Figures 1–7 (SPEC §7) from one grid of runs.

Every target names the runs it needs; runs live in OUT/runs/<name>-<hash> (see
`runs`), so targets share them and a restarted reproduction skips finished runs
and resumes unfinished ones. Configs that share a compiled program (same variant
and depth, any noise setting) train side by side in one vmapped call.

    table1.csv / table1.md      model, layers, setting, ours, paper, difference, within
    figN.png / figN.pdf         N = 1..7
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from .baselines import fit
from .io import load_npz
from .metrics import Evaluation, evaluate, oracle_loss, sequence_loss
from .model import Params, _implicit
from .noise import Fixed, as_noise
from .inspection import heatmap_figure
from .paper import PAPER_D, PAPER_N, paper_settings, paper_value
from .plotting import pyplot, save
from .provenance import environment
from .runs import EXECUTORS, MODEL, SEEDS, combine_runs, load_seeds, run_groups, run_name
from .tasks import data_key, sample_tasks, stack_chunks, task_chunks
from .theory import below_bound, linear_bound
from .train import BUDGETS, TrainConfig, _stack, budget_config, heavy_tailed

FIGURES = tuple(f"fig{i}" for i in range(1, 8))
TARGETS = ("table1", *FIGURES, "all")
MODELS = ("gdpp", "diag", "full")
LABEL = {"gdpp": "GD++", "diag": "DIAG", "full": "FULL", "constrr": "CONSTRR", "adarr": "ADARR",
         "tunedrr": "TUNEDRR"}
DEPTHS = tuple(range(1, 8))
BASELINE_ROWS = ("constrr", "adarr", "tunedrr")
# Sequences per point of a σ profile, and evaluation/tuning sequences for the baselines.
PROFILE_SEQUENCES = {"smoke": 1000, "laptop": 10_000, "paper": 100_000}


def uniform_settings() -> list[str]:
    return [s for s in paper_settings() if s.startswith("uniform")]


def categorical_settings() -> list[str]:
    return [s for s in paper_settings() if s.startswith("categorical")]


def needed(target: str) -> set[tuple[str, int, str]]:
    """(variant, layers, noise) of every run a target reads."""
    every = {(m, L, s) for m in MODELS for L in DEPTHS for s in paper_settings()}
    deep = lambda settings: {(m, 7, s) for m in MODELS for s in settings}
    depth_sweep = lambda s: {(m, L, s) for m in MODELS for L in range(2, 8)}
    return {
        "table1": every, "fig1": every,
        "fig2": deep(uniform_settings()) | depth_sweep("uniform:5"),
        "fig3": deep(categorical_settings()) | depth_sweep("categorical:1,3,5"),
        "fig4": {("full", 4, "categorical:1,3")},
        "fig5": deep(["uniform:5"]), "fig6": deep(["uniform:5"]), "fig7": deep(["uniform:5"]),
        "all": every,
    }[target]


def tolerance_ok(ours: float, paper: float) -> bool:
    """The training issue's criterion: ≤ paper × 1.05, or ≤ paper + 0.002 below 0.04."""
    return ours <= paper * 1.05 or (paper < 0.04 and ours <= paper + 0.002)


class Reproduction:
    """The runs and evaluations of one `lticl reproduce` call."""

    def __init__(self, out: Path, budget: str, seed: int = 0, resume: bool = True,
                 progress: Callable[[str, int, int], None] | None = None, executor: str = "local", **overrides):
        if budget not in BUDGETS:
            raise ValueError(f"unknown budget {budget!r}; expected one of {', '.join(BUDGETS)}")
        if executor not in EXECUTORS:
            raise ValueError(f"unknown executor {executor!r}; expected one of {', '.join(EXECUTORS)}")
        self.out, self.budget, self.seed, self.resume = Path(out), budget, seed, resume
        self.executor = executor
        self.progress = progress or (lambda *a: None)
        self.overrides = overrides
        self.metrics: dict[tuple[str, int, str], dict] = {}  # per cell, over its runs (combine_runs)
        self.runs: dict[tuple[str, int, str], list[tuple[TrainConfig, dict]]] = {}
        self.profile_sequences = PROFILE_SEQUENCES[budget]

    def config(self, variant: str, layers: int, noise: str) -> TrainConfig:
        """A cell's first run."""
        return budget_config(self.budget, variant, layers, noise, seed=self.seed, **self.overrides)

    def directory(self, config: TrainConfig) -> Path:
        return self.out / "runs" / run_name(config)

    def train(self, keys: set) -> None:
        """Train every cell in `keys` not yet trained, grouped by compiled program. A
        cell with no usable seed, or whose chosen seed has a heavy tail
        (`train.heavy_tailed`) on validation or on its tail set, gets a second run of
        as many new seeds (`first_seed`), chosen among with the first run's seeds on
        the same validation and tail sets (`combine_runs`)."""
        self._train([(k, self.config(*k)) for k in sorted(keys - set(self.runs))])
        tailed = sorted(k for k in keys if len(self.runs[k]) == 1 and self.tailed(k))
        self._train([(k, replace(self.config(*k), first_seed=self.config(*k).seeds)) for k in tailed],
                    " (new seeds: heavy tail)")

    def tailed(self, key) -> bool:
        m = self.metrics[key]
        d = self.config(*key).d
        return not m["usable"] or any(heavy_tailed(Evaluation(**m[s][m["seed"]]), d) for s in ("validation", "tail"))

    def _train(self, runs: list[tuple[tuple, TrainConfig]], note: str = "") -> None:
        groups = defaultdict(list)
        for key, config in runs:
            groups[config.program].append((key, config))
        jobs = [[(c, self.directory(c)) for _, c in members] for members in groups.values()]
        labels = [f"[{i + 1}/{len(jobs)}] {job[0][0].variant}-{job[0][0].layers} × {len(job)} settings{note}"
                  for i, job in enumerate(jobs)]
        results = run_groups(jobs, self.resume, self.executor,
                             lambda i, done, total: self.progress(labels[i], done, total))
        for members, metrics in zip(groups.values(), results):
            for (key, config), m in zip(members, metrics):
                self.runs.setdefault(key, []).append((config, m))
                self.metrics[key] = combine_runs([m for _, m in self.runs[key]], config.d)

    def _chosen_run(self, key) -> TrainConfig:
        """The run that holds the cell's chosen seed."""
        seed = self.metrics[key]["seed"]
        return next(c for c, _ in self.runs[key] if c.first_seed <= seed < c.first_seed + c.seeds)

    def params(self, key) -> Params:
        """The cell's chosen model."""
        return load_npz(self.directory(self._chosen_run(key)) / MODEL)

    def seeds(self, key) -> Params:
        """Every seed of the cell, leading axis in seed order."""
        return _stack([load_seeds(self.directory(c) / SEEDS) for c, _ in self.runs[key]])

    # ------------------------------------------------------------------ baselines

    def baselines(self, settings) -> dict[str, dict[str, Evaluation]]:
        """{setting: {method: adjusted loss}} for CONSTRR, ADARR, TUNEDRR, evaluated
        on the runs' evaluation stream, tuned on the separate tune stream."""
        path = self.out / f"baselines-{self.budget}.json"
        cached = json.loads(path.read_text()) if path.exists() else {}
        sequences = self.config("full", 1, "uniform:5").evaluation_sequences
        for s in settings:
            if s in cached:
                continue
            fitted = self.fitted_baselines(s)
            ev = evaluate(fitted, data_key(self.seed, s, "evaluation"), s, sequences, PAPER_N, PAPER_D)
            cached[s] = {m: ev[m].to_dict() for m in BASELINE_ROWS}
            cached[s]["tuned"] = {m: fitted[m].tuned for m in BASELINE_ROWS}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cached, indent=2, default=float))
        return {s: {m: cached[s][m]["mean"] for m in BASELINE_ROWS} for s in settings}

    def fitted_baselines(self, setting: str):
        """CONSTRR, ADARR, TUNEDRR tuned on `setting`'s tune stream."""
        sequences = self.config("full", 1, "uniform:5").evaluation_sequences
        tune = stack_chunks(task_chunks(data_key(self.seed, setting, "tune"), setting, sequences, PAPER_N, PAPER_D))
        return fit(BASELINE_ROWS, tune)

    # ------------------------------------------------------------------ profiles

    def sigma_grid(self, sigma_max: float) -> np.ndarray:
        return np.linspace(0.0, sigma_max + 1.0, 9 if self.budget == "smoke" else 17)

    def layer_profiles(self, params: Params, sigmas) -> np.ndarray:
        """(K, len(sigmas), L+1) adjusted loss after each layer, for K stacked models,
        at each fixed σ (means over profile_sequences fresh sequences)."""
        out = []
        for i, s in enumerate(sigmas):
            t = sample_tasks(jax.random.fold_in(data_key(self.seed, "fixed:0", "evaluation"), i), Fixed(float(s)),
                             self.profile_sequences, PAPER_N, PAPER_D)
            out.append(np.asarray(_layer_losses(params, t)))
        return np.stack(out, axis=1)

    def profile(self, key, sigmas) -> np.ndarray:
        """(len(sigmas), L+1) layer profiles of one run's exported model."""
        return self.layer_profiles(jax.tree.map(lambda a: a[None], self.params(key)), sigmas)[0]

    def baseline_profiles(self, setting: str, sigmas) -> dict[str, np.ndarray]:
        """Adjusted loss vs σ of the baselines tuned on `setting`, and the oracle's loss."""
        fitted = self.fitted_baselines(setting)
        rows = defaultdict(list)
        for i, s in enumerate(sigmas):
            ev = evaluate(fitted, jax.random.fold_in(data_key(self.seed, "fixed:0", "evaluation"), i),
                          Fixed(float(s)), self.profile_sequences, PAPER_N, PAPER_D)
            for m, e in ev.items():
                rows[m].append(e.mean)
        return {m: np.array(v) for m, v in rows.items()}


@jax.jit
def _layer_losses(params: Params, tasks) -> Array:
    """(K, L+1) mean adjusted loss of <w^l, x> for l = 0..L, K stacked models."""

    def one(p):
        w = _implicit(p, tasks.x, tasks.y).w  # (L+1, B, d)
        return jnp.mean(sequence_loss(w, tasks.w) - oracle_loss(tasks), axis=-1)

    return jax.vmap(one)(params)


# ---------------------------------------------------------------------- table 1


def table1_rows(rep: Reproduction) -> list[dict]:
    rep.train(needed("table1"))
    base = rep.baselines(paper_settings())
    # GD++ is linear in the context's y, so no GD++ model beats ridge at E[σ²] (theory.linear_bound).
    bounds = {s: linear_bound(s, PAPER_N, PAPER_D, seed=rep.seed)[0] for s in paper_settings()}
    rows = []
    for m in MODELS:
        for L in DEPTHS:
            for s in paper_settings():
                metrics = rep.metrics[(m, L, s)]
                ev = metrics["evaluation"]
                row = _row(m, L, s, metrics["adjusted_loss"], paper_value(m, s, L), metrics.get("usable", True),
                           ev["worst"], len(metrics["validation"]), metrics["tail"][metrics["seed"]]["worst"],
                           rep.config(m, L, s).tail_sequences)
                if m == "gdpp":
                    # our evaluation's standard error stands in for the paper's (same size at laptop)
                    row["below_bound"] = below_bound(row["paper"], bounds[s], ev["sem"])
                    row["bound"] = bounds[s]
                rows.append(row)
    for m in BASELINE_ROWS:
        for s in paper_settings():
            rows.append(_row(m, None, s, base[s][m], paper_value(m, s)))
    return rows


def verdict(ours: float, paper: float, tail_worst: float | None = None, tail_pool: int | None = None) -> str:
    """A Table 1 cell: "within", "miss", or "tail" (within tolerance, but one sequence of
    the tail set alone moves a mean over the tail pool's sequences, by at least
    tail_worst / pool, out of it)."""
    if not tolerance_ok(ours, paper):
        return "miss"
    tail = tail_worst is not None and not tolerance_ok(ours + tail_worst / tail_pool, paper)
    return "tail" if tail else "within"


def _row(model, layers, setting, ours, paper, usable=True, worst=None, seeds=None, tail_worst=None,
         tail_pool=None) -> dict:
    v = verdict(ours, paper, tail_worst, tail_pool)
    return {"model": LABEL[model], "layers": "" if layers is None else layers, "setting": setting,
            "ours": ours, "paper": paper, "difference": ours - paper,
            "within": v == "within", "tail_miss": v == "tail",
            "usable": usable, "worst": "" if worst is None else worst, "seeds": "" if seeds is None else seeds,
            "tail_worst": "" if tail_worst is None else tail_worst, "tail_pool": "" if tail_pool is None else tail_pool,
            "bound": "", "below_bound": False}


def write_table1(rows: list[dict], out: Path, budget: str) -> None:
    with open(out / "table1.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    misses = [r for r in rows if not r["within"]]
    lines = [f"# Table 1 (budget {budget}): adjusted evaluation loss, ours vs the paper", "",
             "Tolerance: ours ≤ paper × 1.05, or ≤ paper + 0.002 where the paper's value is below 0.04. "
             f"{len(rows) - len(misses)} of {len(rows)} cells are within it; the others are marked ✗, "
             f"{sum(r['below_bound'] for r in misses)} of them GD++ cells marked *paper below bound* and "
             f"{sum(r['tail_miss'] for r in misses)} marked *tail*. "
             "*worst*: the largest adjusted loss of one evaluation sequence; where it is in the thousands, "
             "the mean rests on a few sequences (a heavy tail). *worst of N*: the largest on the model's tail set, "
             "the sequences most likely to blow a model up among N fresh ones (`tasks.tail_tasks`). "
             "*tail*: within tolerance on the evaluation, but that one sequence alone would move a mean over "
             "those N sequences out of it (ours + worst/N is not within). *seeds*: the model is the best of these on "
             "validation (more than the budget's where the first had a heavy tail on validation or its tail set). "
             "*paper below bound*: GD++ is linear in the context's y, so in expectation no GD++ model beats "
             "ridge with penalty E[σ²] (`lticl theory gdpp_bound`); the paper's number is below that bound "
             "by more than 3 standard errors of the evaluation plus its rounding.", "",
             f"| model | L | setting | ours | paper | difference | | worst | worst of {_pool(rows)} | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        worst, tail = ("–" if r[k] == "" else f"{r[k]:.3g}" for k in ("worst", "tail_worst"))
        mark = "✓" if r["within"] else "✗"
        mark += "" if r["usable"] else " (no usable seed)"
        mark += " (tail)" if r["tail_miss"] else ""
        mark += f" (paper below bound {_fmt(r['bound'])})" if r["below_bound"] else ""
        lines.append(f"| {r['model']} | {r['layers']} | {r['setting']} | {_fmt(r['ours'])} | {_fmt(r['paper'])} "
                     f"| {r['difference']:+.3g} | {mark} | {worst} | {tail} | {r['seeds'] or '–'} |")
    (out / "table1.md").write_text("\n".join(lines) + "\n")


def _pool(rows) -> str:
    pools = {r["tail_pool"] for r in rows} - {""}
    return f"{pools.pop():,}" if len(pools) == 1 else "N"


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e-2 else f"{v:.3f}"


# ---------------------------------------------------------------------- figures


COLORS = {"gdpp": "tab:green", "diag": "tab:blue", "full": "tab:red", "constrr": "0.5", "adarr": "tab:orange",
          "tunedrr": "tab:purple", "oracle": "k"}


def fig1(rep: Reproduction):
    """Adjusted loss vs number of layers for each noise setting: ours (solid), the
    paper's (dotted), and the baselines (horizontal lines)."""
    plt = pyplot()
    rep.train(needed("fig1"))
    base = rep.baselines(paper_settings())
    fig, axes = plt.subplots(2, 5, figsize=(17, 6.5), sharex=True)
    for ax, s in zip(axes.flat, paper_settings()):
        for m in MODELS:
            ours = [rep.metrics[(m, L, s)]["adjusted_loss"] for L in DEPTHS]
            ax.plot(DEPTHS, ours, "o-", color=COLORS[m], label=f"{LABEL[m]} (ours)", ms=3)
            ax.plot(DEPTHS, [paper_value(m, s, L) for L in DEPTHS], ":", color=COLORS[m], label=f"{LABEL[m]} (paper)")
        for b in BASELINE_ROWS:
            if base[s][b] > 0:
                ax.axhline(base[s][b], color=COLORS[b], lw=1, ls="--", label=LABEL[b])
        ax.set_yscale("log")
        ax.set_ylim(top=5)  # a broken cell (non-finite or huge) leaves the panel, it does not squash it
        ax.set_title(s)
        ax.set_xlabel("layers")
    axes[0, 0].set_ylabel("adjusted loss")
    axes[1, 0].set_ylabel("adjusted loss")
    axes[0, -1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Figure 1: adjusted loss vs depth (budget {rep.budget})")
    return save(fig, rep.out, "fig1")


def _profile_figure(rep: Reproduction, settings: list[str], sweep_setting: str, name: str, title: str):
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), layout="constrained")
    cmap = plt.get_cmap("viridis")
    top = max(as_noise(s).sigma_max for s in settings)
    sigmas = rep.sigma_grid(top)
    for row, m in enumerate(("diag", "full")):
        ax = axes[row, 0]
        for i, s in enumerate(settings):
            prof = rep.profile((m, 7, s), sigmas)[:, -1]
            ax.plot(sigmas, prof, color=cmap(i / max(1, len(settings) - 1)), label=f"trained on {s}")
            ax.axvline(as_noise(s).sigma_max, color=cmap(i / max(1, len(settings) - 1)), lw=0.5, ls=":")
        ax.set_title(f"{LABEL[m]}, 7 layers, by training noise")
        ax = axes[row, 1]
        sweep_sigmas = rep.sigma_grid(as_noise(sweep_setting).sigma_max)
        for L in range(2, 8):
            prof = rep.profile((m, L, sweep_setting), sweep_sigmas)[:, -1]
            ax.plot(sweep_sigmas, prof, color=cmap((L - 2) / 5), label=f"L = {L}")
        base = rep.baseline_profiles(sweep_setting, sweep_sigmas)
        ax.plot(sweep_sigmas, base["adarr"], "--", color=COLORS["adarr"], label="ADARR")
        ax.plot(sweep_sigmas, base["tunedrr"], "--", color=COLORS["tunedrr"], label="TUNEDRR")
        ax.set_title(f"{LABEL[m]} trained on {sweep_setting}, by depth")
        for ax in axes[row]:
            ax.set_yscale("log")
            ax.set_ylim(1e-4, 10)  # σ = 0 baselines sit at ~1e-12; blow-ups leave the panel
            ax.set_xlabel("σ of the evaluation sequences")
            ax.set_ylabel("adjusted loss")
            ax.legend(fontsize=7)
    fig.suptitle(f"{title} (budget {rep.budget})")
    return save(fig, rep.out, name)


def fig2(rep: Reproduction):
    rep.train(needed("fig2"))
    return _profile_figure(rep, uniform_settings(), "uniform:5", "fig2",
                           "Figure 2: per-variance profiles, uniform noise")


def fig3(rep: Reproduction):
    rep.train(needed("fig3"))
    return _profile_figure(rep, categorical_settings(), "categorical:1,3,5", "fig3",
                           "Figure 3: per-variance profiles, categorical noise")


def fig4(rep: Reproduction):
    """Heat maps of the learned Q^l and P^l of a 4-layer FULL model trained on {1,3}."""
    key = ("full", 4, "categorical:1,3")
    rep.train({key})
    fig = heatmap_figure(rep.params(key), f"Figure 4: FULL, 4 layers, trained on categorical {{1,3}} (budget {rep.budget})")
    return save(fig, rep.out, "fig4")


def fig5(rep: Reproduction):
    """Per-layer profile of 7-layer models trained on U(0,5): mean and spread over seeds."""
    plt = pyplot()
    rep.train(needed("fig5"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    layers = np.arange(0, 8)
    for m in MODELS:
        seeds = rep.seeds((m, 7, "uniform:5"))
        prof = _layer_losses(seeds, stack_chunks(task_chunks(data_key(rep.seed, "uniform:5", "evaluation"), "uniform:5",
                                                       rep.profile_sequences, PAPER_N, PAPER_D)))
        prof = np.asarray(prof)
        mean, lo, hi = prof.mean(0), prof.min(0), prof.max(0)
        ax.plot(layers, mean, "o-", color=COLORS[m], label=f"{LABEL[m]} ({prof.shape[0]} seed{'s' if prof.shape[0] > 1 else ''})")
        ax.fill_between(layers, lo, hi, color=COLORS[m], alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("layer l (prediction <w^l, x>)")
    ax.set_ylabel("adjusted loss")
    ax.legend()
    ax.set_title(f"Figure 5: per-layer profile, 7-layer models on U(0, 5) (budget {rep.budget})")
    return save(fig, rep.out, "fig5")


def fig6(rep: Reproduction):
    """Unadjusted loss vs σ of the 7-layer models trained on U(0,5) and the baselines."""
    plt = pyplot()
    rep.train(needed("fig6"))
    sigmas = rep.sigma_grid(5.0)
    base = rep.baseline_profiles("uniform:5", sigmas)
    oracle = base["oracle_loss"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in MODELS:
        prof = rep.profile((m, 7, "uniform:5"), sigmas)[:, -1]
        ax.plot(sigmas, prof + oracle, color=COLORS[m], label=f"{LABEL[m]}-7")
    for b in BASELINE_ROWS:
        ax.plot(sigmas, base[b] + oracle, "--", color=COLORS[b], label=LABEL[b])
    ax.plot(sigmas, oracle, "k:", label="ORACLE")
    ax.axvline(5.0, color="0.7", lw=0.5)
    ax.set_ylim(0, 1.5 * np.nanmax(base["tunedrr"] + oracle))
    ax.set_xlabel("σ of the evaluation sequences")
    ax.set_ylabel("loss (unadjusted)")
    ax.legend(fontsize=8)
    ax.set_title(f"Figure 6: loss vs σ, trained on U(0, 5) (budget {rep.budget})")
    return save(fig, rep.out, "fig6")


def fig7(rep: Reproduction):
    """Per-layer per-variance profiles of the 7-layer models trained on U(0,5)."""
    plt = pyplot()
    rep.train(needed("fig7"))
    sigmas = rep.sigma_grid(5.0)
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), sharey=True)
    for ax, m in zip(axes, MODELS):
        prof = rep.profile((m, 7, "uniform:5"), sigmas)
        for l in range(1, 8):
            ax.plot(sigmas, prof[:, l], color=cmap((l - 1) / 6), label=f"layer {l}")
        ax.set_yscale("log")
        ax.set_ylim(1e-4, 10)
        ax.set_title(f"{LABEL[m]}-7")
        ax.set_xlabel("σ of the evaluation sequences")
        ax.axvline(5.0, color="0.7", lw=0.5)
    axes[0].set_ylabel("adjusted loss")
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"Figure 7: per-layer per-variance profiles, U(0, 5) (budget {rep.budget})")
    return save(fig, rep.out, "fig7")


FIGURE_FUNCTIONS = {"fig1": fig1, "fig2": fig2, "fig3": fig3, "fig4": fig4, "fig5": fig5, "fig6": fig6, "fig7": fig7}


def reproduce(target: str, rep: Reproduction) -> list[Path]:
    """Write a target's files into rep.out and return their paths."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    rep.out.mkdir(parents=True, exist_ok=True)
    (rep.out / "reproduce.json").write_text(json.dumps(
        {"target": target, "budget": rep.budget, "seed": rep.seed, "overrides": rep.overrides,
         "config": rep.config("full", 7, "uniform:5").to_dict(), "environment": environment()}, indent=2))
    written = []
    if target in ("table1", "all"):
        write_table1(table1_rows(rep), rep.out, rep.budget)
        written += [rep.out / "table1.csv", rep.out / "table1.md"]
    for name in FIGURES if target == "all" else [target] if target in FIGURE_FUNCTIONS else []:
        written += FIGURE_FUNCTIONS[name](rep)
    return written
