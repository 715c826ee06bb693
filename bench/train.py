"""Training throughput in model-steps per second (FULL-7 and DIAG-7, batch 2048,
uniform:5), all measured in one run so that only ratios are compared:

- tokens:   the literal attention (token form) inside the loss, a Python loop of jitted steps
- implicit: w^L through the implicit-state recursion (M, u, a, w), scan-fused
- engine:   lticl.engine.run_steps (w^L as one row carried back; DIAG mixes elementwise), scan-fused
- grid:     run_steps over 4 configs (4 noise settings) vmapped in one call
- spread:   the same 4 configs placed across the CPU devices (one per core,
            lticl.devices.use_cpu_cores) as train_group does

Achieved GFLOP/s of the engine: XLA's flop count of one compiled step times the
measured rate, against a float32 matmul peak measured in the same run.

    python bench/train.py [--steps 20]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import optax

from lticl.metrics import sequence_loss
from lticl.model import implicit_state, predict
from lticl.tasks import sample_tasks
from lticl.config import TrainConfig
from lticl.devices import spread as spread_models, use_cpu_cores
from lticl.engine import concat, init_state, run_steps


def timed(fn, repeats=1):
    jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn())
    return (time.perf_counter() - start) / repeats


def baseline_steps(config, steps, kind):
    """Plain Adam steps with the given forward, for the tokens and implicit rows."""
    state = init_state(config)
    params = jax.tree.map(lambda a: a[0], state.params)
    opt = optax.adam(1e-4)

    def loss(p, key):
        t = sample_tasks(key, config.noise, config.batch, config.n, config.d)
        if kind == "tokens":
            return 0.5 * jnp.mean((predict(p, t.x, t.y, t.x_query, form="tokens") - t.y_query) ** 2)
        return jnp.mean(sequence_loss(implicit_state(p, t.x, t.y).w[-1], t.w))

    @jax.jit
    def step(p, o, i):
        g = jax.grad(loss)(p, jax.random.fold_in(jax.random.key(0), i))
        u, o = opt.update(g, o)
        return optax.apply_updates(p, u), o

    @jax.jit
    def fused(p, o):
        return jax.lax.scan(lambda c, i: (step(*c, i), None), (p, o), jnp.arange(steps))[0]

    o = opt.init(params)
    if kind == "tokens":
        def run():
            p, oo = params, o
            for i in range(steps):
                p, oo = step(p, oo, i)
            return p
        return timed(run)
    return timed(lambda: fused(params, o))


def matmul_peak(size=2048, repeats=10):
    """GFLOP/s of a float32 (size × size) matmul on this machine, now."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    return 2 * size**3 / timed(lambda: f(a), repeats) / 1e9


def step_flops(config, state):
    """XLA's flop count of one compiled engine step (a scan of length 1)."""
    compiled = jax.jit(lambda s: run_steps(config, s, 1)[1]).lower(state).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    devices = use_cpu_cores()
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform} ({devices} devices); "
          f"{args.steps} steps per measurement")
    peak = matmul_peak()
    print(f"float32 matmul peak (2048²): {peak:.0f} GFLOP/s")
    for variant in ("full", "diag"):
        config = TrainConfig(variant, 7, "uniform:5", steps=10_000)
        rows = {k: args.steps / baseline_steps(config, args.steps, k) for k in ("tokens", "implicit")}
        state = init_state(config)
        rows["engine"] = args.steps / timed(lambda: run_steps(config, state, args.steps)[1])
        grid = concat([init_state(TrainConfig(variant, 7, f"uniform:{s}", steps=10_000)) for s in (1, 3, 5, 7)])
        rows["grid (4 configs)"] = 4 * args.steps / timed(lambda: run_steps(config, grid, args.steps)[1])
        spread = spread_models(grid, 4)
        rows["spread (4 configs)"] = 4 * args.steps / timed(lambda: run_steps(config, spread, args.steps)[1])
        for name, rate in rows.items():
            print(f"{variant}-7  {name:19s} {rate:6.1f} model-steps/s  {rate / rows['tokens']:5.2f}x tokens")
        gflops = step_flops(config, state) * rows["engine"] / 1e9
        print(f"{variant}-7  engine: {gflops:.1f} GFLOP/s achieved = {100 * gflops / peak:.1f}% of the matmul peak")


if __name__ == "__main__":
    main()
