"""The CANAS search space (seed 000): the Dilated LightNet macro network with every one
of its units searched among ShuffleNet and Dilated LightNet units of 1, 2, 4 or 8 groups.

Choice encoding of a layer: 0-3 = ShuffleNet unit with g = 1, 2, 4, 8; 4-7 = Dilated
LightNet unit with g = 1, 2, 4, 8. An architecture is one choice per layer (16 layers
in the 224x224 and 32x32 variants, 6 in the MNIST one).
"""

import math
from collections.abc import Sequence
from dataclasses import replace
from functools import cached_property

import torch
from torch import nn

from fastnas.flops import Counts, count
from fastnas.models.networks import MacroLayout, UnitNetwork, UnitSpec, layout, make_unit, scale_channels
from fastnas.models.units import DEFAULT_DILATIONS, ClassifierHead, Stem
from fastnas.ops import MixedOp
from fastnas.spaces.base import Architecture, PerDecisionCostSpace

DEFAULT_GROUPS = (1, 2, 4, 8)


class CanasSpace(PerDecisionCostSpace):
    name = "canas"

    def __init__(
        self,
        variant: str = "imagenet",
        num_classes: int | None = None,
        width_mult: float = 1.0,
        groups: Sequence[int] = DEFAULT_GROUPS,
        dilations: Sequence[int] = DEFAULT_DILATIONS,
        macro: MacroLayout | None = None,
    ):
        base = macro or layout(variant)
        if num_classes is not None:
            base = replace(base, num_classes=num_classes)
        self.groups = tuple(groups)
        self.dilations = tuple(dilations)
        if width_mult != 1.0:
            multiple = 4 * math.lcm(*self.groups, len(self.dilations))
            base = replace(base, stage_channels=scale_channels(base.stage_channels, width_mult, multiple))
        for channels in base.stage_channels:
            for g in self.groups:
                if channels % g:
                    raise ValueError(
                        f"stage width {channels} is not divisible by groups={g}; every stage "
                        f"width must be divisible by all of {self.groups}"
                    )
        self.layout = base

    @property
    def decisions(self) -> tuple[int, ...]:
        return (2 * len(self.groups),) * self.layout.num_layers

    def unit_spec(self, choice: int) -> UnitSpec:
        n = len(self.groups)
        return UnitSpec(self.groups[choice % n], dilated=choice >= n, dilations=self.dilations)

    def choice_name(self, choice: int) -> str:
        spec = self.unit_spec(choice)
        return f"{'dilated' if spec.dilated else 'shuffle'}-g{spec.groups}"

    def encode(self, arch: Sequence[int]) -> str:
        return " ".join(self.choice_name(c) for c in self.validate(arch))

    def build(self, arch: Sequence[int], fused: bool = True) -> UnitNetwork:
        return UnitNetwork(self.layout, [self.unit_spec(c) for c in self.validate(arch)], fused=fused)

    def supernet(self, fused: bool = True) -> "CanasSupernet":
        return CanasSupernet(self, fused=fused)

    # ---- exact, cheap cost model --------------------------------------------------
    @cached_property
    def _cost_tables(self) -> tuple[Counts, list[list[Counts]]]:
        """Costs of the fixed stem + head, and of every (layer, choice) unit, counted
        once on the built modules; a network's cost is their sum."""
        lay = self.layout
        sizes = lay.layer_input_sizes()
        stem = count(
            Stem(lay.in_channels, lay.stem_channels, lay.stem_stride, lay.max_pool),
            torch.zeros(1, lay.in_channels, lay.input_size, lay.input_size),
        )
        last = (sizes[-1] - 1) // lay.layer_plan()[-1][2] + 1
        head = count(
            ClassifierHead(lay.stage_channels[-1], lay.num_classes),
            torch.zeros(1, lay.stage_channels[-1], last, last),
        )
        table = []
        for i, ((cin, cout, stride), size) in enumerate(zip(lay.layer_plan(), sizes)):
            example = torch.zeros(1, cin, size, size)
            table.append(
                [count(make_unit(self.unit_spec(c), cin, cout, stride, first=i == 0), example)
                 for c in range(self.decisions[i])]
            )
        fixed = Counts(stem.macs + head.macs, stem.params + head.params)
        return fixed, table

    def cheapest(self) -> Architecture:
        """The architecture with the fewest multiply-adds (costs are per layer)."""
        _, table = self._cost_tables
        return tuple(min(range(len(row)), key=lambda c: row[c].macs) for row in table)

    def costliest(self) -> Architecture:
        _, table = self._cost_tables
        return tuple(max(range(len(row)), key=lambda c: row[c].macs) for row in table)


class CanasSupernet(nn.Module):
    """Every candidate unit of every layer, each with its own weights (weight sharing
    over the DAG of all sub-models). ``forward(x, arch)`` runs only the sampled path,
    which is what a one-hot MixedOp mask computes; ``forward_weighted`` runs the
    MixedOps with arbitrary per-layer weights (e.g. softmax weights, for DARTS over
    this space)."""

    def __init__(self, space: CanasSpace, fused: bool = True):
        super().__init__()
        self.space = space
        lay = space.layout
        self.stem = Stem(lay.in_channels, lay.stem_channels, lay.stem_stride, lay.max_pool)
        self.layers = nn.ModuleList(
            MixedOp(
                [make_unit(space.unit_spec(c), cin, cout, stride, first=i == 0, fused=fused)
                 for c in range(space.decisions[i])],
                fused=fused,
            )
            for i, (cin, cout, stride) in enumerate(lay.layer_plan())
        )
        self.head = ClassifierHead(lay.stage_channels[-1], lay.num_classes)

    def forward(self, x: torch.Tensor, arch: Sequence[int]) -> torch.Tensor:
        x = self.stem(x)
        for layer, choice in zip(self.layers, arch):
            x = layer.candidates[choice](x)
        return self.head(x)

    def forward_weighted(self, x: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.stem(x)
        for layer, w in zip(self.layers, weights):
            x = layer(x, w)
        return self.head(x)

    def extract(self, arch: Sequence[int]) -> UnitNetwork:
        """A standalone network for ``arch`` carrying the supernet's shared weights."""
        arch = self.space.validate(arch)
        fused = self.layers[0].fused
        network = self.space.build(arch, fused=fused).to(next(self.parameters()).device)
        network.stem.load_state_dict(self.stem.state_dict())
        network.head.load_state_dict(self.head.state_dict())
        for unit, layer, choice in zip(network.units, self.layers, arch):
            unit.load_state_dict(layer.candidates[choice].state_dict())
        return network
