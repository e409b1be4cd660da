"""Search spaces. Every space exposes the SearchSpace interface (decisions, sample,
validate, encode, build, flops, params) that the search strategies talk to."""

from fastnas.spaces.base import Architecture, SearchSpace
from fastnas.spaces.canas import CanasSpace, CanasSupernet
from fastnas.spaces.darts import DartsGenotypeSpace, DartsSupernet
from fastnas.spaces.enas_chain import EnasChainSpace
from fastnas.spaces.nasbench201 import NasBench201Space, nasbench201_benchmark
from fastnas.spaces.tabular import TableSpace, TabularBenchmark

__all__ = [
    "Architecture",
    "CanasSpace",
    "CanasSupernet",
    "DartsGenotypeSpace",
    "DartsSupernet",
    "EnasChainSpace",
    "NasBench201Space",
    "SearchSpace",
    "TableSpace",
    "TabularBenchmark",
    "nasbench201_benchmark",
]
