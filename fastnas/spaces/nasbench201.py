"""The NAS-Bench-201 space (Dong & Yang 2020) and its benchmark table.

A cell has 4 nodes; node i sums one op on each edge from every earlier node, 6 edges in
all, in the order of the benchmark's architecture strings
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``. Ops: none, skip_connect, nor_conv_1x1 and
nor_conv_3x3 (ReLU-Conv-BN), avg_pool_3x3. The network: 3x3 conv stem (C=16) + BN,
three stages of 5 cells (C = 16, 32, 64) joined by residual stride-2 blocks, BN-ReLU,
global pooling, FC.
"""

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from fastnas.flops import Counts, count
from fastnas.spaces.base import Architecture, PerDecisionCostSpace
from fastnas.spaces.tabular import TabularBenchmark

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to, from), string order
DATASET_COLUMNS = {
    "cifar10": "CIFAR10TestAccuracy200Epochs",
    "cifar100": "CIFAR100TestAccuracy200Epochs",
    "imagenet16-120": "ImageNetTestAccuracy200Epochs",
}


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1):
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(c_out),
        )


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def make_op(name: str, channels: int) -> nn.Module:
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(channels, channels, 1)
    if name == "nor_conv_3x3":
        return ReLUConvBN(channels, channels, 3)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    raise ValueError(f"unknown NAS-Bench-201 op {name!r}; choose one of {OPS}")


class Cell(nn.Module):
    def __init__(self, arch: Sequence[int], channels: int):
        super().__init__()
        self.edges = nn.ModuleList(make_op(OPS[choice], channels) for choice in arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for to in (1, 2, 3):
            nodes.append(sum(op(nodes[src]) for op, (dst, src) in zip(self.edges, EDGES) if dst == to))
        return nodes[3]


class ResidualReduction(nn.Module):
    """The stride-2 ResNet basic block between stages."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x)) + self.shortcut(F.avg_pool2d(x, 2, 2))


class Stem(nn.Sequential):
    def __init__(self, channels: int):
        super().__init__(nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))


class Head(nn.Module):
    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(x)).mean(dim=(2, 3)))


class NasBench201Network(nn.Module):
    def __init__(self, arch: Sequence[int], channels: int = 16, cells_per_stage: int = 5,
                 num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [Stem(channels)]
        c = channels
        for stage in range(3):
            if stage > 0:
                layers.append(ResidualReduction(c, 2 * c))
                c *= 2
            layers.extend(Cell(arch, c) for _ in range(cells_per_stage))
        self.body = nn.Sequential(*layers)
        self.head = Head(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class NasBench201Space(PerDecisionCostSpace):
    name = "nasbench201"

    def __init__(self, channels: int = 16, cells_per_stage: int = 5, num_classes: int = 10,
                 input_size: int = 32):
        self.channels = channels
        self.cells_per_stage = cells_per_stage
        self.num_classes = num_classes
        self.input_size = input_size

    @property
    def decisions(self) -> tuple[int, ...]:
        return (len(OPS),) * len(EDGES)

    def encode(self, arch: Sequence[int]) -> str:
        arch = self.validate(arch)
        nodes = []
        for to in (1, 2, 3):
            nodes.append("|" + "|".join(f"{OPS[a]}~{src}" for a, (dst, src) in zip(arch, EDGES) if dst == to) + "|")
        return "+".join(nodes)

    def decode(self, text: str) -> Architecture:
        """Parses a benchmark architecture string such as
        ``|nor_conv_3x3~0|+|none~0|skip_connect~1|+|...|``."""
        try:
            nodes = text.strip().split("+")
            entries = [e for node in nodes for e in node.strip("|").split("|")]
            if len(nodes) != 3 or len(entries) != len(EDGES):
                raise ValueError("wrong number of nodes or edges")
            arch = []
            for entry, (_, src) in zip(entries, EDGES):
                op, source = entry.split("~")
                if int(source) != src:
                    raise ValueError(f"edge {entry!r} should come from node {src}")
                arch.append(OPS.index(op))
        except ValueError as error:
            raise ValueError(f"malformed NAS-Bench-201 architecture string {text!r}: {error}") from None
        return tuple(arch)

    def build(self, arch: Sequence[int], fused: bool = True) -> NasBench201Network:
        # No fused op applies to these cells (single candidates per edge); `fused` is
        # accepted so every space builds the same way.
        return NasBench201Network(self.validate(arch), self.channels, self.cells_per_stage, self.num_classes)

    @cached_property
    def _cost_tables(self) -> tuple[Counts, list[list[Counts]]]:
        """Fixed (stem, reductions, head) costs, and the cost of each op on each edge
        summed over the cells of all stages."""
        arch = (0,) * len(EDGES)  # all-none: every counted cost is outside the cells
        fixed = count(self.build(arch), torch.zeros(1, 3, self.input_size, self.input_size))
        per_op = []
        for op in OPS:
            macs = params = 0
            size, c = self.input_size, self.channels
            for _ in range(3):
                counts = count(make_op(op, c), torch.zeros(1, c, size, size))
                macs += self.cells_per_stage * counts.macs
                params += self.cells_per_stage * counts.params
                size, c = (size - 1) // 2 + 1, 2 * c
            per_op.append(Counts(macs, params))
        return fixed, [per_op] * len(EDGES)


def nasbench201_benchmark(path: str | Path, dataset: str = "cifar10",
                          space: NasBench201Space | None = None) -> TabularBenchmark:
    """The 200-epoch test accuracies of every NAS-Bench-201 cell on ``dataset``, read from
    the benchmark's CSV (columns ``CIFAR10TestAccuracy200Epochs``,
    ``CIFAR100TestAccuracy200Epochs``, ``ImageNetTestAccuracy200Epochs``,
    ``ArchitectureString``). The file is user-supplied; fastnas never bundles it."""
    if dataset not in DATASET_COLUMNS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASET_COLUMNS)}")
    space = space or NasBench201Space(num_classes={"cifar10": 10, "cifar100": 100}.get(dataset, 120))
    return TabularBenchmark.from_file(path, "ArchitectureString", DATASET_COLUMNS[dataset], space=space,
                                      name=f"NAS-Bench-201 {dataset}")
