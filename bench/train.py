"""Training throughput of the engine, fast path against the reference path, in one run.

For each variant (FULL, DIAG, GD++), depth (1, 3, 7) and batch (512, 2048):
`--models` models (default: one per local device, as train_group spreads them: one
per CPU core; on a GPU, a group's models share the one device) take `--steps` steps
on uniform:5 by

- reference: the gradient by autodiff through model.weights (the engine before lticl.kernel),
- fast:      the hand-derived gradient of lticl.kernel, batch-last,

each timed after a warm-up call. Reported: model-sequences per second (models ×
steps × batch / wall), the ratio fast / reference, and achieved GFLOP/s, both
paths counted with XLA's flop count of one reference step (the same useful work),
against a float32 2048² matmul measured in the same run.

    python bench/train.py [--steps 10] [--variants full,diag,gdpp] [--layers 1,3,7] [--batches 512,2048]
                          [--models K]
"""

import argparse
import time

import jax
import jax.numpy as jnp

from lticl.config import TrainConfig
from lticl.devices import describe, spread, use_cpu_cores
from lticl.engine import init_state, run_steps


def timed(fn, repeats=2):
    jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn())
    return (time.perf_counter() - start) / repeats


def matmul_peak(size=2048, repeats=10):
    """GFLOP/s of a float32 (size × size) matmul on this machine, now."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    return 2 * size**3 / timed(lambda: f(a), repeats) / 1e9


def step_flops(config, state):
    """XLA's flop count of one reference step of one model (a scan of length 1)."""
    one = jax.tree.map(lambda a: a[:1], state)
    compiled = jax.jit(lambda s: run_steps(config, s, 1, True)[1]).lower(one).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--variants", default="full,diag,gdpp")
    ap.add_argument("--layers", default="1,3,7")
    ap.add_argument("--batches", default="512,2048")
    ap.add_argument("--models", type=int, default=0, help="models per compiled call (0: one per local device)")
    args = ap.parse_args()
    cores = use_cpu_cores()
    models = args.models or cores
    peak = matmul_peak()
    print(f"JAX {jax.__version__} on {describe()}, {models} models per call, "
          f"{args.steps} steps per measurement; float32 matmul (2048²): {peak:.0f} GFLOP/s\n")
    print("| model | batch | reference seq/s | fast seq/s | fast / reference | reference GFLOP/s | fast GFLOP/s "
          "| fast % of matmul |")
    print("|---|---|---|---|---|---|---|---|")
    for variant in args.variants.split(","):
        for layers in map(int, args.layers.split(",")):
            for batch in map(int, args.batches.split(",")):
                config = TrainConfig(variant, layers, "uniform:5", batch=batch, seeds=models, steps=10_000)
                state = spread(init_state(config), models)
                work = models * args.steps * batch
                rate = {r: work / timed(lambda: run_steps(config, state, args.steps, r)[1]) for r in (True, False)}
                flops = step_flops(config, state) / batch  # per sequence
                ref, fast = rate[True], rate[False]
                print(f"| {variant.upper()}-{layers} | {batch} | {ref:,.0f} | {fast:,.0f} | {fast / ref:.2f} | "
                      f"{ref * flops / 1e9:.1f} | {fast * flops / 1e9:.1f} | {100 * fast * flops / 1e9 / peak:.1f} |",
                      flush=True)


if __name__ == "__main__":
    main()
