"""Gradient noise at chosen Table 1 models: how much of a training batch's gradient
is signal, and where its noise comes from.

    python bench/gradnoise.py OUT full:7:uniform:6 diag:7:uniform:6
    python bench/gradnoise.py OUT full:7:uniform:6 --sequences 131072 --batch 512
    python bench/gradnoise.py OUT full:7:uniform:6 --seed 1   # OUT made with --seed 1

OUT is a directory `lticl reproduce table1 --budget laptop [--seed S]` finished (pass
the same `--seed`); each cell's chosen model is read back from it (nothing trains). On
`--sequences` fresh sequences (key 20261204) it computes every sequence's gradient of
the loss the training step minimises (½‖w^L − w‖², the exact query average) and
prints, per cell:

- `|E g|²`: the squared norm of the expected gradient, estimated without bias
  (‖mean‖² − tr Σ / N);
- `tr Σ`: the per-sequence gradient variance, summed over the parameters;
- `SNR@B`: |E g|² / (tr Σ / B), the signal-to-noise ratio of one batch of `--batch`
  sequences, and `B for SNR 1`: the batch at which that ratio reaches 1;
- the share of tr Σ held by the top 0.1%, 1% and 10% of sequences ranked by the tail
  score (`tasks.tail_score`, what stratified batches oversample) and by the gradient's
  own deviation (the most any ranking could hold).

docs/log/2026-12-04-gradnoise.md has the numbers.
"""

import argparse
from pathlib import Path

import jax
import numpy as np

from lticl.devices import use_cpu_cores

CHUNK = 4096
SHARES = (0.001, 0.01, 0.1)


def cell(text: str) -> tuple[str, int, str]:
    variant, layers, noise = text.split(":", 2)
    return variant, int(layers), noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("cells", nargs="+", type=cell, help="VARIANT:LAYERS:NOISE, e.g. full:7:uniform:6")
    parser.add_argument("--sequences", type=int, default=65536)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0, help="the reproduction's --seed")
    args = parser.parse_args()
    if args.sequences % CHUNK:
        parser.error(f"--sequences must be a multiple of {CHUNK}")
    use_cpu_cores()
    from lticl.metrics import sequence_loss
    from lticl.model import weights
    from lticl.reproduce import Reproduction
    from lticl.tasks import sample_tasks, tail_score

    rep = Reproduction(args.out, "laptop", seed=args.seed)
    rep.train(set(args.cells))  # reads the finished runs back
    one = lambda p, x, y, w: sequence_loss(weights(p, x[None], y[None]), w[None])[0]
    per_sequence = jax.jit(jax.vmap(jax.grad(one), in_axes=(None, 0, 0, 0)))
    for key in args.cells:
        params, config = rep.params(key), rep.configs[key]
        grads, scores = [], []
        for i in range(args.sequences // CHUNK):
            t = sample_tasks(jax.random.fold_in(jax.random.key(20261204), i), key[2], CHUNK, config.n, config.d)
            g = per_sequence(params, t.x, t.y, t.w)
            grads.append(np.concatenate([np.asarray(a, np.float64).reshape(CHUNK, -1) for a in jax.tree.leaves(g)], 1))
            scores.append(np.asarray(tail_score(t)))
        grads, scores = np.concatenate(grads), np.concatenate(scores)
        mean = grads.mean(axis=0)
        deviation = np.sum((grads - mean) ** 2, axis=1)
        trace = deviation.sum() / (len(grads) - 1)
        signal = float(mean @ mean) - trace / len(grads)
        shares = {name: [deviation[np.argsort(-rank)[:int(q * len(grads))]].sum() / deviation.sum() for q in SHARES]
                  for name, rank in (("tail score", scores), ("deviation", deviation))}
        print(f"{key[0]}-{key[1]} {key[2]}: |E g|² {signal:.3g}, tr Σ {trace:.3g}, SNR@{args.batch} "
              f"{signal * args.batch / trace:.3g}, B for SNR 1: {trace / signal:.3g}" if signal > 0 else
              f"{key[0]}-{key[1]} {key[2]}: |E g|² below its noise ({signal:.3g}), tr Σ {trace:.3g}")
        for name, s in shares.items():
            print(f"  share of tr Σ in the top {', '.join(f'{q:.1%}' for q in SHARES)} by {name}: "
                  f"{', '.join(f'{v:.2f}' for v in s)}")


if __name__ == "__main__":
    main()
