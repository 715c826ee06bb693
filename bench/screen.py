"""Cost of a FULL seed's screen (`screen_sequences`, selection.own_worst), per depth, on
one seed of FULL's start: the seconds of its tail evaluation with the laptop budget's
screen, against those of the evaluations every run makes anyway (validation and
evaluation sets; the tail set is drawn once before and not counted).

    python bench/screen.py [SCREEN]

docs/log/2026-12-04-screen.md has the numbers.
"""

import sys
import time

import jax

from lticl.devices import use_cpu_cores
from lticl.experiments import budget_config
from lticl.inits import gd_init
from lticl.selection import evaluate_models, tail_evaluations, tail_set
from lticl.tasks import data_key


def main() -> None:
    use_cpu_cores()
    noise = "uniform:5"
    config = budget_config("laptop", "full", 1, noise)
    screen = int(sys.argv[1]) if len(sys.argv) > 1 else config.screen_sequences
    tail_set(config.seed, noise, config.tail_sequences, config.n, config.d)  # drawn once per process
    for layers in (1, 4, 7):
        models = jax.tree.map(lambda a: a[None], gd_init(jax.random.key(0), "full", layers, config.d, 1, 0.02, 1e-3))
        def timed(f):
            f()  # compiles
            start = time.perf_counter()
            f()
            return time.perf_counter() - start

        screened = timed(lambda: tail_evaluations(models, config.seed, noise, config.tail_sequences, config.n, screen))
        evaluations = timed(lambda: [evaluate_models(models, data_key(config.seed, noise, purpose), noise, count, config.n)
                                     for purpose, count in (("validation", config.validation_sequences),
                                                            ("evaluation", config.evaluation_sequences))])
        print(f"FULL-{layers}: screen of {screen:,} {screened:.2f} s; validation and evaluation sets {evaluations:.2f} s "
              f"({screened / evaluations:.2f}×)")

if __name__ == "__main__":
    main()
