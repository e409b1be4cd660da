"""Bring your own tabular benchmark: a CSV with one row per architecture, then every
search strategy on it, compared over seeds.

    python examples/own_table.py --out runs/own_table

The table written here is a stand-in with made-up numbers, so the example runs
anywhere; replace it with your measurements. Columns: the architecture as its choices
(0-2-1-...: one integer per decision), the accuracy in %, the FLOPs. No SearchSpace is
needed: the decisions are read off the table (a TableSpace), FLOPs come from the
table. The same from the command line:

    fastnas search --space table --benchmark runs/own_table/my_table.csv \\
        --arch-column arch --accuracy-column top1 --flops-column mflops --budget 50 --repeats 10
"""

import argparse
import csv
import itertools
import math
from pathlib import Path

from fastnas.search.policies import STRATEGIES
from fastnas.search.tabular import compare_strategies, comparison_table
from fastnas.spaces.tabular import TabularBenchmark

WIDTHS = (0.5, 1.0, 1.5)  # per-layer width choices of the stand-in macro space
LAYERS = 6


def write_stand_in_table(path: Path) -> None:
    """3^6 = 729 architectures; wider layers cost more and help less the more you add."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arch", "top1", "mflops"])
        for arch in itertools.product(range(len(WIDTHS)), repeat=LAYERS):
            widths = [WIDTHS[c] for c in arch]
            mflops = sum(w * w * (8 if layer < 2 else 4) for layer, w in enumerate(widths))
            capacity = sum(math.log1p(w) * (1.2 if layer % 3 == 0 else 1.0) for layer, w in enumerate(widths))
            top1 = 95 - 30 * math.exp(-capacity / 2) - 0.4 * (arch[0] == 2 and arch[-1] == 0)
            writer.writerow(["-".join(map(str, arch)), f"{top1:.3f}", f"{mflops:.2f}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/own_table")
    parser.add_argument("--budget", type=int, default=36, help="distinct architectures queried per run (5%%)")
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "my_table.csv"
    write_stand_in_table(path)

    table = TabularBenchmark.from_file(path, arch_column="arch", accuracy_column="top1", flops_column="mflops")
    print(f"{table.name}: {len(table)} architectures, decisions {table.space.decisions}")
    comparisons = compare_strategies(table, STRATEGIES, budget=args.budget, seeds=range(args.seeds))
    print(comparison_table(comparisons))


if __name__ == "__main__":
    main()
