"""Sweeps: many TrainConfigs trained in run directories, and a grid file of your own.

    sweep = Sweep(out)                      # runs live in OUT/runs/<name>-<hash> (see `runs`)
    sweep.train({key: config, ...})         # grouped by compiled program, resumable
    sweep.metrics[key], sweep.params(key)

`Sweep` is the one mechanism that trains a set of configs: `lticl sweep GRID.toml`
runs a `Grid` with it, and `lticl reproduce` (`reproduce.Reproduction`) is a Sweep
over the paper's grid. Configs that share a compiled program (`config.program`)
train side by side in one vmapped call; a restarted sweep reuses finished runs and
resumes unfinished ones from their checkpoints. A cell with no usable seed, or whose
chosen seed has a heavy tail, gets one second run of as many new seeds; a subclass
may then continue a cell's chosen run for more steps (`Sweep.continuations`), a cell
after the cells it may start from (`Sweep.waves`).

A grid file (TOML):

    budget = "smoke"                 # the base of every run: a named budget (default laptop)
    seed = 0                         # base seed of every run's data and initialisation
    [base]                           # TrainConfig fields for every run, over the budget's
    steps = 200
    [grid]                           # each a list of values; the sweep is their product
    variant = ["full", "diag"]
    layers = [1, 3, 7]
    noise = ["uniform:1", "uniform:5"]

Any TrainConfig field may be in [base] or [grid]; variant and layers must be in one.
"""

from __future__ import annotations

import itertools
import tomllib
from collections import defaultdict
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Hashable

from .config import TrainConfig
from .devices import device_memory, plan_calls
from .engine import concat
from .experiments import BUDGETS, LABEL, budget_config
from .io import load_npz, write_text
from .metrics import Evaluation
from .params import Params
from .rundir import MODEL, SEEDS, load_seeds, run_name
from .runs import EXECUTORS, combine_runs, require_ray, run_groups
from .selection import heavy_tailed
from .train import prefetch_draws

FIELDS = tuple(f.name for f in fields(TrainConfig))


class Sweep:
    """The runs of one output directory: trains configs keyed by any hashable key."""

    def __init__(self, out: Path, resume: bool = True, progress: Callable[[str, int, int], None] | None = None,
                 executor: str = "local"):
        if executor not in EXECUTORS:
            raise ValueError(f"unknown executor {executor!r}; expected one of {', '.join(EXECUTORS)}")
        if executor == "ray":
            require_ray()
        self.out, self.resume, self.executor = Path(out), resume, executor
        self.progress = progress or (lambda *a: None)
        self.configs: dict[Hashable, TrainConfig] = {}  # each key's first run
        self.metrics: dict[Hashable, dict] = {}  # per key, over its runs (runs.combine_runs)
        self.runs: dict[Hashable, list[tuple[TrainConfig, dict]]] = {}

    def directory(self, config: TrainConfig) -> Path:
        return self.out / "runs" / run_name(config)

    def train(self, configs: dict[Hashable, TrainConfig]) -> None:
        """Train every config not yet trained, grouped by compiled program. A key with
        no usable seed, or whose chosen seed has a heavy tail
        (`selection.heavy_tailed`) on validation or on its tail set, gets a second run
        of as many new seeds (`first_seed`), chosen among with the first run's seeds
        on the same validation and tail sets (`runs.combine_runs`)."""
        self.configs.update(configs)
        self._train([(k, c) for k, c in configs.items() if k not in self.runs])
        self.prefetch([k for k in configs if not self.continued_yet(k)])
        tailed = [k for k in configs if len(self.runs[k]) == 1 and self.tailed(k)]
        self._train([(k, self.retry(k)) for k in tailed], " (new seeds: heavy tail)")
        for wave in self.waves(list(configs)):  # a key decides once the keys it may start from are final
            self._train([(k, c) for k in wave if not self.continued_yet(k) for c in self.continuations(k)],
                        " (continued)")

    def continued_yet(self, key) -> bool:
        """Whether a run continuing the key has trained (a restarted sweep's)."""
        return any(c.continues for c, _ in self.runs[key])

    def tailed(self, key) -> bool:
        m, d = self.metrics[key], self.configs[key].d
        return not m["usable"] or any(heavy_tailed(Evaluation(**m[s][m["seed"]]), d) for s in ("validation", "tail"))

    def retry(self, key) -> TrainConfig:
        """The second run of a key whose chosen seed has a heavy tail: as many new
        seeds, numbered after the first run's (a Reproduction adds its budget's `retry`
        fields)."""
        config = self.configs[key]
        return replace(config, first_seed=config.seeds)

    def continuations(self, key) -> list[TrainConfig]:
        """The runs that continue a key's chosen model for more steps: a plain sweep
        has no target to miss, so it continues nothing (a Reproduction does)."""
        return []

    def prefetch(self, keys: list) -> None:
        """Start drawing, on the drawing thread, the tail sets and polish samples that
        the keys' continuations would read if the keys were decided now (`train.prefetch_draws`).
        A key whose chosen model may still change (a new seed) can end up not needing
        them; a sample drawn for nothing costs only the drawing thread's time, and one
        that is needed is ready when its continuation ends. Only where the runs train
        in this process (executor "local")."""
        if self.executor == "local":
            prefetch_draws([c for key in keys for c in self.foreseen(key)])

    def foreseen(self, key) -> list[TrainConfig]:
        """Configs that draw what the key's continuations would draw if it decided now
        (`prefetch`): here, its continuations themselves (a Reproduction says which
        configs without choosing their starts, which takes evaluations)."""
        return self.continuations(key)

    def candidates(self, key) -> list:
        """The other keys whose chosen models a key's continuations may start from
        (a plain sweep: none)."""
        return []

    def waves(self, keys: list) -> list[list]:
        """The keys in the order their continuations are decided: each in the wave after
        the last of its candidates among them, so that it chooses its start among their
        final models, continued where they were (a key without candidates: the first
        wave). Keys keep their order within a wave."""
        among, level = set(keys), {}

        def wave(k):
            if k not in level:
                level[k] = 1 + max((wave(c) for c in self.candidates(k) if c in among), default=-1)
            return level[k]

        waves = defaultdict(list)
        for k in keys:
            waves[wave(k)].append(k)
        return [waves[i] for i in sorted(waves)]

    def continued(self, key, parent=None, after: int = 0, **fields) -> TrainConfig:
        """A run of the key's chosen run's config, with `fields` over it, that starts
        from the final seeds of the chosen run of `parent` (default: the key itself;
        a key whose models are one layer shallower: grown by a layer, engine.grown;
        DIAG's key for a FULL one: params.as_full), its seeds numbered after every
        seed the key has and `after` more (the seeds of its other continuations)."""
        start = self.chosen_run(key if parent is None else parent)
        return replace(self.chosen_run(key), continues=run_name(start), seeds=start.seeds,
                       first_seed=len(self.metrics[key]["validation"]) + after, **fields)

    def _train(self, runs: list[tuple[Hashable, TrainConfig]], note: str = "") -> None:
        programs = defaultdict(list)
        for key, config in runs:
            programs[config.program].append((key, config))
        memory = device_memory()
        groups = [[members[i] for i in call] for members in programs.values()
                  for call in plan_calls([c for _, c in members], memory)]
        jobs = [[(c, self.directory(c)) for _, c in members] for members in groups]
        labels = [f"[{i + 1}/{len(jobs)}] {job[0][0].variant}-{job[0][0].layers} × {len(job)} "
                  f"config{'s' if len(job) > 1 else ''}{note}" for i, job in enumerate(jobs)]
        results = run_groups(jobs, self.resume, self.executor,
                             lambda i, done, total: self.progress(labels[i], done, total))
        for members, metrics in zip(groups, results):
            for (key, config), m in zip(members, metrics):
                self.runs.setdefault(key, []).append((config, m))
                self.metrics[key] = combine_runs([m for _, m in self.runs[key]], config.d, config.tail_sequences)

    def chosen_run(self, key) -> TrainConfig:
        """The run that holds the key's chosen seed."""
        seed = self.metrics[key]["seed"]
        return next(c for c, _ in self.runs[key] if c.first_seed <= seed < c.first_seed + c.seeds)

    def params(self, key) -> Params:
        """The key's chosen model."""
        return load_npz(self.directory(self.chosen_run(key)) / MODEL)

    def seeds(self, key) -> Params:
        """Every seed of the key, leading axis in seed order."""
        return concat([load_seeds(self.directory(c) / SEEDS) for c, _ in self.runs[key]])


# ---------------------------------------------------------------------- results


def result_row(sweep: Sweep, key, point: dict) -> dict:
    """One key's row of a results table: `point` (its config fields), then its numbers."""
    m = sweep.metrics[key]
    ev = m["evaluation"]
    return {**point, "adjusted_loss": ev["mean"], "sem": ev["sem"], "worst": ev["worst"],
            "tail_worst": m["tail"][m["seed"]]["worst"], "oracle_loss": m["oracle_loss"], "seed": m["seed"],
            "seeds": len(m["validation"]), "recoveries": sum(m["recoveries"]), "usable": m["usable"],
            "seconds": sum(mm["seconds"] for _, mm in sweep.runs[key])}


def write_results(rows: list[dict], out: Path, title: str) -> list[Path]:
    """OUT/results.csv (full precision) and OUT/results.md (for people)."""
    from .report import markdown, write_csv

    out.mkdir(parents=True, exist_ok=True)
    return [write_csv(out / "results.csv", rows), write_text(out / "results.md", markdown(rows, title))]


# ---------------------------------------------------------------------- grid files


@dataclass(frozen=True)
class Grid:
    """A sweep of your own: a budget as the base, fields for every run, and axes
    whose product is the sweep (in the order the file gives them)."""

    budget: str = "laptop"
    seed: int = 0
    base: tuple = ()  # ((field, value), ...)
    axes: tuple = ()  # ((field, (values, ...)), ...)

    def points(self) -> list[dict]:
        """Every combination of the axes' values, the last axis fastest."""
        names = [a for a, _ in self.axes]
        return [dict(zip(names, values)) for values in itertools.product(*(v for _, v in self.axes))]

    def config(self, point: dict) -> TrainConfig:
        fields_ = {**dict(self.base), **point}
        variant, layers = fields_.pop("variant"), fields_.pop("layers")
        return budget_config(self.budget, variant, layers, seed=self.seed, **fields_)

    def configs(self) -> dict[tuple, TrainConfig]:
        """{key: config}: the key is the point's values in axis order."""
        return {tuple(p.values()): self.config(p) for p in self.points()}


def parse_grid(data: dict) -> Grid:
    """A Grid from a grid file's parsed TOML; a ValueError names what is wrong."""
    unknown = set(data) - {"budget", "seed", "base", "grid"}
    if unknown:
        raise ValueError(f"unknown top-level key(s) {', '.join(sorted(unknown))}; expected budget, seed, [base], [grid]")
    budget = data.get("budget", "laptop")
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; expected one of {', '.join(BUDGETS)}")
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    base, grid = data.get("base", {}), data.get("grid", {})
    for name, table in (("base", base), ("grid", grid)):
        if not isinstance(table, dict):
            raise ValueError(f"[{name}] must be a table of TrainConfig fields")
        bad = [k for k in table if k not in FIELDS or k == "seed"]
        if bad:
            raise ValueError(f"[{name}] has unknown field(s) {', '.join(bad)}; TrainConfig's fields are "
                             f"{', '.join(f for f in FIELDS if f != 'seed')} (the seed is top-level)")
    both = sorted(set(base) & set(grid))
    if both:
        raise ValueError(f"{', '.join(both)} in both [base] and [grid]; give each field once")
    for k, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"[grid] {k} must be a non-empty list of values, got {values!r}")
        if len(set(map(repr, values))) != len(values):
            raise ValueError(f"[grid] {k} repeats a value: {values!r}")
    missing = [k for k in ("variant", "layers") if k not in base and k not in grid]
    if missing:
        raise ValueError(f"{' and '.join(missing)} must be given, in [base] or [grid]")
    g = Grid(budget, seed, tuple(base.items()), tuple((k, tuple(v)) for k, v in grid.items()))
    for p in g.points():  # every config is checked before any training
        g.config(p)
    return g


def read_grid(path: Path) -> Grid:
    """A Grid from a TOML grid file (see the module's note)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"cannot read the grid file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML: {e}") from None
    try:
        return parse_grid(data)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None


# ---------------------------------------------------------------------- what a sweep writes


def load_curve(directory: Path):
    """A run's learning curve: its curve.csv, or for a run that has none yet (not
    finished, or trained before curves were written) from its checkpoint."""
    from .curves import CURVE, read_curve, run_curve

    return read_curve(directory / CURVE) if (directory / CURVE).exists() else run_curve(directory)


def curve_figures(sweep: Sweep, keys, out: Path) -> list[Path]:
    """One learning-curve figure per variant and depth, OUT/curve-<variant>-L<layers>:
    every seed of every run of those keys, labelled by the fields their configs
    differ in."""
    from .curves import curves_figure
    from .plotting import save

    groups: dict[tuple, list] = defaultdict(list)
    for key in keys:
        config = sweep.configs[key]
        groups[(config.variant, config.layers)].append(key)
    written = []
    for (variant, layers), members in groups.items():
        configs = [sweep.configs[k] for k in members]
        differ = [f for f in FIELDS if f not in ("seeds", "first_seed")
                  and len({getattr(c, f) for c in configs}) > 1]
        label = lambda k: ", ".join(f"{f}={getattr(sweep.configs[k], f)}" for f in differ) or f"{variant}-{layers}"
        runs = [(label(k) + _note(c, sweep.configs[k]), load_curve(sweep.directory(c)))
                for k in members for c, _ in sweep.runs[k]]
        fig = curves_figure(runs, f"{LABEL[variant]}-{layers}: training loss per step")
        written += save(fig, out, f"curve-{variant}-L{layers}")
    return written


def _note(config: TrainConfig, first: TrainConfig) -> str:
    """What a learning curve's label says of a run beside its key's first run: stratified
    where that one is not (a retry), and a continuation's steps start again at 0."""
    note = " (stratified)" if config.stratum_fraction and not first.stratum_fraction else ""
    if not config.continues:
        return note
    variant, layers = config.continues.split("-")[:2]
    if variant != config.variant:
        return note + f" (from {variant.upper()})"
    if layers == f"L{config.layers}":
        return note + " (continued)"
    return note + f" (grown{' below the last layer' if config.grow_below else ''} from {config.layers - 1} layers)"


def run_grid(grid: Grid, sweep: Sweep) -> list[Path]:
    """Train a grid's configs in `sweep` and write its results table (results.csv,
    results.md), a figure against each axis, and the learning curves (curves/)."""
    from .figures import sweep_figures
    from .provenance import environment
    from .rundir import write_json

    configs = grid.configs()
    sweep.out.mkdir(parents=True, exist_ok=True)
    write_json(sweep.out / "sweep.json", {"budget": grid.budget, "seed": grid.seed, "base": dict(grid.base),
                                         "grid": {a: list(v) for a, v in grid.axes}, "environment": environment()})
    sweep.train(configs)
    rows = [result_row(sweep, key, point) for key, point in zip(configs, grid.points())]
    title = f"Sweep at budget {grid.budget}"
    written = write_results(rows, sweep.out, f"{title}: adjusted loss on fresh sequences, per config")
    written += sweep_figures(rows, [a for a, _ in grid.axes], sweep.out, title)
    return written + curve_figures(sweep, list(configs), sweep.out / "curves")
