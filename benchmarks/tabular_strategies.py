"""Every sampling strategy on held-out tabular benchmarks, at 5 % of each table.

    python benchmarks/tabular_strategies.py /path/to/nats_bench.csv
    python benchmarks/tabular_strategies.py nats_bench.csv --seeds 10 30 --share 0.05
    python benchmarks/tabular_strategies.py nats_bench.csv --share 0.1 --strategies mobo random \
        --tables "graph pubmed" "graph cs"
    python benchmarks/tabular_strategies.py nats_bench.csv --strategies mobo random --branched

Tables: NAS-Bench-201 on CIFAR-10, CIFAR-100 and ImageNet16-120; the 4,096 cells of
ImageNet16-120 without the 'none' op, loaded as a user table (a TableSpace, FLOPs from
the table) to run the from_records path; and, when the nas-bench-graph package is
installed, NAS-Bench-Graph's 4,096 GNNs of each of its three product structures (the
chain and the branched 0-0-1-3 and 0-1-1-2) on its eight datasets, with latency as the
cost. Settings were chosen on the development tables only, with seeds 0-9: the tabular
CAS settings on NAS-Bench-201 CIFAR-10, mobo's design on CIFAR-10 and NAS-Bench-Graph
Cora; evolution and NSGA-II use textbook defaults chosen on no table. The branched
graph tables were added after mobo's design was fixed (3c5eb8a) and chose nothing (Cora's
are marked as development: its dataset did). Seeds 10-29 were used for nothing but this
report. Prints a Markdown table (mean ± sd of the hypervolume
ratio; seeds on which a strategy beats random search; the paired Wilcoxon p-value) and
writes benchmarks/results/tabular-<date>-<commit>.json.

The last column says how much of a table's score hangs on a few architectures: the
ratio of the true front of the table without its 3 most accurate architectures. A
strategy scores above it only by finding one of those 3. A second table follows each
table's best strategy through the budget, whole percent by whole percent, from each run's
own prefix of queries (for mobo and random search that is the shorter run), with the first
share at which its mean reaches 0.95.
"""

import argparse
import datetime
import json
import multiprocessing
import statistics
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fastnas.search.policies import STRATEGIES  # noqa: E402
from fastnas.search.tabular import (TOP_ARCHITECTURES, StrategyComparison, anytime_hypervolume_ratios,  # noqa: E402
                                    ratio_without_the_best, tabular_search)
from fastnas.spaces.nasbench201 import OPS, nasbench201_benchmark  # noqa: E402
from fastnas.spaces.nasbench_graph import (CHAIN, DATASETS as GRAPH_DATASETS, PRODUCT_STRUCTURES,  # noqa: E402
                                          bench_file, nasbench_graph_benchmark, structure_name)
from fastnas.spaces.tabular import TableSpace, TabularBenchmark  # noqa: E402

NASBENCH201_TABLES = ("cifar10", "cifar100", "imagenet16-120", "imagenet16-120 without none")
GRAPH_TABLES = tuple(f"graph {d}" for d in GRAPH_DATASETS)
# The branched structures' tables, built after mobo's design was fixed (3c5eb8a).
BRANCHED_TABLES = tuple(f"graph {d} {structure_name(s)}" for s in PRODUCT_STRUCTURES if s != CHAIN
                        for d in GRAPH_DATASETS)
# Where settings were chosen (seeds 0-9); Cora's branched tables share its dataset.
DEVELOPMENT_TABLES = ("cifar10", "graph cora", *(t for t in BRANCHED_TABLES if t.startswith("graph cora ")))


def graph_available() -> bool:
    try:
        return bench_file("cora").is_file()
    except FileNotFoundError:
        return False


def load_table(csv_path: str, table: str) -> TabularBenchmark:
    if table.startswith("graph "):
        _, dataset, *structure = table.split()
        return nasbench_graph_benchmark(dataset, "latency", structure=structure[0] if structure else CHAIN)
    if not table.endswith("without none"):
        return nasbench201_benchmark(csv_path, table)
    full = nasbench201_benchmark(csv_path, table.split()[0])
    none = OPS.index("none")
    kept = {arch: accuracy for arch, accuracy in full.accuracy.items() if none not in arch}
    # Choices renumbered 0..3; the FLOPs are the full table's, as a user table would carry them.
    renumber = {arch: tuple(c - 1 for c in arch) for arch in kept}
    flops = {renumber[a]: full.flops(a) for a in kept}
    space = TableSpace([len(OPS) - 1] * 6, flops, name=table)
    return TabularBenchmark.from_records(space, {renumber[a]: acc for a, acc in kept.items()}, name=table)


def _one_thread():
    import torch

    torch.set_num_threads(1)  # one process per core; the controller is too small to split


def _run(job):
    """One run, with its ratio after each of ``shares`` of the table (its anytime curve)."""
    csv_path, table, strategy, seed, budget, shares = job
    benchmark = load_table(csv_path, table)
    result = tabular_search(benchmark, strategy, budget=budget, seed=seed)
    queries = [min(result.queries, max(1, round(x * len(benchmark)))) for x in shares]
    return table, strategy, seed, result, anytime_hypervolume_ratios(result, benchmark, queries)


def whole_percents(share: float) -> list[float]:
    """1 %, 2 %, ... up to ``share``, and ``share`` itself when it is not a whole percent."""
    shares = [k / 100 for k in range(1, int(100 * share + 1e-9) + 1)]
    return shares + ([share] if not shares or shares[-1] < share - 1e-9 else [])


def anytime_lines(curves, tables, strategies, shares) -> list[str]:
    """Markdown: each table's best strategy at the full budget, its mean ratio at each
    share, and the first share at which that mean reaches 0.95."""
    header = "| table: best strategy | " + " | ".join(f"{round(100 * x)} %" for x in shares) + " | first share at 0.95 |"
    lines = [header, "|" + " --- |" * (len(shares) + 2)]
    for table in tables:
        best = max(strategies, key=lambda st: curves[table][st][-1])
        means = curves[table][best]
        first = next((f"{round(100 * x)} %" for x, m in zip(shares, means) if m >= 0.95), "not reached")
        label = f"{table}{' (development)' if table in DEVELOPMENT_TABLES else ''}"
        lines.append(f"| {label}: {best} | " + " | ".join(f"{m:.3f}" for m in means) + f" | {first} |")
    return lines


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", help="NAS-Bench-201's nats_bench.csv")
    parser.add_argument("--seeds", type=int, nargs=2, default=(10, 30), metavar=("FIRST", "STOP"))
    parser.add_argument("--share", type=float, default=0.05, help="query budget as a share of each table")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=STRATEGIES,
                        help="strategies to run (random is added: the others are compared with it)")
    parser.add_argument("--tables", nargs="+", choices=NASBENCH201_TABLES + GRAPH_TABLES + BRANCHED_TABLES,
                        help="tables to run (default: NAS-Bench-201's and the graph chains, where available)")
    parser.add_argument("--branched", action="store_true",
                        help="run the 16 branched graph tables instead (mobo and random: ~15 minutes on 2 cores)")
    args = parser.parse_args(argv)
    seeds = tuple(range(*args.seeds))
    strategies = tuple(dict.fromkeys((*args.strategies, "random")))
    with_graph = graph_available()
    if args.branched and args.tables:
        parser.error("--branched names its tables; leave out --tables")
    tables = BRANCHED_TABLES if args.branched else args.tables or NASBENCH201_TABLES + (GRAPH_TABLES if with_graph else ())
    if not with_graph:
        if any(t.startswith("graph ") for t in tables):
            parser.error("the graph tables need nas-bench-graph: pip install nas-bench-graph")
        print("nas-bench-graph is not installed (pip install nas-bench-graph): NAS-Bench-201 tables only",
              file=sys.stderr)
    loaded = {table: load_table(args.csv, table) for table in tables}
    sizes = {table: len(benchmark) for table, benchmark in loaded.items()}
    ceilings = {table: ratio_without_the_best(benchmark, TOP_ARCHITECTURES) for table, benchmark in loaded.items()}
    del loaded  # the workers load their own
    budgets = {table: max(1, round(args.share * size)) for table, size in sizes.items()}
    shares = whole_percents(args.share)
    jobs = [(args.csv, t, s, k, budgets[t], shares) for t in tables for s in strategies for k in seeds]
    runs, anytime = {}, {}
    # spawn, not fork: the parent's torch thread pool does not survive a fork.
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_one_thread) as pool:
        for done, (table, strategy, seed, result, curve) in enumerate(pool.map(_run, jobs, chunksize=4), start=1):
            runs[table, strategy, seed], anytime[table, strategy, seed] = result, curve
            print(f"\r{done}/{len(jobs)} runs", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    header = "| table (queries) | " + " | ".join(strategies) + f" | without its {TOP_ARCHITECTURES} best |"
    lines = [header, "|" + " --- |" * (len(strategies) + 2)]
    report = {}
    for table in tables:
        comparisons = {s: StrategyComparison(s, tuple(runs[table, s, k] for k in seeds), seeds) for s in strategies}
        best = max(comparisons.values(), key=lambda c: c.mean).strategy
        cells = []
        for strategy, c in comparisons.items():
            text = f"{c.mean:.3f} ± {c.stdev:.3f}"
            text = f"**{text}**" if strategy == best else text
            if strategy != "random":
                test = c.against(comparisons["random"])
                text += f" ({test.wins}/{test.seeds}, p={test.p_value:.1g})"
            cells.append(text)
        label = f"{table}{' (development)' if table in DEVELOPMENT_TABLES else ''}"
        lines.append(f"| {label} ({budgets[table]} of {sizes[table]}) | " + " | ".join(cells)
                     + f" | {ceilings[table]:.3f} |")
        report[table] = {"size": sizes[table], "budget": budgets[table], "best": best,
                         "development": table in DEVELOPMENT_TABLES,
                         f"ratio_without_the_{TOP_ARCHITECTURES}_best": ceilings[table],
                         "strategies": {s: {"mean": c.mean, "sd": c.stdev, "hypervolume_ratios": c.hypervolume_ratios,
                                            **({} if s == "random" else vars(c.against(comparisons["random"])))}
                                        for s, c in comparisons.items()}}
    print("\n".join(lines))
    curves = {t: {s: [statistics.fmean(anytime[t, s, k][i] for k in seeds) for i in range(len(shares))]
                  for s in strategies} for t in tables}
    for table in tables:
        for strategy in strategies:
            report[table]["strategies"][strategy]["anytime"] = dict(zip((f"{x:g}" for x in shares),
                                                                        curves[table][strategy]))
    budget_lines = anytime_lines(curves, tables, strategies, shares)
    print("\n" + "\n".join(budget_lines))
    lines += ["", *budget_lines]
    date = datetime.datetime.now(datetime.timezone.utc)
    out = HERE / "results" / f"tabular-{date:%Y%m%d-%H%M}-{_commit()}.json"
    out.write_text(json.dumps({"date": date.isoformat(timespec="seconds"), "commit": _commit(), "seeds": list(seeds),
                               "share": args.share, "tables": report, "markdown": "\n".join(lines)}, indent=1))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
