"""What a model's loss on an evaluation chunk costs: `model.weights` (the reference,
batch-first) against `kernel.weights` (the engine's batch-last layout, which
validation, tail sets, screens and evaluation use), for one model of each variant
at several depths, on `tasks.CHUNK` sequences of the paper's shapes, alternately in
one process, each the best of REPEATS after a first call that compiles.

    python bench/forward.py [REPEATS]      # REPEATS: 7 unless told

Prints a Markdown table: milliseconds per chunk, the ratio, and the largest
relative difference of a per-sequence loss between the two (float32 rounding,
amplified by depth). BENCHMARKS.md (Evaluation's forward pass) has the numbers.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from lticl import kernel, model
from lticl.paper import PAPER_D, PAPER_N
from lticl.devices import use_cpu_cores
from lticl.inits import gd_init
from lticl.metrics import sequence_loss
from lticl.tasks import CHUNK, data_key, sample_tasks


def losses(weights):
    return jax.jit(lambda p, t: jax.vmap(lambda q: sequence_loss(weights(q, t.x, t.y), t.w))(p))


def best_of(fn, repeats, *args) -> float:
    fn(*args).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args).block_until_ready()
        times.append(time.perf_counter() - start)
    return min(times)


def main(repeats: int = 7) -> None:
    use_cpu_cores()
    chunk = sample_tasks(data_key(0, "uniform:5", "evaluation"), "uniform:5", CHUNK, PAPER_N, PAPER_D)
    reference, fast = losses(model.weights), losses(kernel.weights)
    print(f"JAX {jax.__version__}, {jax.devices()[0].platform}, {CHUNK:,} sequences of n = {PAPER_N}, d = {PAPER_D}\n")
    print("| model | reference ms | kernel ms | reference / kernel | largest relative difference |")
    print("|---|---|---|---|---|")
    for variant in ("full", "diag", "gdpp"):
        for layers in (1, 3, 7):
            one = gd_init(jax.random.key(layers), variant, layers, PAPER_D, step_size=1 / (PAPER_N + PAPER_D + 1),
                          scale=1e-3, dtype=jnp.float32)
            params = jax.tree.map(lambda a: a[None], one)
            a, b = np.asarray(reference(params, chunk)), np.asarray(fast(params, chunk))
            diff = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-6)))
            ref_s, fast_s = (best_of(f, repeats, params, chunk) for f in (reference, fast))
            print(f"| {variant.upper()}-{layers} | {ref_s * 1e3:.1f} | {fast_s * 1e3:.1f} | {ref_s / fast_s:.2f} "
                  f"| {diff:.1e} |")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
