"""`lticl baselines`, `lticl train`, `lticl reproduce` and `lticl sweep`."""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from ..experiments import LABEL
from ..io import write_text
from ..paper import PAPER_D, PAPER_N
from . import (D_OPTION, N_OPTION, Budget, BudgetOption, Executor, Format, FormatOption, Target, Variant, app, err,
               fail, progress_bar, stdout, writable)


# ---------------------------------------------------------------------- baselines


def _noise_specs(values: list[str] | None) -> list[str]:
    from ..noise import parse_noise
    from ..paper import paper_settings

    try:
        return [parse_noise(v).spec for v in values] if values else list(paper_settings())
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--noise") from None


def _baseline_rows(results: dict, methods: list[str], paper: bool) -> list[dict]:
    from ..paper import paper_value

    rows = []
    for spec, r in results.items():
        ev = r["evaluation"]
        row = {"setting": spec, "oracle loss": f"{ev['oracle_loss'].mean:.4f}"}
        for m in methods:
            row[LABEL[m]] = f"{ev[m].mean:.4f} ± {ev[m].sem:.4f}"
            if paper:
                row[f"{LABEL[m]} paper"] = paper_value(m, spec)
        rows.append(row)
    return rows


@app.command()
def baselines(
    sequences: Annotated[int, typer.Option(min=1, help="Evaluation sequences per setting.")] = 100_000,
    tune_sequences: Annotated[int, typer.Option(
        min=1, help="Tuning sequences per setting (drawn apart from evaluation).")] = 20_000,
    seed: Annotated[int, typer.Option(help="Seed of every data stream.")] = 0,
    noise: Annotated[Optional[list[str]], typer.Option(
        help="Noise setting(s), e.g. uniform:5; default: the paper's ten.")] = None,
    method: Annotated[Optional[list[str]], typer.Option(
        help="Baseline(s): constrr, adarr, tunedrr, ols, adarr_iterative; default: the first three.")] = None,
    n: N_OPTION = PAPER_N,
    d: D_OPTION = PAPER_D,
    format: FormatOption = Format.table,
    out: Annotated[Optional[Path], typer.Option(help="Also write baselines.json and baselines.md here.")] = None,
) -> None:
    """Tune and evaluate the ridge baselines on the paper's noise settings, next to Table 1."""
    from .. import baselines as bl
    from ..metrics import evaluate_baselines
    from ..provenance import environment
    from ..report import markdown, rich_table

    settings = _noise_specs(noise)
    methods = method or ["constrr", "adarr", "tunedrr"]
    writable(out)
    unknown = sorted(set(methods) - set(bl.BASELINES))
    if unknown:
        raise typer.BadParameter(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(bl.BASELINES)}",
                                 param_hint="--method")
    started = time.perf_counter()
    try:
        with Progress(console=err, transient=True, disable=format is Format.json) as progress:
            bar = progress.add_task("baselines", total=len(settings))
            results = evaluate_baselines(methods, settings, seed, sequences, tune_sequences, n, d,
                                         lambda s: progress.update(bar, description=f"{s:<18}", advance=1))
    except ValueError as e:
        fail(str(e))
    seconds = time.perf_counter() - started
    summary = {m: {spec: r["evaluation"][m].mean for spec, r in results.items()} for m in [*methods, "oracle_loss"]}
    title = "Adjusted evaluation loss (mean ± s.e.) of each baseline; the oracle column is its unadjusted loss"
    rows = _baseline_rows(results, methods, (n, d) == (PAPER_N, PAPER_D))
    if format is Format.json:
        print(json.dumps(summary, indent=2))
    else:
        stdout().print(rich_table(rows, title))
        stdout().print(f"{sequences} evaluation and {tune_sequences} tuning sequences per setting, seed {seed}, "
                       f"n = {n}, d = {d}; {seconds:.1f} s")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        record = {
            "config": {"sequences": sequences, "tune_sequences": tune_sequences, "seed": seed, "n": n, "d": d,
                       "settings": settings, "methods": methods},
            "environment": environment(),
            "seconds": seconds,
            "adjusted_loss": summary,
            "details": {spec: {"evaluation": {m: e.to_dict() for m, e in r["evaluation"].items()},
                               "tuned": r["tuned"]} for spec, r in results.items()},
        }
        write_text(out / "baselines.json", json.dumps(record, indent=2))
        write_text(out / "baselines.md", markdown(rows, title + "."))
        err.print(escape(f"wrote {out / 'baselines.json'} and {out / 'baselines.md'}"))


# ---------------------------------------------------------------------- train and reproduce


def announce_backend() -> None:
    """Say on stderr what JAX computes on, and warn where it fell back to the CPU."""
    from ..devices import cpu_fallback_warning, describe

    err.print(escape(f"computing on {describe()}"), highlight=False)
    warning = cpu_fallback_warning()
    if warning:
        err.print(f"[bold yellow]warning:[/] {escape(warning)}")


def _best_loss(losses) -> float | None:
    """The lowest last loss among the seeds; None where every seed's step failed."""
    finite = np.asarray(losses)[np.isfinite(losses)]
    return float(finite.min()) if finite.size else None


def _report_run(config, metrics: dict, out: Path, reused: bool) -> None:
    from ..metrics import Evaluation
    from ..selection import heavy_tailed

    ev = metrics["evaluation"]
    if not metrics.get("usable", True):
        err.print(f"[bold red]warning:[/] no seed trained to a usable model (every seed failed or has non-finite "
                  f"validation losses); the numbers below are the least broken seed's. See {escape(str(out))}/metrics.json.")
    tail = Evaluation(**metrics["tail"][metrics["seed"]])
    if heavy_tailed(tail, config.d):
        err.print(f"[bold yellow]warning:[/] heavy tail: among {config.tail_sequences:,} fresh sequences one has "
                  f"adjusted loss {tail.worst:.3g}, so a mean over that many would not hold; more --seeds may "
                  f"find a tame one.")
    Console().print(escape(f"adjusted loss {ev['mean']:.4f} ± {ev['sem']:.4f} (worst sequence {ev['worst']:.3g}, "
                           f"{ev['nonfinite']} non-finite; worst of {config.tail_sequences:,} {tail.worst:.3g}) "
                           f"from seed {metrics['seed']}; recoveries {metrics['recoveries']}; "
                           + (f"reused the finished run in {out}" if reused
                              else f"wrote {out}/model.npz, metrics.json, config.json")))


@app.command()
def train(
    variant: Annotated[Variant, typer.Option(help="Parameterisation (docs/math.md §3).")],
    layers: Annotated[int, typer.Option(min=1, help="Number of layers L.")],
    out: Annotated[Path, typer.Option(help="Run directory: model.npz, metrics.json, config.json, checkpoint.npz.")],
    budget: BudgetOption = Budget.laptop,
    heads: Annotated[int, typer.Option(min=1, help="Heads per layer.")] = 1,
    noise: Annotated[str, typer.Option(help="Training noise, e.g. uniform:5, categorical:1,3.")] = "uniform:5",
    seeds: Annotated[Optional[int], typer.Option(min=1, help="Seeds trained in parallel; the best on validation data is kept. Default: the budget's.")] = None,
    seed: Annotated[int, typer.Option(help="Base seed of initialisation and data.")] = 0,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Training steps. Default: the budget's.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (warmup, then cosine decay). Default: the budget's.")] = None,
    batch: Annotated[Optional[int], typer.Option(min=1, help="Sequences per step. Default: the budget's.")] = None,
    objective: Annotated[Optional[str], typer.Option(help="query_averaged (exact) or sampled_query (the paper's). Default: the budget's.")] = None,
    init: Annotated[Optional[str], typer.Option(help="gd, precondition (preconditioning layers, then the big GD step) or random. Default: the budget's.")] = None,
    n: Annotated[str, typer.Option("--n", help="Context points per sequence, or a range a..b to train on "
                                   "(each sequence's n drawn uniformly; evaluated at b).")] = str(PAPER_N),
    normalised: Annotated[bool, typer.Option(help="Attention normalised by the context length (G/n).")] = False,
    d: D_OPTION = PAPER_D,
    sequences: Annotated[Optional[int], typer.Option(min=1, help="Evaluation sequences for the reported loss. Default: the budget's.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the checkpoint in --out (or reuse its finished result).")] = False,
    force: Annotated[bool, typer.Option(help="Start over: remove the run files already in --out first.")] = False,
) -> None:
    """Train a linear transformer and evaluate the best seed on fresh sequences."""
    from ..experiments import budget_config
    from ..rundir import prepare
    from ..runs import run

    try:
        config = budget_config(budget.value, variant.value, layers, noise, heads=heads, d=d, n=n,
                               normalised=normalised or None, steps=steps,
                               batch=batch, lr=lr, objective=objective, init=init, seed=seed, seeds=seeds,
                               evaluation_sequences=sequences)
    except ValueError as e:
        fail(str(e))
    try:
        prepared = prepare(config, out, resume, force)  # checked (and cleared with --force) before any work
    except ValueError as e:
        fail(str(e))
    announce_backend()
    with progress_bar(out) as progress:
        task = progress.add_task(f"{config.variant}-{config.layers} {config.noise}", total=config.steps)
        try:
            metrics = run(config, out, progress=lambda done, losses: progress.update(task, completed=done,
                                                                                     loss=_best_loss(losses)),
                          prepared=prepared)
        except (ValueError, RuntimeError) as e:
            fail(str(e))
        progress.update(task, completed=config.steps, visible=False)
    _report_run(config, metrics, out, reused=prepared[0] is not None)


@app.command()
def reproduce(
    target: Annotated[Target, typer.Argument(help="What to write: table1, fig1 … fig7, or all.")],
    out: Annotated[Path, typer.Option(help="Output directory (runs are kept in OUT/runs and reused).")],
    budget: BudgetOption = Budget.laptop,
    seed: Annotated[int, typer.Option(help="Base seed of every run.")] = 0,
    seeds: Annotated[Optional[int], typer.Option(min=1, help="Seeds per model. Default: the budget's.")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Training steps per model. Default: the budget's.")] = None,
    batch: Annotated[Optional[int], typer.Option(min=1, help="Sequences per training step. Default: the budget's.")] = None,
    executor: Annotated[Executor, typer.Option(
        help="local: groups one after another here; ray: each group a Ray task (needs the ray extra of lticl)."
    )] = Executor.local,
) -> None:
    """Reproduce the paper's Table 1 and Figures 1–7 next to the paper's numbers."""
    from ..reproduce import Reproduction, reproduce as run_target

    started = time.perf_counter()
    writable(out)
    announce_backend()
    written = _run_groups(out, lambda report: run_target(target.value, Reproduction(
        out, budget.value, seed=seed, progress=report, executor=executor.value, seeds=seeds, steps=steps,
        batch=batch)))
    _wrote(written, out, started)
    table = out / "table1.md"
    if target.value in ("table1", "all") and table.exists():
        Console().print(table.read_text().splitlines()[2])


def _run_groups(out: Path, work):
    """`work(report)` under progress bars, `report(label, done, total)` per group;
    a ValueError or RuntimeError becomes a one-line error."""
    with progress_bar(out, loss=False) as progress:
        bars = {}

        def report(label, done, total):
            if label not in bars:
                bars[label] = progress.add_task(label, total=total)
            progress.update(bars[label], completed=done)

        try:
            return work(report)
        except (ValueError, RuntimeError) as e:
            fail(str(e))


def _wrote(written: list[Path], out: Path, started: float) -> None:
    """One line: the files written in OUT by name, those in its folders counted."""
    relative = [p.relative_to(out) for p in written]
    folders = Counter(str(r.parent) for r in relative if r.parent != Path("."))
    names = [str(r) for r in relative if r.parent == Path(".")] + [f"{f}/ ({k} files)" for f, k in folders.items()]
    Console().print(escape(f"wrote {', '.join(names)} to {out} in {time.perf_counter() - started:.0f} s"))


@app.command()
def sweep(
    grid: Annotated[Path, typer.Argument(help="Grid file (TOML): budget, seed, \\[base] and \\[grid] of TrainConfig "
                                              "fields (docs/sweeps.md).")],
    out: Annotated[Path, typer.Option(help="Output directory (runs are kept in OUT/runs and reused).")],
    executor: Annotated[Executor, typer.Option(
        help="local: groups one after another here; ray: each group a Ray task (needs the ray extra of lticl)."
    )] = Executor.local,
) -> None:
    """Train a grid of configs of your own; write its results table, figures and learning curves."""
    from ..report import rich_table
    from ..sweep import Sweep, read_grid, run_grid

    started = time.perf_counter()
    try:
        parsed = read_grid(grid)
    except ValueError as e:
        fail(str(e))
    writable(out)
    announce_backend()
    written = _run_groups(out, lambda report: run_grid(parsed, Sweep(out, progress=report, executor=executor.value)))
    _wrote(written, out, started)
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    shown = [{k: _value(v) for k, v in r.items() if k not in ("oracle_loss", "usable", "seconds")} for r in rows]
    stdout().print(rich_table(shown, "Adjusted loss on fresh sequences (results.csv has every column)"))


def _value(text: str):
    """A CSV cell back as the number it was, where it was one."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


