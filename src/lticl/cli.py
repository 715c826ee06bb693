"""The `lticl` command: a thin layer over the library."""

from __future__ import annotations

import json
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich import box
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

app = typer.Typer(
    help="Linear transformers as versatile in-context learners (Vladymyrov et al., NeurIPS 2024).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Linear transformers as versatile in-context learners (Vladymyrov et al., NeurIPS 2024)."""
    from .train import use_cpu_cores

    use_cpu_cores()  # models trained side by side then run on every core


class Format(str, Enum):
    table = "table"
    json = "json"


FormatOption = Annotated[Format, typer.Option("--format", help="table for people, json for machines.")]
ModelArgument = Annotated[Path, typer.Argument(help="A model.npz (as written by lticl train).")]


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)  # one line, however long
    raise typer.Exit(2)


def _noise_specs(values: list[str] | None) -> list[str]:
    from .noise import parse_noise
    from .paper import paper_settings

    try:
        return [parse_noise(v).spec for v in values] if values else list(paper_settings())
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--noise") from None


def run_baselines(
    settings: list[str], methods: list[str], sequences: int, tune_sequences: int, seed: int, n: int, d: int, progress
) -> dict:
    """{setting: {"evaluation": {method: Evaluation}, "tuned": {method: {...}}}}."""
    from . import baselines
    from .metrics import evaluate
    from .tasks import data_key, stack_chunks, task_chunks

    results = {}
    task = progress.add_task("baselines", total=len(settings))
    for spec in settings:
        progress.update(task, description=f"{spec:<18}")
        tuning = stack_chunks(task_chunks(data_key(seed, spec, "tune"), spec, tune_sequences, n, d))
        fitted = baselines.fit(methods, tuning)
        evaluation = evaluate(
            fitted, data_key(seed, spec, "evaluation"), spec, sequences, n, d
        )
        results[spec] = {"evaluation": evaluation, "tuned": {m: f.tuned for m, f in fitted.items()}}
        progress.advance(task)
    return results


def _rows(results: dict, methods: list[str], paper: bool) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table, shared by the terminal and Markdown views."""
    from .paper import paper_value

    header = ["setting", "oracle loss"]
    for m in methods:
        header += [m.upper()] + (["paper"] if paper else [])
    rows = []
    for spec, r in results.items():
        ev = r["evaluation"]
        row = [spec, f"{ev['oracle_loss'].mean:.4f}"]
        for m in methods:
            row.append(f"{ev[m].mean:.4f} ± {ev[m].sem:.4f}")
            if paper:
                p = paper_value(m, spec)
                row.append("–" if p is None else f"{p:.3f}")
        rows.append(row)
    return header, rows


_TITLE = "Adjusted evaluation loss (mean ± s.e.) of each baseline; the oracle column is its unadjusted loss"


def _table(results: dict, methods: list[str], paper: bool) -> Table:
    header, rows = _rows(results, methods, paper)
    table = Table(title=_TITLE, box=box.SIMPLE_HEAD, pad_edge=False)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right", style="dim" if h == "paper" else None, no_wrap=i == 0)
    for row in rows:
        table.add_row(*row)
    return table


def _markdown(results: dict, methods: list[str], paper: bool) -> str:
    header, rows = _rows(results, methods, paper)
    lines = [f"{_TITLE}.", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


@app.command()
def baselines(
    sequences: Annotated[int, typer.Option(min=1, help="Evaluation sequences per setting.")] = 100_000,
    tune_sequences: Annotated[
        int, typer.Option(min=1, help="Tuning sequences per setting (drawn apart from evaluation).")
    ] = 20_000,  # 100k moved no cell by more than 1.1e-4, a tenth of the evaluation's s.e. (BENCHMARKS.md)
    seed: Annotated[int, typer.Option(help="Seed of every data stream.")] = 0,
    noise: Annotated[
        Optional[list[str]], typer.Option(help="Noise setting(s), e.g. uniform:5; default: the paper's ten.")
    ] = None,
    method: Annotated[
        Optional[list[str]],
        typer.Option(help="Baseline(s): constrr, adarr, tunedrr, ols, adarr_iterative; default: the first three."),
    ] = None,
    n: Annotated[int, typer.Option(min=1, help="Context points per sequence.")] = 20,
    d: Annotated[int, typer.Option(min=1, help="Input dimension.")] = 10,
    format: FormatOption = Format.table,
    out: Annotated[Optional[Path], typer.Option(help="Also write baselines.json and baselines.md here.")] = None,
) -> None:
    """Tune and evaluate the ridge baselines on the paper's noise settings, next to Table 1."""
    from . import baselines as bl
    from .paper import PAPER_D, PAPER_N
    from .provenance import environment

    settings = _noise_specs(noise)
    methods = method or ["constrr", "adarr", "tunedrr"]
    unknown = sorted(set(methods) - set(bl.BASELINES))
    if unknown:
        raise typer.BadParameter(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(bl.BASELINES)}", param_hint="--method")
    started = time.perf_counter()
    try:
        with Progress(console=err, transient=True, disable=format is Format.json) as progress:
            results = run_baselines(settings, methods, sequences, tune_sequences, seed, n, d, progress)
    except ValueError as e:
        _fail(str(e))
    seconds = time.perf_counter() - started
    summary = {
        m: {spec: r["evaluation"][m].mean for spec, r in results.items()} for m in [*methods, "oracle_loss"]
    }
    paper = (n, d) == (PAPER_N, PAPER_D)
    if format is Format.json:
        print(json.dumps(summary, indent=2))
    else:
        console = Console()
        console.print(_table(results, methods, paper))
        console.print(f"{sequences} evaluation and {tune_sequences} tuning sequences per setting, seed {seed}, "
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
        (out / "baselines.json").write_text(json.dumps(record, indent=2))
        (out / "baselines.md").write_text(_markdown(results, methods, paper))
        err.print(f"wrote {out / 'baselines.json'} and {out / 'baselines.md'}")


def _variant_enum() -> type[Enum]:
    from .model import VARIANTS  # the one list of variants

    return Enum("Variant", {v: v for v in VARIANTS}, type=str)


Variant = _variant_enum()


class Budget(str, Enum):
    smoke = "smoke"
    laptop = "laptop"
    paper = "paper"


def _progress_bar(loss: bool = True) -> Progress:
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
               *([TextColumn("loss {task.fields[loss]}")] if loss else []), TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=err)


def _best_loss(losses) -> str:
    finite = np.asarray(losses)[np.isfinite(losses)]
    return f"{finite.min():.4f}" if finite.size else "failed step"


def _train_run(config, directory: Path, resume: bool, progress: Progress) -> dict:
    """One run in `directory` with a progress bar; one-line errors on bad state."""
    from .runs import run

    task = progress.add_task(f"{config.variant}-{config.layers} {config.noise}", total=config.steps, loss="–")
    try:
        metrics = run(config, directory, resume,
                      lambda done, losses: progress.update(task, completed=done, loss=_best_loss(losses)))
    except ValueError as e:
        _fail(str(e))
    progress.update(task, completed=config.steps, visible=False)
    return metrics


@app.command()
def train(
    variant: Annotated[Variant, typer.Option(help="Parameterisation (SPEC §3).")],
    layers: Annotated[int, typer.Option(min=1, help="Number of layers L.")],
    out: Annotated[Path, typer.Option(help="Run directory: model.npz, metrics.json, config.json, checkpoint.npz.")],
    budget: Annotated[Budget, typer.Option(help="smoke (CI), laptop (the measured recipe), paper (the paper's).")] = Budget.laptop,
    heads: Annotated[int, typer.Option(min=1, help="Heads per layer.")] = 1,
    noise: Annotated[str, typer.Option(help="Training noise, e.g. uniform:5, categorical:1,3.")] = "uniform:5",
    seeds: Annotated[Optional[int], typer.Option(min=1, help="Seeds trained in parallel; the best on validation data is kept. [budget]")] = None,
    seed: Annotated[int, typer.Option(help="Base seed of initialisation and data.")] = 0,
    steps: Annotated[Optional[int], typer.Option(min=1, help="[budget]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (warmup, then cosine decay). [budget]")] = None,
    batch: Annotated[Optional[int], typer.Option(min=1, help="Sequences per step. [budget]")] = None,
    objective: Annotated[Optional[str], typer.Option(help="query_averaged (exact) or sampled_query (the paper's). [budget]")] = None,
    init: Annotated[Optional[str], typer.Option(help="gd, precondition (preconditioning layers, then the big GD step) or random. [budget]")] = None,
    n: Annotated[int, typer.Option(min=1, help="Context points per sequence.")] = 20,
    d: Annotated[int, typer.Option(min=1, help="Input dimension.")] = 10,
    sequences: Annotated[Optional[int], typer.Option(min=1, help="Evaluation sequences for the reported loss. [budget]")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the checkpoint in --out (or reuse its finished result).")] = False,
) -> None:
    """Train a linear transformer and evaluate the best seed on fresh sequences."""
    from .metrics import Evaluation
    from .train import budget_config, heavy_tailed

    try:
        config = budget_config(budget.value, variant.value, layers, noise, heads=heads, d=d, n=n, steps=steps,
                               batch=batch, lr=lr, objective=objective, init=init, seed=seed, seeds=seeds,
                               evaluation_sequences=sequences)
    except ValueError as e:
        _fail(str(e))
    with _progress_bar() as progress:
        metrics = _train_run(config, out, resume, progress)
    ev = metrics["evaluation"]
    if not metrics.get("usable", True):
        err.print(f"[bold red]warning:[/] no seed trained to a usable model (every seed failed or has non-finite "
                  f"validation losses); the numbers below are the least broken seed's. See {out}/metrics.json.")
    tail = Evaluation(**metrics["tail"][metrics["seed"]])
    if heavy_tailed(tail, config.d):
        err.print(f"[bold yellow]warning:[/] heavy tail: among {config.tail_sequences:,} fresh sequences one has "
                  f"adjusted loss {tail.worst:.3g}, so a mean over that many would not hold; more --seeds may "
                  f"find a tame one.")
    Console().print(f"adjusted loss {ev['mean']:.4f} ± {ev['sem']:.4f} (worst sequence {ev['worst']:.3g}, "
                    f"{ev['nonfinite']} non-finite; worst of {config.tail_sequences:,} {tail.worst:.3g}) "
                    f"from seed {metrics['seed']}; recoveries {metrics['recoveries']}; "
                    f"wrote {out}/model.npz, metrics.json, config.json")


class Executor(str, Enum):
    local = "local"
    ray = "ray"


class Target(str, Enum):
    table1 = "table1"
    fig1 = "fig1"
    fig2 = "fig2"
    fig3 = "fig3"
    fig4 = "fig4"
    fig5 = "fig5"
    fig6 = "fig6"
    fig7 = "fig7"
    all = "all"


@app.command()
def reproduce(
    target: Annotated[Target, typer.Argument(help="What to write: table1, fig1 … fig7, or all.")],
    out: Annotated[Path, typer.Option(help="Output directory (runs are kept in OUT/runs and reused).")],
    budget: Annotated[Budget, typer.Option(help="smoke (CI, minutes), laptop (the measured recipe), paper.")] = Budget.laptop,
    seed: Annotated[int, typer.Option(help="Base seed of every run.")] = 0,
    seeds: Annotated[Optional[int], typer.Option(min=1, help="Seeds per model. [budget]")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Training steps per model. [budget]")] = None,
    batch: Annotated[Optional[int], typer.Option(min=1, help="Sequences per training step. [budget]")] = None,
    executor: Annotated[Executor, typer.Option(
        help="local: groups one after another here; ray: each group a Ray task (needs the ray extra of lticl)."
    )] = Executor.local,
) -> None:
    """Reproduce the paper's Table 1 and Figures 1–7 next to the paper's numbers."""
    from .reproduce import Reproduction, reproduce as run_target

    started = time.perf_counter()
    with _progress_bar(loss=False) as progress:
        bars = {}

        def report(label, done, total):
            if label not in bars:
                bars[label] = progress.add_task(label, total=total)
            progress.update(bars[label], completed=done)

        try:
            rep = Reproduction(out, budget.value, seed=seed, progress=report,
                               executor=executor.value, seeds=seeds, steps=steps, batch=batch)
            written = run_target(target.value, rep)
        except ValueError as e:
            _fail(str(e))
    Console().print(f"wrote {', '.join(p.name for p in written)} to {out} in {time.perf_counter() - started:.0f} s")
    table = out / "table1.md"
    if target.value in ("table1", "all") and table.exists():
        Console().print(table.read_text().splitlines()[2])


# ---------------------------------------------------------------------- look inside


def _out() -> Console:
    """Stdout console; when piped, wide enough that tables are not cut to 80 columns."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _num(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if not np.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def _rows_table(rows: list[dict], title: str, columns: list[str] | None = None) -> Table:
    columns = columns or list(rows[0])
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for r in rows:
        table.add_row(*(_num(r.get(c)) for c in columns))
    return table


def _rows_markdown(rows: list[dict], title: str, columns: list[str] | None = None) -> str:
    columns = columns or list(rows[0])
    lines = [f"{title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(_num(r.get(c)) for c in columns) + " |" for r in rows]) + "\n"


def _label(path: Path) -> str:
    """A short name for a model file in titles: its run directory and file name."""
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _load_model(path: Path):
    from .io import load_npz

    try:
        return load_npz(path)
    except FileNotFoundError:
        _fail(f"{path}: no such model file")
    except ValueError as e:
        _fail(str(e))


@app.command()
def inspect(
    model: ModelArgument,
    noise: Annotated[str, typer.Option(help="Noise setting of the per-layer profile, e.g. uniform:5.")] = "uniform:5",
    sequences: Annotated[int, typer.Option(min=2, help="Fresh sequences for the per-layer profile.")] = 10_000,
    n: Annotated[int, typer.Option(min=1, help="Context points per sequence.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the profile's sequences.")] = 0,
    rank_tol: Annotated[float, typer.Option(min=0.0, help="FULL: remainder singular values above this × ‖M‖₂ count in its rank.")] = 0.1,
    format: FormatOption = Format.table,
    out: Annotated[Optional[Path], typer.Option(help="Also write inspect.json, heatmaps.{png,pdf} and, for DIAG/GD++, momentum.{png,pdf} here.")] = None,
) -> None:
    """ω per layer, how diagonal a FULL model is, and the adjusted loss after each layer."""
    import jax

    from .inspection import heatmap_figure, inspect_model, momentum_figure, momentum_profile
    from .plotting import save

    params = _load_model(model)
    try:
        ins = inspect_model(params, noise, sequences, n, jax.random.key(seed), rank_tol)
    except ValueError as e:
        _fail(str(e))
    record = ins.to_dict()
    if format is Format.json:
        print(json.dumps(record, indent=2))
    else:
        rows = []
        for l in range(ins.layers):
            row = {"layer": l + 1, **dict(zip(("ω_xx", "ω_xy", "ω_yx", "ω_yy"), ins.omega[l].tolist())),
                   "adjusted loss": ins.layer_adjusted_loss[l].mean}
            if ins.P is not None:
                row.update({"P diag share": float(ins.P.fraction[l]), "P rest rank": int(ins.P.rank[l]),
                            "Q diag share": float(ins.Q.fraction[l]), "Q rest rank": int(ins.Q.rank[l])})
            else:
                row["head |ω_xx ω_yy − ω_xy ω_yx|"] = float(ins.rank_one_gap[l].max())
            rows.append(row)
        what = "of the nearest DIAG model" if ins.P is not None else "summed over heads"
        _out().print(_rows_table(rows, f"{model}: {ins.variant.upper()}, {ins.layers} layers, {ins.heads} head(s); "
                                          f"ω {what}; adjusted loss of <w^l, x> on {ins.noise} ({ins.sequences} sequences)"))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "inspect.json").write_text(json.dumps(record, indent=2))
        written = save(heatmap_figure(params, f"{_label(model)}: Q^l (top) and P^l (bottom)"), out, "heatmaps")
        if params.variant != "full":
            top = float(np.ceil(_noise_max(ins.noise))) + 2
            prof = momentum_profile(params, np.linspace(0, top, 9), 2000, n, jax.random.key(seed))
            written += save(momentum_figure(prof, f"{_label(model)}: the momentum view (Lemma 4.4) against σ"), out, "momentum")
        err.print(f"wrote inspect.json, {', '.join(p.name for p in written)} to {out}")


def _noise_max(spec: str) -> float:
    from .algorithm import _max_sigma
    from .noise import parse_noise

    return _max_sigma(parse_noise(spec))


@app.command()
def compare(
    model: ModelArgument,
    noise: Annotated[str, typer.Option(help="The noise the model was trained on (tunes TUNEDRR and GD, sets the held-out σ).")] = "uniform:5",
    problems: Annotated[int, typer.Option(min=2, help="Problems per held-out set.")] = 2000,
    trained_n: Annotated[int, typer.Option(min=1, help="The n the model was trained on (for the rescaled variant).")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the held-out problems.")] = 2,
    format: FormatOption = Format.table,
    out: Annotated[Optional[Path], typer.Option(help="Also write compare.json and compare.md here.")] = None,
) -> None:
    """The model's learned algorithm as a solver, against OLS, ADARR, TUNEDRR and GD on held-out problems."""
    from .algorithm import algorithm, baseline_solvers, compare as run_compare, default_problem_sets

    params = _load_model(model)
    try:
        solvers = {"model": algorithm(params), "model, G·n₀/n": algorithm(params, trained_n),
                   **baseline_solvers(noise, params.layers, trained_n, params.d)}
        rows = run_compare(solvers, default_problem_sets(noise, params.d, problems, seed))
    except ValueError as e:
        _fail(str(e))
    title = (f"{model}: mean loss on held-out problems (synthetic: ½‖ŵ − w‖²; diabetes: ½ mean squared error on "
             f"the points left out, standardised target); n₀ = {trained_n}")
    columns = ["problems", *solvers, "model median", "oracle"]  # the median shows when a mean is a tail
    if format is Format.json:
        print(json.dumps(rows, indent=2))
    else:
        _out().print(_rows_table(rows, title, columns))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps(rows, indent=2))
        (out / "compare.md").write_text(_rows_markdown(rows, title, columns))
        err.print(f"wrote compare.json and compare.md to {out}")


class Theorem(str, Enum):
    thm42 = "thm42"
    thm51 = "thm51"
    thm52 = "thm52"
    sec53 = "sec53"
    gdpp_bound = "gdpp_bound"


_THEORY_TITLES = {
    "thm42": "Thm 4.2: |cos| between layer outputs y^l and (x_i(1)²)_i on noiseless data (bound: best any X c can do)",
    "thm51": "Thm 5.1: layers of GD++ (preconditioning, then one GD step) to relative error ε, against GD's steps",
    "thm52": "Thm 5.2: 2-layer model for σ ∈ {σ1, σ2}, x ~ N(0, I/n): mean ‖w² − w_ridge‖²/‖w_ridge‖²",
    "gdpp_bound": "GD++ is linear in y: no GD++ model beats ridge at E[σ²] (bound, adjusted loss) against the paper's best GD++",
    "sec53": "§5.3: ω_xy layer then GD layer = GD step −ω_yx(1 + ω_xy λ), λ = ρ + w_olsᵀΣw_ols; noise part −ω_yx(1 + ω_xy ρ)",
}


@app.command()
def theory(
    theorem: Annotated[Theorem, typer.Argument(help="thm42, thm51, thm52, sec53 (SPEC §8) or gdpp_bound.")],
    model: Annotated[Optional[list[Path]], typer.Option(help="thm42: model.npz file(s) to check besides the random ones.")] = None,
    format: FormatOption = Format.table,
) -> None:
    """Check one of the paper's theorems, or the GD++ bound, numerically (float64) and print the table."""
    from . import theory as th

    kwargs = {}
    if model:
        if theorem is not Theorem.thm42:
            raise typer.BadParameter("--model applies to thm42 only", param_hint="--model")
        kwargs["models"] = {**th.default_thm42_models(), **{str(p): _load_model(p) for p in model}}
    started = time.perf_counter()
    try:
        rows = getattr(th, theorem.value)(**kwargs)
    except ValueError as e:
        _fail(str(e))
    if format is Format.json:
        print(json.dumps(rows, indent=2))
    else:
        _out().print(_rows_table(rows, _THEORY_TITLES[theorem.value]))
        err.print(f"{time.perf_counter() - started:.1f} s")


def main() -> None:
    """Entry point: usage errors print as one line, not a framed panel."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as e:  # click's usage errors, which typer re-exports
        ctx = getattr(e, "ctx", None)
        if ctx is not None and not e.format_message():  # `lticl` alone: show the help
            print(ctx.get_help())
            sys.exit(0)
        where = getattr(getattr(e, "ctx", None), "command_path", "lticl")
        print(f"error: {e.format_message()} (see '{where} --help')", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
