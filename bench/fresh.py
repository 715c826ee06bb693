"""Adjusted loss of an exported model on 1,000,000 fresh sequences (key 20261123),
the check the training issue asks of `lticl train`'s 7-layer models:

    python bench/fresh.py runs/diag7/model.npz uniform:5
"""

import functools
import sys

import jax

import lticl


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    params = lticl.load_npz(sys.argv[1])
    ev = lticl.evaluate({"model": functools.partial(lticl.weights, params)}, jax.random.key(20261123), sys.argv[2],
                        1_000_000, 20, params.d)["model"]
    print(f"{ev.mean:.4f} ± {ev.sem:.4f} on 1,000,000 fresh sequences (worst {ev.worst:.3g}, {ev.nonfinite} non-finite)")


if __name__ == "__main__":
    main()
