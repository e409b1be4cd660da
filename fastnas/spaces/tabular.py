"""Tabular benchmarks: the accuracy of every architecture of a space, looked up instead
of trained, so a search strategy is judged in seconds.

A table comes from records (``TabularBenchmark.from_records(space, {arch: accuracy})``)
or from a CSV / JSON file with named columns (``TabularBenchmark.from_file``). Its FLOPs
come from the space, or from a column of the table; a table without a space of its own
gets a ``TableSpace``, which knows the architectures only through the table.
"""

import csv
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import nn

from fastnas.spaces.base import Architecture, SearchSpace, choice_counts


class TableSpace(SearchSpace):
    """A space known only through a table: ``decisions[i]`` choices at position i, and
    the FLOPs (optionally parameters) the table gives each architecture. It cannot build
    networks; a space that can is a ``SearchSpace`` subclass of one's own."""

    def __init__(self, decisions: Sequence[int], flops: Mapping[Sequence[int], float],
                 params: Mapping[Sequence[int], float] | None = None, name: str = "table"):
        self.name = name
        self._decisions = choice_counts(decisions, name)
        self._flops = {self.validate(a): float(f) for a, f in flops.items()}
        self._params = {self.validate(a): float(p) for a, p in (params or {}).items()}

    @property
    def decisions(self) -> tuple[int, ...]:
        return self._decisions

    def encode(self, arch: Sequence[int]) -> str:
        return "-".join(str(c) for c in self.validate(arch))

    def decode(self, text: str) -> Architecture:
        """Reads ``0-2-1``, ``0,2,1`` or ``[0, 2, 1]``."""
        return self.validate(parse_architecture(text))

    def build(self, arch: Sequence[int], fused: bool = True) -> nn.Module:
        raise NotImplementedError(f"{self.name} is known only through its table and builds no network; "
                                  "subclass fastnas.spaces.SearchSpace to build one")

    def _lookup(self, table: dict, arch: Sequence[int], what: str) -> float:
        arch = self.validate(arch)
        if arch not in table:
            raise KeyError(f"{self.name} has no {what} for architecture {self.encode(arch)}")
        return table[arch]

    def flops(self, arch: Sequence[int]) -> float:
        return self._lookup(self._flops, arch, "FLOPs")

    def params(self, arch: Sequence[int]) -> float:
        return self._lookup(self._params, arch, "parameter count")


def parse_architecture(value) -> Architecture:
    """An architecture written as a list of ints, or as text holding them (``0-2-1``)."""
    if isinstance(value, str):
        choices = re.findall(r"\d+", value)
        if not choices or re.sub(r"[\d\s,;:\-\[\]()]", "", value):
            raise ValueError(f"cannot read an architecture from {value!r}; write its choices as integers, "
                             "e.g. 0-2-1")
        return tuple(int(c) for c in choices)
    if isinstance(value, Sequence) and all(isinstance(c, int) for c in value):
        return tuple(value)
    raise ValueError(f"cannot read an architecture from {value!r}; give a list of integers or text such as 0-2-1")


class TabularBenchmark:
    """The accuracy (%) of architectures of ``space``, and their FLOPs: ``flops`` where
    given (one value per architecture), else ``space.flops``."""

    def __init__(self, space: SearchSpace, accuracy: Mapping[Sequence[int], float],
                 flops: Mapping[Sequence[int], float] | None = None, name: str = "table"):
        self.space = space
        self.name = name
        self.accuracy: dict[Architecture, float] = {}
        for arch, value in accuracy.items():
            arch = space.validate(arch)
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"{name}: architecture {space.encode(arch)} has accuracy {value}; need a number")
            self.accuracy[arch] = value
        if not self.accuracy:
            raise ValueError(f"{name} holds no architectures")
        given = {space.validate(a): float(f) for a, f in (flops or {}).items()}
        missing = [a for a in self.accuracy if a not in given] if flops is not None else []
        if missing:
            raise ValueError(f"{name}: {len(missing)} architectures have no FLOPs, e.g. {space.encode(missing[0])}")
        self._flops = {a: given[a] if flops is not None else float(space.flops(a)) for a in self.accuracy}

    @classmethod
    def from_records(cls, space: SearchSpace, accuracy: Mapping[Sequence[int], float],
                     flops: Mapping[Sequence[int], float] | None = None, name: str = "records") -> "TabularBenchmark":
        """A table from ``{architecture: accuracy in %}``; FLOPs from ``flops`` or the space."""
        return cls(space, accuracy, flops, name)

    @classmethod
    def from_file(cls, path: str | Path, arch_column: str, accuracy_column: str, flops_column: str | None = None,
                  space: SearchSpace | None = None, name: str | None = None) -> "TabularBenchmark":
        """A table from a CSV file (a header row names the columns) or a JSON file (a list
        of objects). Architectures are read with ``space.decode`` when the space has one,
        else as integers (``0-2-1``, or a JSON list). Without ``space``, the FLOPs column
        is required and a ``TableSpace`` is made whose i-th decision has as many choices
        as the largest value at position i plus one."""
        path = Path(path)
        name = name or path.name
        if not path.is_file():
            raise FileNotFoundError(f"benchmark file {path} does not exist")
        if space is None and flops_column is None:
            raise ValueError(f"{path}: a table without a space of its own needs flops_column, the column of its FLOPs")
        rows = _read_rows(path)
        needed = [c for c in (arch_column, accuracy_column, flops_column) if c is not None]
        missing = [c for c in needed if c not in rows[0][1]]
        if missing:
            raise ValueError(f"{path}: no column {missing} (it has {sorted(rows[0][1])}); name the columns "
                             "that hold the architecture, accuracy and FLOPs")
        decode = getattr(space, "decode", parse_architecture)
        archs, accuracy, flops = [], {}, {}
        for where, row in rows:
            try:
                arch = tuple(decode(row[arch_column]))
                accuracy[arch] = float(row[accuracy_column])
                if flops_column is not None:
                    flops[arch] = float(row[flops_column])
            except (ValueError, TypeError) as error:
                raise ValueError(f"{path}, {where}: {error}") from None
            archs.append(arch)
        if space is None:
            lengths = {len(a) for a in archs}
            if len(lengths) != 1:
                raise ValueError(f"{path}: architectures of different lengths {sorted(lengths)}; every row needs "
                                 "one choice per decision")
            decisions = [max(a[i] for a in archs) + 1 for i in range(lengths.pop())]
            space = TableSpace(decisions, flops, name=name)
        return cls(space, accuracy, flops if flops_column is not None else None, name)

    def __len__(self) -> int:
        return len(self.accuracy)

    @property
    def complete(self) -> bool:
        """Whether the table holds every architecture of its space; a search of a table
        that does not keeps to its rows."""
        return len(self.accuracy) == self.space.size()

    def query(self, arch: Sequence[int]) -> float:
        """Accuracy (%) of the architecture."""
        arch = self.space.validate(arch)
        if arch not in self.accuracy:
            raise KeyError(f"{self.space.encode(arch)} is not in {self.name}")
        return self.accuracy[arch]

    def flops(self, arch: Sequence[int]) -> float:
        return self._flops[self.space.validate(arch)]


def _read_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) pairs of a CSV or JSON table; ``where`` names the line or entry."""
    if path.suffix.lower() == ".json":
        try:
            entries = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError(f"{path}: a JSON table is a list of objects, one per architecture")
        rows = [(f"entry {k}", e) for k, e in enumerate(entries)]
    else:
        with path.open(newline="") as f:
            rows = [(f"line {line}", row) for line, row in enumerate(csv.DictReader(f), start=2)]
    if not rows:
        raise ValueError(f"{path} holds no architectures")
    return rows
