"""NAS-Bench-Graph (Qin et al. 2022) as a tabular benchmark: a second public table, of
graph neural networks, for judging search strategies on a space they were not tuned on.

The benchmark's macro space is a DAG of 4 computing nodes, each taking one earlier node
and applying one of 9 ops. Its chain structure (node i feeds node i+1) without the skip
op is a plain product space, 4 layers x 8 ops = 4,096 architectures, every one of which
the table holds (the other structures are stored once per isomorphism class, so they
are not a product of choices). The cost objective is the parameter count (the benchmark
gives no FLOPs) or the measured latency.

The table comes from the ``nas-bench-graph`` package on PyPI (``pip install
nas-bench-graph``), whose ``light/<dataset>.bench`` files are pickled dicts keyed by an
integer: the structure's index, then one base-10 digit per node's op.
"""

import importlib.util
import itertools
import pickle
from pathlib import Path

from fastnas.spaces.tabular import TableSpace, TabularBenchmark

OPS = ("gat", "gcn", "gin", "cheb", "sage", "arma", "graph", "fc")  # the benchmark's op order, skip left out
LAYERS = 4
CHAIN_STRUCTURE = 8  # index of [0, 1, 2, 3] (node i reads node i - 1) among the benchmark's structures
KEY_BASE = 10  # 9 ops + 1
DATASETS = ("cora", "citeseer", "pubmed", "cs", "physics", "photo", "computers", "arxiv")
COSTS = {"params": "para", "latency": "latency"}


def chain_key(arch: tuple[int, ...]) -> int:
    """The benchmark's key of the chain architecture with these op indices."""
    key = CHAIN_STRUCTURE
    for op in arch:
        key = key * KEY_BASE + op
    return key


def bench_file(dataset: str) -> Path:
    """The installed package's table for ``dataset``."""
    spec = importlib.util.find_spec("nas_bench_graph")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("NAS-Bench-Graph is not installed; pip install nas-bench-graph "
                                "(or pass the path of a <dataset>.bench file)")
    return Path(spec.origin).parent / "light" / f"{dataset}.bench"


def nasbench_graph_benchmark(dataset: str = "cora", cost: str = "latency",
                             path: str | Path | None = None) -> TabularBenchmark:
    """Test accuracy (%) of the 4,096 chain architectures on ``dataset``, with the
    parameter count (millions) or latency (seconds) as the cost the strategies minimise.
    ``path``: a ``<dataset>.bench`` file, else the installed package's."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown NAS-Bench-Graph dataset {dataset!r}; choose one of {DATASETS}")
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {sorted(COSTS)}, got {cost!r}")
    path = Path(path) if path is not None else bench_file(dataset)
    if not path.is_file():
        raise FileNotFoundError(f"NAS-Bench-Graph table {path} does not exist")
    with path.open("rb") as f:
        table = pickle.load(f)  # the benchmark's own format; read only files from its package
    archs = list(itertools.product(range(len(OPS)), repeat=LAYERS))
    missing = [a for a in archs if chain_key(a) not in table]
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} chain architectures (e.g. ops "
                         f"{[OPS[o] for o in missing[0]]}); is it a NAS-Bench-Graph .bench file?")
    name = f"NAS-Bench-Graph {dataset}"
    costs = {a: float(table[chain_key(a)][COSTS[cost]]) for a in archs}
    space = TableSpace([len(OPS)] * LAYERS, costs, name=name)
    return TabularBenchmark.from_records(space, {a: 100 * float(table[chain_key(a)]["perf"]) for a in archs},
                                         flops=costs, name=name)
