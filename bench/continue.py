"""Continuation probe: continue chosen Table 1 cells of a finished laptop reproduction
with any TrainConfig fields, and print validation and evaluation before and after.

    python bench/continue.py OUT lr=1e-3 steps=2000 batch=2048
    python bench/continue.py OUT lr=3e-3 --cells full:7:uniform:6 diag:7:uniform:2

OUT is a directory `lticl reproduce table1 --budget laptop` finished (a hard-linked
copy, `cp -al`, keeps the original as it was). The continuations are written as runs
beside the others; the reproduction's own continuations are not made. Without
--cells, six gap cells of docs/table1-laptop.md. docs/log/2026-12-03-continuation.md
lists the runs made with it.
"""

import sys
import time
from dataclasses import replace
from pathlib import Path

from lticl.devices import use_cpu_cores
from recipe import overrides  # bench/recipe.py: FIELD=VALUE with the field's type

GAPS = [("diag", 6, "uniform:6"), ("diag", 7, "uniform:2"), ("full", 5, "categorical:1,3"),
        ("diag", 5, "uniform:7"), ("full", 7, "uniform:6"), ("full", 6, "categorical:1,3")]


def main() -> None:
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    cells = GAPS
    if "--cells" in args:
        i = args.index("--cells")
        cells = [(c.split(":", 2)[0], int(c.split(":", 2)[1]), c.split(":", 2)[2]) for c in args[i + 1:]]
        args = args[:i]
    out, fields = Path(args[0]), overrides(args[1:])
    use_cpu_cores()
    from lticl.paper import paper_value
    from lticl.reproduce import Reproduction
    from lticl.table1 import verdict

    rep = Reproduction(out, "laptop")
    rep.plan = replace(rep.plan, continuation=())  # read the cells back as they were
    rep.train(set(cells))
    started = time.perf_counter()
    rep._train([(k, rep.continued(k, **fields)) for k in cells], " (probe)")
    print(f"{fields}: {time.perf_counter() - started:.0f} s")
    for k in cells:
        (_, before), (_, after) = rep.runs[k][0], rep.runs[k][-1]
        paper = paper_value(k[0], k[2], k[1])
        print(f"{k[0]}-{k[1]} {k[2]:18s} paper {paper:<7.4g} validation {before['validation'][before['seed']]['mean']:.4g}"
              f" -> {after['validation'][after['seed']]['mean']:.4g}, evaluation {before['evaluation']['mean']:.4g} -> "
              f"{after['evaluation']['mean']:.4g} {verdict(after['evaluation']['mean'], paper)}")


if __name__ == "__main__":
    main()
