"""Recipe probe: one variant and depth on all ten Table 1 settings, trained side by
side (one `train_group` call, as `lticl reproduce` does) with the laptop budget
and any TrainConfig overrides; prints each setting against the paper's number.

    python bench/recipe.py diag 5                   # the laptop budget as is
    python bench/recipe.py diag 5 steps=4000 batch=256 lr=1e-2

docs/training.md ("What was tried on the gaps") lists the runs made with it.
"""

import sys
import time

from lticl.config import TrainConfig
from lticl.devices import use_cpu_cores
from lticl.experiments import budget_config
from lticl.train import train_group


def overrides(args: list[str]) -> dict:
    fields, out = TrainConfig.__dataclass_fields__, {}
    for a in args:
        name, _, value = a.partition("=")
        if name not in fields or not value:
            sys.exit(f"expected FIELD=VALUE with a TrainConfig field, got {a!r}")
        out[name] = type(fields[name].default)(float(value)) if fields[name].type in ("int", "float") else value
    return out


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    use_cpu_cores()
    from lticl.paper import paper_settings, paper_value
    from lticl.table1 import verdict

    variant, layers, over = sys.argv[1], int(sys.argv[2]), overrides(sys.argv[3:])
    settings = paper_settings()
    started = time.perf_counter()
    results = train_group([budget_config("laptop", variant, layers, s, **over) for s in settings], stop_on_failure=False)
    within = 0
    for r, s in zip(results, settings):
        paper = paper_value(r.config.variant, s, layers)
        v = verdict(r.evaluation.mean, paper, r.tail[r.seed].worst, r.config.tail_sequences)  # as Table 1 counts
        within += v == "within"
        print(f"{s:18s} ours {r.evaluation.mean:<10.4g} paper {paper:<9.4g} {v:6s} "
              f"worst {r.evaluation.worst:<9.3g} worst of {r.config.tail_sequences:,} {r.tail[r.seed].worst:<9.3g} "
              f"recoveries {r.recoveries.tolist()}")
    print(f"{variant}-{layers} {over}: {within}/10 within, {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
