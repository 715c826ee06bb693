"""Grown-start probe: train variant-L on all ten Table 1 settings (the laptop budget,
one call, as `lticl reproduce` does) from the chosen (L−1)-layer models of a finished
laptop reproduction, each grown by one layer (engine.grown), in place of the budget's
start; print each against its cell in that reproduction and the paper.

    python bench/grown.py OUT diag 7
    python bench/grown.py OUT full 3 lr=1e-3

docs/log/2026-12-03-continuation.md lists the runs made with it.
"""

import sys
import time
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np

from lticl.devices import use_cpu_cores
from recipe import overrides  # bench/recipe.py: FIELD=VALUE with the field's type


def main() -> None:
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    use_cpu_cores()
    from lticl.engine import grown, init_state
    from lticl.experiments import SETTINGS
    from lticl.paper import paper_value
    from lticl.reproduce import Reproduction
    from lticl.table1 import verdict
    from lticl.train import train_group

    out, variant, layers = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    fields = overrides(sys.argv[4:])
    rep = Reproduction(out, "laptop")
    rep.plan = replace(rep.plan, continuation=())  # read the cells back as they were
    rep.train({(variant, L, s) for s in SETTINGS for L in (layers - 1, layers)})
    configs = [replace(rep.config(variant, layers, s), **fields) for s in SETTINGS]
    chosen = lambda s: jax.tree.map(lambda a: a[None], rep.params((variant, layers - 1, s)))
    starts = [(init_state(c, grown(c, chosen(s))), np.zeros((1, 0), np.float32)) for c, s in zip(configs, SETTINGS)]
    started = time.perf_counter()
    results = train_group(configs, starts=starts, stop_on_failure=False)
    print(f"{variant}-{layers} grown from {layers - 1} layers {fields}: {time.perf_counter() - started:.0f} s")
    within = [0, 0]
    for s, r in zip(SETTINGS, results):
        m, paper = rep.metrics[(variant, layers, s)], paper_value(variant, s, layers)
        before = verdict(m["evaluation"]["mean"], paper, m["tail"][m["seed"]]["worst"], r.config.tail_sequences)
        after = verdict(r.evaluation.mean, paper, r.tail[0].worst, r.config.tail_sequences)
        within = [within[0] + (before == "within"), within[1] + (after == "within")]
        print(f"{s:18s} paper {paper:<9.4g} before {m['evaluation']['mean']:<10.4g} {before:6s} "
              f"grown {r.evaluation.mean:<10.4g} worst of {r.config.tail_sequences:,} {r.tail[0].worst:<9.3g} {after}")
    print(f"within: {within[0]} before, {within[1]} grown")


if __name__ == "__main__":
    main()
