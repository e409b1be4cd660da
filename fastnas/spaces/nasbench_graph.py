"""NAS-Bench-Graph (Qin et al. 2022) as a tabular benchmark: a second public table, of
graph neural networks, for judging search strategies on a space they were not tuned on.

The benchmark's macro space is a DAG of 4 computing nodes, each taking one earlier node
(its structure: node i's input, 0 being the graph's) and applying one of 9 ops. Without
the skip op, three structures are plain product spaces of 4 layers x 8 ops = 4,096
architectures, every one of which the table holds: the chain (node i feeds node i + 1,
the default) and two branched ones, 0-0-1-3 and 0-1-1-2, in which no two nodes are
interchangeable. The other structures are stored once per isomorphism class, so they
are not a product of choices. The cost objective is the parameter count (the benchmark
gives no FLOPs) or the measured latency.

The table comes from the ``nas-bench-graph`` package on PyPI (``pip install
nas-bench-graph``), whose ``light/<dataset>.bench`` files are pickled dicts keyed by an
integer: the structure's index, then one base-10 digit per node's op.
"""

import importlib.util
import itertools
import pickle
from collections.abc import Sequence
from pathlib import Path

from fastnas.spaces.tabular import TableSpace, TabularBenchmark

OPS = ("gat", "gcn", "gin", "cheb", "sage", "arma", "graph", "fc")  # the benchmark's op order, skip left out
LAYERS = 4
CHAIN = (0, 1, 2, 3)
# The structures whose ops form a product space, with their index among the benchmark's.
PRODUCT_STRUCTURES = {CHAIN: 8, (0, 0, 1, 3): 4, (0, 1, 1, 2): 6}
KEY_BASE = 10  # 9 ops + 1
DATASETS = ("cora", "citeseer", "pubmed", "cs", "physics", "photo", "computers", "arxiv")
COSTS = {"params": "para", "latency": "latency"}


def structure_name(structure: tuple[int, ...]) -> str:
    return "-".join(map(str, structure))


def table_key(arch: tuple[int, ...], structure: tuple[int, ...] = CHAIN) -> int:
    """The benchmark's key of the architecture with these op indices on ``structure``."""
    key = PRODUCT_STRUCTURES[structure]
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


def nasbench_graph_benchmark(dataset: str = "cora", cost: str = "latency", path: str | Path | None = None,
                             structure: Sequence[int] | str = CHAIN) -> TabularBenchmark:
    """Test accuracy (%) of the 4,096 architectures of ``structure`` (the chain by
    default; 0-0-1-3 or 0-1-1-2, as a tuple or a string) on ``dataset``, with the
    parameter count (millions) or latency (seconds) as the cost the strategies minimise.
    ``path``: a ``<dataset>.bench`` file, else the installed package's."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown NAS-Bench-Graph dataset {dataset!r}; choose one of {DATASETS}")
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {sorted(COSTS)}, got {cost!r}")
    text = structure if isinstance(structure, str) else structure_name(structure)
    by_name = {structure_name(s): s for s in PRODUCT_STRUCTURES}
    if text not in by_name:
        raise ValueError(f"structure {text!r} is not a product space of the benchmark (each node's input, "
                         f"0 the graph's); choose one of {list(by_name)}")
    structure = by_name[text]
    path = Path(path) if path is not None else bench_file(dataset)
    if not path.is_file():
        raise FileNotFoundError(f"NAS-Bench-Graph table {path} does not exist")
    with path.open("rb") as f:
        table = pickle.load(f)  # the benchmark's own format; read only files from its package
    archs = list(itertools.product(range(len(OPS)), repeat=LAYERS))
    missing = [a for a in archs if table_key(a, structure) not in table]
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} architectures of structure {structure_name(structure)} "
                         f"(e.g. ops {[OPS[o] for o in missing[0]]}); is it a NAS-Bench-Graph .bench file?")
    name = f"NAS-Bench-Graph {dataset}" + ("" if structure == CHAIN else f" {structure_name(structure)}")
    entries = {a: table[table_key(a, structure)] for a in archs}
    costs = {a: float(entry[COSTS[cost]]) for a, entry in entries.items()}
    space = TableSpace([len(OPS)] * LAYERS, costs, name=name)
    return TabularBenchmark.from_records(space, {a: 100 * float(entry["perf"]) for a, entry in entries.items()},
                                         flops=costs, name=name)
