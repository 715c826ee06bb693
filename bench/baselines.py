"""Wall time of `lticl baselines` at the paper's budget, as a user sees it (process
start, JAX import and compilation included), against a reference measured in the
same run: NumPy solving the same number of 10×10 ridge systems once (10 settings ×
100k sequences), the least work any evaluation of one ridge method must do.

    python bench/baselines.py [--sequences 100000]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def reference_seconds(systems: int, d: int = 10, n: int = 20) -> float:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((systems, n, d), dtype=np.float32)
    y = rng.standard_normal((systems, n), dtype=np.float32)
    start = time.perf_counter()
    Sigma = np.einsum("bnd,bne->bde", x, x) + np.eye(d, dtype=np.float32)
    np.linalg.solve(Sigma, np.einsum("bnd,bn->bd", x, y)[..., None])
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequences", type=int, default=100_000)
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "lticl.cli", "baselines", "--sequences", str(args.sequences), "--format", "json"]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([*cmd, "--out", out], check=True, capture_output=True)
        lticl_s = time.perf_counter() - start
        inner_s = json.load(open(os.path.join(out, "baselines.json")))["seconds"]
    ref_s = reference_seconds(10 * args.sequences)
    print(f"lticl baselines --sequences {args.sequences}: {lticl_s:.1f} s wall ({inner_s:.1f} s after start-up)")
    print(f"reference (NumPy, {10 * args.sequences} ridge solves): {ref_s:.2f} s")
    print(f"ratio: {lticl_s / ref_s:.1f}x the reference")


if __name__ == "__main__":
    main()
