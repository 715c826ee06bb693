"""What the long draws cost: an evaluation chunk, and a tail set or bank (the `keep`
sequences of largest tail score among `pool`), in one process, alternately, each
timed after a first call that compiles.

- chunk: `sample_tasks` of `tasks.CHUNK` sequences, lticl's draws (JAX's default,
  partitionable threefry) against the same under the original threefry
  (`jax.threefry_partitionable(False)`: other numbers; lticl does not use it yet).
- tail set: `tasks.tail_tasks` (the exact score only where `_score_bound` reaches the
  kept scores) against every sequence scored exactly, then the top `keep` kept
  (lticl's `tail_tasks` until ecae5f8, written out here): the same sequences.

    python bench/draws.py [POOL]      # POOL: 1,000,000 unless told (a tail set)

BENCHMARKS.md (The long draws) has the numbers.
"""

import math
import sys
import time
from unittest import mock

import jax
import jax.numpy as jnp

from lticl import tasks
from lticl.devices import use_cpu_cores
from lticl.selection import TAIL_KEEP


def original_normal(key, shape, dtype=jnp.float32):
    with jax.threefry_partitionable(False):
        return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def scored_in_full(key, noise, pool, keep, n, d):
    """Every sequence scored, the top `keep` kept chunk by chunk (before ecae5f8)."""
    best, scores = None, None
    for chunk in tasks.task_chunks(key, noise, pool, n, d):
        both = chunk if best is None else tasks.Tasks(*(jnp.concatenate(p) for p in zip(best, chunk)))
        s = tasks.tail_score(chunk) if scores is None else jnp.concatenate([scores, tasks.tail_score(chunk)])
        scores, top = jax.lax.top_k(s, min(keep, s.shape[0]))
        best = jax.tree.map(lambda a: a[top], both)
    return best


def timed(f, repeats: int = 1) -> float:
    """Seconds per call of f, after a first call that compiles (with JAX's caches
    cleared first: a jitted sampler traced with one `normal` must not serve the other)."""
    jax.clear_caches()
    jax.block_until_ready(f())
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(f())
    return (time.perf_counter() - start) / repeats


def main() -> None:
    use_cpu_cores()
    pool = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    noise, n, d = "uniform:5", 20, 10
    key = tasks.data_key(0, noise, "tail")
    chunk = lambda: tasks.sample_tasks(key, noise, tasks.CHUNK, n, d)
    rows = {f"chunk ({tasks.CHUNK:,} sequences), ms": [[], []], f"tail set ({pool:,} sequences), s": [[], []]}
    (chunks, tails) = rows.values()
    for _ in range(2):  # alternately: the machine's speed drifts
        chunks[0].append(timed(chunk, 20) * 1e3)
        tails[0].append(timed(lambda: scored_in_full(key, noise, pool, TAIL_KEEP, n, d)))
        with mock.patch.object(tasks, "normal", original_normal):
            chunks[1].append(timed(chunk, 20) * 1e3)
        tails[1].append(timed(lambda: tasks.tail_tasks(key, noise, pool, TAIL_KEEP, n, d)))
    print(f"keep {TAIL_KEEP:,}, {noise}, n = {n}, d = {d}; the faster of two rounds")
    print("| what | reference | measured | reference / measured |")
    print("|---|---|---|---|")
    names = ("lticl's draws", "the original threefry"), ("every sequence scored", "tail_tasks (the bound)")
    for (name, (before, now)), (ref, new) in zip(rows.items(), names):
        print(f"| {name}: {ref} → {new} | {min(before):.2f} | {min(now):.2f} | {min(before) / min(now):.1f}× |")


if __name__ == "__main__":
    main()
