"""Two Table 1 runs side by side: how many cells each has within tolerance, how many
both and either have, and every cell whose verdict differs between them.

    lticl reproduce table1 --budget laptop --out A
    lticl reproduce table1 --budget laptop --seed 1 --out B   # every stream new
    python bench/tables.py A B

Runs of other seeds draw other training, validation, tail and evaluation streams, so
the cells that differ measure how much of the count is the streams' noise.
"""

import csv
import sys
from pathlib import Path


def read(out: Path) -> dict[tuple, dict]:
    with open(out / "table1.csv", newline="") as f:
        return {(r["model"], r["layers"], r["setting"]): r for r in csv.DictReader(f)}  # baselines: no layers


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    a, b = (read(Path(p)) for p in sys.argv[1:])
    if a.keys() != b.keys():
        sys.exit("the two tables have different cells")
    within = {name: {k for k, r in t.items() if r["within"] == "True"} for name, t in (("A", a), ("B", b))}
    print(f"A: {len(within['A'])} of {len(a)} within; B: {len(within['B'])}; both: "
          f"{len(within['A'] & within['B'])}; either: {len(within['A'] | within['B'])}")
    label = lambda r: "within" if r["within"] == "True" else (r["kind"] or "miss")
    for k in sorted(within["A"] ^ within["B"]):
        name = f"{k[0]}-{k[1]}" if k[1] else k[0]
        print(f"  {name} {k[2]:18s} paper {float(a[k]['paper']):<8.4g} A {float(a[k]['ours']):<8.4g} "
              f"({label(a[k])})  B {float(b[k]['ours']):<8.4g} ({label(b[k])})")


if __name__ == "__main__":
    main()
