"""Training on a range of context lengths: one length per sequence (the library's
way: padded and masked) against one length per batch (all of a batch's sequences
share a draw, still padded, so that one program serves every batch).

    python bench/lengths.py OUT [steps]

trains FULL-7 on uniform:5 with n = 10..100 and normalised attention both ways at
the laptop recipe and writes OUT/per-sequence/model.npz and OUT/per-batch/model.npz;
`lticl compare OUT/*/model.npz --n 10 --n 20 --n 40 --n 100 --n 200 --sigma 0 ...
--adjusted` then sets them side by side (docs/log/2026-12-03-lengths.md).
"""

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import lticl.engine
from lticl.devices import use_compilation_cache, use_cpu_cores
from lticl.experiments import budget_config
from lticl.io import save_npz
from lticl.tasks import draw_lengths
from lticl.train import train


def per_batch(key, batch, low, high):
    return jnp.broadcast_to(draw_lengths(key, 1, low, high), (batch,))


def main(out: Path, steps: int = 2000) -> None:
    use_cpu_cores()
    use_compilation_cache()
    config = budget_config("laptop", "full", 7, "uniform:5", n="10..100", normalised=True, steps=steps)
    for name, draw in (("per-sequence", draw_lengths), ("per-batch", per_batch)):
        lticl.engine.draw_lengths = draw
        jax.clear_caches()  # the step is compiled anew with this draw
        start = time.perf_counter()
        result = train(config)
        save_npz(result.params, out / name / "model.npz")
        print(f"{name}: adjusted loss at n = {config.n} {result.evaluation.mean:.4f} ± {result.evaluation.sem:.4f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), *map(int, sys.argv[2:]))
