"""What JAX's PRNG setting, and the shape of a draw, cost to compile and to run, in one
process per setting.

For each setting (threefry as JAX defaults it, with lticl's draws: `tasks.normal`,
flat then reshaped; the same with `jax.random.normal` drawing each shape as it is, as
lticl did until the flat draws; threefry not partitionable; rbg): the compile time of
four draws of a laptop batch's context shape, then their run time, and
for a group of 10 laptop configs (the uniform settings) of each of FULL-7 and DIAG-3,
the first `run_steps` call of 100 steps (compilation and the steps) and a second one.
The two threefry settings draw the same numbers; the other two change every random
stream: this measures only cost.

    python bench/compile.py            # LTICL_COMPILATION_CACHE is not read: nothing is cached
"""

import subprocess
import sys
import time

SETTINGS = ("threefry", "threefry-shaped-draws", "threefry-not-partitionable", "rbg")


def measure(setting: str) -> None:
    import jax

    if setting == "rbg":
        jax.config.update("jax_default_prng_impl", "rbg")
    if setting == "threefry-not-partitionable":
        jax.config.update("jax_threefry_partitionable", False)
    from lticl import tasks
    from lticl.devices import spread, use_cpu_cores
    from lticl.engine import concat, init_state, run_steps
    from lticl.experiments import UNIFORM, budget_config

    if setting != "threefry":
        tasks.normal = jax.random.normal  # the draws lticl made until it drew flat
    use_cpu_cores(2)
    draws = lambda key: [tasks.normal(k, (512, 20, 10)) for k in jax.random.split(key, 4)]
    start = time.perf_counter()
    compiled = jax.jit(draws).lower(jax.random.key(0)).compile()
    row = [f"{time.perf_counter() - start:.2f}"]
    jax.block_until_ready(compiled(jax.random.key(1)))
    start = time.perf_counter()
    for i in range(50):
        jax.block_until_ready(compiled(jax.random.key(i)))
    row.append(f"{(time.perf_counter() - start) / 50 * 1e3:.2f}")
    for variant, layers in (("full", 7), ("diag", 3)):
        configs = [budget_config("laptop", variant, layers, s) for s in UNIFORM]
        state = spread(concat([init_state(c) for c in configs]), len(configs))
        times = []
        for _ in range(2):
            start = time.perf_counter()
            state, losses = run_steps(configs[0], state, 100)
            jax.block_until_ready(losses)
            times.append(f"{time.perf_counter() - start:.2f}")
        row += times
    print(f"| {setting} | " + " | ".join(row) + " |", flush=True)


def main():
    if len(sys.argv) > 1:
        return measure(sys.argv[1])
    print("| PRNG | 4 normal draws: compile (s) | run (ms) | FULL-7 × 10: first call (s) | 100 steps (s) "
          "| DIAG-3 × 10: first call (s) | 100 steps (s) |")
    print("|---|---|---|---|---|---|---|")
    for setting in SETTINGS:
        subprocess.run([sys.executable, __file__, setting], check=True)


if __name__ == "__main__":
    main()
