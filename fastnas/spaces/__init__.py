"""Search spaces. Every space exposes the SearchSpace interface (decisions, sample,
validate, encode, build, flops, params) that the search strategies talk to."""

from fastnas.spaces.base import Architecture, SearchSpace
from fastnas.spaces.canas import CanasSpace, CanasSupernet

__all__ = ["Architecture", "CanasSpace", "CanasSupernet", "SearchSpace"]
