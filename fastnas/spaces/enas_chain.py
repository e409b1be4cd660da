"""The ENAS chain space of seed 003: a fixed head (3x3 conv), a chain of 6 searched nodes,
a fixed tail (global pooling, classifier). Each node applies one of conv1x1, conv3x3,
conv5x5 (ReLU-Conv-BN), max-pool 3x3 or avg-pool 3x3 (stride 1) to the previous node's
output plus the outputs of the earlier nodes the controller connects to it (node 0 is
the head): 5^6 * 2^15 ~ 5e8 architectures. Channels, stride and activation are fixed.

Decisions, node by node: the op of node k (5 choices), then one skip bit (2 choices) for
each earlier source 0..k-2 (the chain link from node k-1 is always there).
"""

from collections.abc import Sequence
from functools import cached_property

import torch
from torch import nn
import torch.nn.functional as F

from fastnas.flops import Counts, count
from fastnas.spaces.base import Architecture, SearchSpace

OPS = ("conv1x1", "conv3x3", "conv5x5", "max_pool", "avg_pool")
NODES = 6


def make_op(name: str, channels: int) -> nn.Module:
    if name.startswith("conv"):
        k = int(name[-1])
        return nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, k, padding=k // 2, bias=False),
                             nn.BatchNorm2d(channels))
    if name == "max_pool":
        return nn.MaxPool2d(3, 1, 1)
    if name == "avg_pool":
        return nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    raise ValueError(f"unknown ENAS chain op {name!r}; choose one of {OPS}")


def decode(arch: Sequence[int]) -> list[tuple[int, list[int]]]:
    """[(op index, skip sources)] per node from a flat decision list."""
    nodes, i = [], 0
    for k in range(1, NODES + 1):
        op = arch[i]
        bits = arch[i + 1:i + k]
        nodes.append((op, [src for src, bit in enumerate(bits) if bit]))
        i += k
    return nodes


class _Head(nn.Sequential):
    def __init__(self, in_channels: int, channels: int):
        super().__init__(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                         nn.ReLU())


class _Tail(nn.Module):
    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(F.relu(x).mean(dim=(2, 3)))


def _run_chain(head, node_ops, tail, x, nodes):
    outputs = [head(x)]
    for (op_index, skips), op in zip(nodes, node_ops):
        inp = outputs[-1]
        for src in skips:
            inp = inp + outputs[src]
        outputs.append(op(inp) if not isinstance(op, nn.ModuleList) else op[op_index](inp))
    return tail(outputs[-1])


class ChainNetwork(nn.Module):
    def __init__(self, arch: Sequence[int], channels: int, num_classes: int, in_channels: int):
        super().__init__()
        self.nodes = decode(arch)
        self.head = _Head(in_channels, channels)
        self.ops = nn.ModuleList(make_op(OPS[op], channels) for op, _ in self.nodes)
        self.tail = _Tail(channels, num_classes)

    def forward(self, x):
        return _run_chain(self.head, self.ops, self.tail, x, self.nodes)


class ChainSupernet(nn.Module):
    """Every op of every node with its own weights; ``forward(x, arch)`` runs one path."""

    def __init__(self, space: "EnasChainSpace"):
        super().__init__()
        self.space = space
        self.head = _Head(space.in_channels, space.channels)
        self.candidates = nn.ModuleList(
            nn.ModuleList(make_op(name, space.channels) for name in OPS) for _ in range(NODES))
        self.tail = _Tail(space.channels, space.num_classes)

    def forward(self, x, arch):
        return _run_chain(self.head, self.candidates, self.tail, x, decode(arch))

    def extract(self, arch) -> ChainNetwork:
        arch = self.space.validate(arch)
        network = self.space.build(arch).to(next(self.parameters()).device)
        network.head.load_state_dict(self.head.state_dict())
        network.tail.load_state_dict(self.tail.state_dict())
        for op, candidates, (op_index, _) in zip(network.ops, self.candidates, decode(arch)):
            op.load_state_dict(candidates[op_index].state_dict())
        return network


class EnasChainSpace(SearchSpace):
    name = "enas_chain"

    def __init__(self, channels: int = 32, num_classes: int = 10, in_channels: int = 3, input_size: int = 32):
        self.channels, self.num_classes = channels, num_classes
        self.in_channels, self.input_size = in_channels, input_size

    @property
    def decisions(self) -> tuple[int, ...]:
        result = []
        for k in range(1, NODES + 1):
            result += [len(OPS)] + [2] * (k - 1)
        return tuple(result)

    def encode(self, arch: Sequence[int]) -> str:
        parts = []
        for k, (op, skips) in enumerate(decode(self.validate(arch)), start=1):
            parts.append(f"{k}:{OPS[op]}" + (f"+skip{skips}" if skips else ""))
        return " ".join(parts)

    def build(self, arch: Sequence[int], fused: bool = True) -> ChainNetwork:
        # No fused op applies to single-candidate chain nodes; `fused` keeps the interface.
        return ChainNetwork(self.validate(arch), self.channels, self.num_classes, self.in_channels)

    def supernet(self, fused: bool = True) -> ChainSupernet:
        return ChainSupernet(self)

    @cached_property
    def _costs(self) -> tuple[Counts, list[Counts]]:
        size = self.input_size
        head = count(_Head(self.in_channels, self.channels), torch.zeros(1, self.in_channels, size, size))
        tail = count(_Tail(self.channels, self.num_classes), torch.zeros(1, self.channels, size, size))
        per_op = [count(make_op(name, self.channels), torch.zeros(1, self.channels, size, size)) for name in OPS]
        return Counts(head.macs + tail.macs, head.params + tail.params), per_op

    def flops(self, arch: Sequence[int]) -> int:
        fixed, per_op = self._costs
        return fixed.macs + sum(per_op[op].macs for op, _ in decode(self.validate(arch)))

    def params(self, arch: Sequence[int]) -> int:
        fixed, per_op = self._costs
        return fixed.params + sum(per_op[op].params for op, _ in decode(self.validate(arch)))

    def _uniform(self, op: int) -> Architecture:
        return tuple(c for k in range(1, NODES + 1) for c in [op] + [0] * (k - 1))

    def cheapest(self) -> Architecture:
        _, per_op = self._costs
        return self._uniform(min(range(len(OPS)), key=lambda i: per_op[i].macs))

    def costliest(self) -> Architecture:
        _, per_op = self._costs
        return self._uniform(max(range(len(OPS)), key=lambda i: per_op[i].macs))


__all__ = ["Architecture", "ChainNetwork", "ChainSupernet", "EnasChainSpace", "OPS"]
