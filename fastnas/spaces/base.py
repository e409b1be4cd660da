"""The small interface every search space exposes to the search strategies."""

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

Architecture = tuple[int, ...]


def choice_counts(decisions: Sequence[int], owner: str = "") -> tuple[int, ...]:
    """``decisions`` as a tuple of ints, checked: a non-empty list of choice counts >= 1.
    ``owner`` names what is being built in the error."""
    if not decisions or min(decisions) < 1:
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}decisions must be a non-empty list of choice counts >= 1, got {decisions}")
    return tuple(int(n) for n in decisions)


class Candidates(Sequence):
    """The architectures a search may sample when not all of its space exists (a
    table's rows): in order, with set membership, drawn uniformly."""

    def __init__(self, archs: Sequence[Sequence[int]]):
        self._archs = [tuple(a) for a in archs]
        if not self._archs:
            raise ValueError("candidates must hold at least one architecture, or be None for the whole space")
        self._members = set(self._archs)

    def __len__(self) -> int:
        return len(self._archs)

    def __getitem__(self, index):
        return self._archs[index]

    def __iter__(self):
        return iter(self._archs)

    def __contains__(self, arch) -> bool:
        return arch in self._members

    def draw(self, n: int, generator: torch.Generator) -> list[Architecture]:
        """n candidates, uniformly and independently."""
        return [self._archs[i] for i in torch.randint(len(self._archs), (n,), generator=generator).tolist()]


class SearchSpace(ABC):
    """A space of architectures, each a sequence of decisions; decision i takes one of
    ``decisions[i]`` values. Strategies only use this interface."""

    name: str

    @property
    @abstractmethod
    def decisions(self) -> tuple[int, ...]:
        """Number of choices of every decision."""

    def validate(self, arch: Sequence[int]) -> Architecture:
        """The architecture as a tuple of ints; ValueError naming the bad position."""
        arch = tuple(int(a) for a in arch)
        if len(arch) != len(self.decisions):
            raise ValueError(
                f"{self.name}: an architecture has {len(self.decisions)} decisions, got {len(arch)}"
            )
        for i, (choice, n) in enumerate(zip(arch, self.decisions)):
            if not 0 <= choice < n:
                raise ValueError(f"{self.name}: decision {i} must be in [0, {n}), got {choice}")
        return arch

    def sample(self, generator: torch.Generator | None = None) -> Architecture:
        """A uniformly random architecture."""
        return tuple(int(torch.randint(n, (1,), generator=generator)) for n in self.decisions)

    def size(self) -> int:
        total = 1
        for n in self.decisions:
            total *= n
        return total

    @abstractmethod
    def encode(self, arch: Sequence[int]) -> str:
        """A readable description of the architecture."""

    @abstractmethod
    def build(self, arch: Sequence[int], fused: bool = True) -> nn.Module:
        """A standalone network for the architecture."""

    @abstractmethod
    def flops(self, arch: Sequence[int]) -> int:
        """Multiply-adds per sample of the built network (fastnas.flops conventions)."""

    @abstractmethod
    def params(self, arch: Sequence[int]) -> int:
        """Parameters of the built network."""


class PerDecisionCostSpace(SearchSpace):
    """A space whose cost is a fixed part plus one independent term per decision:
    subclasses provide ``_cost_tables`` = (fixed Counts, table[decision][choice] Counts),
    counted once on built modules, and get exact, cheap ``flops``/``params``."""

    _cost_tables: tuple  # (Counts, list[list[Counts]]), usually a cached_property

    def flops(self, arch: Sequence[int]) -> int:
        fixed, table = self._cost_tables
        return fixed.macs + sum(table[i][c].macs for i, c in enumerate(self.validate(arch)))

    def params(self, arch: Sequence[int]) -> int:
        fixed, table = self._cost_tables
        return fixed.params + sum(table[i][c].params for i, c in enumerate(self.validate(arch)))
