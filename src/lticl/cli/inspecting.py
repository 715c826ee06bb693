"""`lticl inspect`, `lticl compare`, `lticl theory` and `lticl curves`: look inside a
model, use it as a solver, check the paper's theorems, draw how runs learned."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.markup import escape

from ..io import write_text
from ..paper import PAPER_N
from ..theorems import TITLES
from . import Format, FormatOption, app, choices, err, fail, stdout, writable

ModelArgument = Annotated[Path, typer.Argument(help="A model.npz (as written by lticl train).")]
Theorem = choices("Theorem", TITLES)


def _label(path: Path) -> str:
    """A short name for a model file in titles: its run directory and file name."""
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def load_model(path: Path, out: Path | None = None):
    """The model in `path`, once it and the output directory `out` are known good."""
    from ..io import load_npz

    try:
        params = load_npz(path)
    except ValueError as e:
        fail(str(e))
    writable(out)
    return params


def _write(out: Path, record, md: str | None, name: str) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{name}.json", json.dumps(record, indent=2))
    if md is None:
        return [f"{name}.json"]
    write_text(out / f"{name}.md", md)
    return [f"{name}.json", f"{name}.md"]


@app.command()
def inspect(
    model: ModelArgument,
    noise: Annotated[str, typer.Option(help="Noise setting of the per-layer profile, e.g. uniform:5.")] = "uniform:5",
    sequences: Annotated[int, typer.Option(min=2, help="Fresh sequences for the per-layer profile.")] = 10_000,
    n: Annotated[int, typer.Option("--n", min=1, help="Context points per sequence.")] = PAPER_N,
    seed: Annotated[int, typer.Option(help="Seed of the profile's sequences.")] = 0,
    rank_tol: Annotated[float, typer.Option(min=0.0, help="FULL: remainder singular values above this × ‖M‖₂ count in its rank.")] = 0.1,
    format: FormatOption = Format.table,
    out: Annotated[Optional[Path], typer.Option(help="Also write inspect.json, heatmaps.{png,pdf} and, for DIAG/GD++, momentum.{png,pdf} here.")] = None,
) -> None:
    """ω per layer, how diagonal a FULL model is, and the adjusted loss after each layer."""
    import jax

    from ..inspection import heatmap_figure, inspect_model, momentum_figure, momentum_profile
    from ..noise import as_noise
    from ..plotting import save
    from ..report import rich_table

    params = load_model(model, out)
    try:
        ins = inspect_model(params, noise, sequences, n, jax.random.key(seed), rank_tol)
    except ValueError as e:
        fail(str(e))
    record = ins.to_dict()
    if format is Format.json:
        print(json.dumps(record, indent=2))
    else:
        what = "of the nearest DIAG model" if ins.P is not None else "summed over heads"
        stdout().print(rich_table(ins.rows(), f"{model}: {ins.variant.upper()}, {ins.layers} layers, {ins.heads} head(s); "
                                              f"ω {what}; adjusted loss of <w^l, x> on {ins.noise} ({ins.sequences} sequences)"))
    if out is not None:
        written = _write(out, record, None, "inspect")
        written += [p.name for p in save(heatmap_figure(params, f"{_label(model)}: Q^l (top) and P^l (bottom)"), out, "heatmaps")]
        if params.variant != "full":
            top = float(np.ceil(as_noise(ins.noise).sigma_max)) + 2
            prof = momentum_profile(params, np.linspace(0, top, 9), 2000, n, jax.random.key(seed))
            fig = momentum_figure(prof, f"{_label(model)}: the momentum view (Lemma 4.4) against σ")
            written += [p.name for p in save(fig, out, "momentum")]
        err.print(escape(f"wrote {', '.join(written)} to {out}"))


def _model_labels(paths: list[Path]) -> list[str]:
    """Column names for models side by side: "model" for one, else each file's run
    directory (or file name), or longer names where those repeat."""
    if len(paths) == 1:
        return ["model"]
    for name in (lambda p: p.parent.name if p.name == "model.npz" and p.parent.name else p.stem, _label, str):
        labels = [name(p) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    raise typer.BadParameter("the same model file is given twice", param_hint="MODEL")


@app.command()
def compare(
    model: Annotated[list[Path], typer.Argument(help="One or more model.npz files (as written by lticl train), "
                                                     "compared side by side.")],
    noise: Annotated[str, typer.Option(help="The noise the model was trained on (tunes TUNEDRR and GD, sets the held-out σ).")] = "uniform:5",
    problems: Annotated[int, typer.Option(min=2, help="Problems per held-out set.")] = 2000,
    trained_n: Annotated[Optional[int], typer.Option(
        min=1, help=f"The n a plain model was trained on: adds its variant with G scaled by n₀/n (default for one "
                    f"plain model: {PAPER_N}), and tunes the baselines there.")] = None,
    n: Annotated[Optional[list[int]], typer.Option(
        "--n", min=1, help="Synthetic problems at these n (repeat the option) instead of the default suite.")] = None,
    sigma: Annotated[Optional[list[float]], typer.Option(
        min=0.0, help="Synthetic problems at these fixed σ (repeat), at each --n (default n: 20).")] = None,
    adjusted: Annotated[bool, typer.Option(help="Report the adjusted loss: less the oracle's on the same problem "
                                                "(synthetic problems, with --n or --sigma).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the held-out problems.")] = 2,
    format: FormatOption = Format.table,
    out: Annotated[Optional[Path], typer.Option(help="Also write compare.json and compare.md here.")] = None,
) -> None:
    """Models' learned algorithms as solvers, against OLS, ADARR, TUNEDRR and GD on held-out problems."""
    from ..algorithm import (algorithm, baseline_solvers, compare as run_compare, default_problem_sets,
                             grid_problem_sets, require_data)
    from ..report import markdown, rich_table

    models = [load_model(m, out) for m in model]
    if adjusted and not (n or sigma):
        fail("--adjusted needs --n or --sigma: the default suite holds the diabetes problems, which have no oracle")
    if len({p.d for p in models}) > 1:
        fail(f"the models have different d ({', '.join(str(p.d) for p in models)}); compare models of one d")
    d, layers = models[0].d, max(p.layers for p in models)
    n0 = trained_n or (PAPER_N if len(models) == 1 else None)
    labels, solvers = _model_labels(model), {}
    try:
        for label, params in zip(labels, models):
            solvers[label] = algorithm(params)
            if n0 is not None and not params.normalised:
                solvers[f"{label}, G·n₀/n"] = algorithm(params, n0)
        if n or sigma:
            sets = grid_problem_sets(n or [PAPER_N], sigma, noise, d, problems, seed)
        else:
            if d == 10:  # the diabetes problems need the data extra; say so before any work
                require_data()
            sets = default_problem_sets(noise, d, problems, seed)
        solvers |= baseline_solvers(noise, layers, n0 or PAPER_N, d)
        rows = run_compare(solvers, sets, adjusted)
    except ValueError as e:
        fail(str(e))
    what = ("adjusted loss (less the oracle's on each problem), synthetic: ½‖ŵ − w‖²" if adjusted else
            "loss on held-out problems (synthetic: ½‖ŵ − w‖²; diabetes: ½ mean squared error on the points left "
            "out, standardised target)")
    title = f"{', '.join(map(str, model))}: mean {what}" + (f"; n₀ = {n0}" if n0 is not None else "")
    medians = [f"{m} median" for m in labels]  # the median shows when a mean is a tail
    columns = ["problems", *solvers, *medians, "oracle"]
    if format is Format.json:
        print(json.dumps(rows, indent=2))
    else:
        stdout().print(rich_table(rows, title, columns))
    if out is not None:
        written = _write(out, rows, markdown(rows, title, columns), "compare")
        err.print(escape(f"wrote {' and '.join(written)} to {out}"))


@app.command()
def theory(
    theorem: Annotated[Theorem, typer.Argument(help="thm42, thm51, thm52, sec53 (docs/math.md §8) or gdpp_bound.")],
    model: Annotated[Optional[list[Path]], typer.Option(help="thm42: model.npz file(s) to check besides the random ones.")] = None,
    format: FormatOption = Format.table,
) -> None:
    """Check one of the paper's theorems, or the GD++ bound, numerically (float64) and print the table."""
    from .. import theorems as th
    from ..report import rich_table

    kwargs = {}
    if model:
        if theorem.value != "thm42":
            raise typer.BadParameter("--model applies to thm42 only", param_hint="--model")
        mine = {str(p): load_model(p) for p in model}  # every file checked before any work
        kwargs["models"] = {**th.default_thm42_models(), **mine}
    started = time.perf_counter()
    try:
        rows = getattr(th, theorem.value)(**kwargs)
    except ValueError as e:
        fail(str(e))
    if format is Format.json:
        print(json.dumps(rows, indent=2))
    else:
        stdout().print(rich_table(rows, TITLES[theorem.value]))
        err.print(f"{time.perf_counter() - started:.1f} s")


@app.command()
def curves(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (as lticl train, sweep or reproduce write them).")],
    out: Annotated[Path, typer.Option(help="Where to write the figure: OUT.png and OUT.pdf.")] = Path("curves"),
) -> None:
    """Draw the learning curves of runs: training loss per step, one line per seed, rollbacks marked."""
    from ..curves import curves_figure
    from ..plotting import save
    from ..report import rich_table
    from ..sweep import load_curve

    try:
        drawn = [(r.resolve().name, load_curve(r)) for r in runs]
    except ValueError as e:
        fail(str(e))
    writable(out.parent if str(out.parent) else Path("."))
    written = save(curves_figure(drawn, "training loss per step"), out.parent, out.name)
    rows = [{"run": label, "seed": int(s), "steps": c.loss.shape[1], "last loss": float(c.loss[k][np.isfinite(c.loss[k])][-1])
             if np.isfinite(c.loss[k]).any() else None, "skipped": int(c.skipped[k].sum()),
             "rollbacks": int(c.rollbacks[k, -1])} for label, c in drawn for k, s in enumerate(c.seeds)]
    stdout().print(rich_table(rows, "Learning curves"))
    err.print(escape(f"wrote {', '.join(str(p) for p in written)}"))
