"""The `lticl` command: a thin layer over the library's public functions.

Choices (variants, budgets, targets, theorems, executors) come from the modules
that define them; the commands parse, call, and print. `training` holds
baselines, train, reproduce and sweep; `inspecting` holds inspect, compare, theory
and curves.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ..experiments import BUDGETS, TARGET_NAMES
from ..params import VARIANTS
from ..runs import EXECUTORS

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
    from ..devices import use_compilation_cache, use_cpu_cores

    use_cpu_cores()  # models trained side by side then run on every core
    use_compilation_cache()


def choices(name: str, values) -> type[Enum]:
    return Enum(name, {v: v for v in values}, type=str)


Variant = choices("Variant", VARIANTS)
Budget = choices("Budget", BUDGETS)
Target = choices("Target", TARGET_NAMES)
Executor = choices("Executor", EXECUTORS)


class Format(str, Enum):
    table = "table"
    json = "json"


FormatOption = Annotated[Format, typer.Option("--format", help="table for people, json for machines.")]
BudgetOption = Annotated[Budget, typer.Option(
    help="smoke (CI, minutes), laptop (the measured recipe, 2 CPU cores), gpu (one GPU; one group measured), paper (the paper's).")]
N_OPTION = Annotated[int, typer.Option("--n", min=1, help="Context points per sequence.")]
D_OPTION = Annotated[int, typer.Option("--d", min=1, help="Input dimension.")]


def fail(message: str) -> None:
    """One line on stderr, exit code 2."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def writable(out: Path | None) -> None:
    """Fail now, before any work, if results could not be written to `out`."""
    from ..io import writable_directory

    if out is not None:
        try:
            writable_directory(out)
        except ValueError as e:
            fail(str(e))


def stdout() -> Console:
    """Stdout console; when piped, wide enough that tables are not cut to 80 columns."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def progress_bar(out: Path | None = None, loss: bool = True):
    """Bars in a terminal, plain lines otherwise, and OUT/log.jsonl (cli.progress)."""
    from .progress import Tracker

    return Tracker(err, out, loss)


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
        where = getattr(ctx, "command_path", "lticl")
        print(f"error: {e.format_message()} (see '{where} --help')", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


# The commands register on app, in the order `lticl --help` lists them.
from . import training  # noqa: E402,F401
from . import inspecting  # noqa: E402,F401
