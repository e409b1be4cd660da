"""The DARTS search space (Liu et al. 2019) and its multi-level variant (seed 002).

A cell has two input nodes (the previous two cells), four intermediate nodes each summing
a mixed op over every earlier node (14 edges), and outputs the concatenation of the
intermediate nodes. The search supernet stacks ``layers`` cells with reduction cells at
layers/3 and 2*layers/3. Architecture parameters are registered nn.Parameters, one set per
cell type (``normal``/``reduce``), or per level in the multi-level supernet: ``low_normal``,
``low_reduce``, ``mid_normal``, ``mid_reduce``, ``high_normal`` (the high level ends in the
classifier's pooling, so it has no reduction cell).

With ``fused=True`` every depthwise conv runs on fastnas's depthwise kernel, every 1x1
conv on its pointwise GEMM path, the four convolution candidates of an edge share one
ReLU of the edge input, its two poolings are one ``pool3x3_pair``, and its final BNs
and weighted sum are one fused ``batch_norm_mixed_op``; ``fused=False`` builds the same
parameters on plain PyTorch modules.
"""

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn
import torch.nn.functional as F

from fastnas.ops import MultiDilationDWConv2d, ShuffleGConv1x1, functional, reference
from fastnas.spaces.base import SearchSpace

PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
CONV_PRIMITIVES = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
STEPS = 4  # intermediate nodes per cell
LEVELS = ("low", "mid", "high")


# ---- operations ---------------------------------------------------------------------------
def _depthwise(channels: int, kernel_size: int, stride: int, dilation: int, fused: bool) -> nn.Module:
    if fused:
        return MultiDilationDWConv2d(channels, kernel_size, (dilation,), stride=stride)
    return nn.Conv2d(channels, channels, kernel_size, stride, dilation * (kernel_size - 1) // 2,
                     dilation=dilation, groups=channels, bias=False)


def _pointwise(c_in: int, c_out: int, fused: bool) -> nn.Module:
    if fused:
        return ShuffleGConv1x1(c_in, c_out, groups=1, shuffle=False)
    return nn.Conv2d(c_in, c_out, 1, bias=False)


class ReLUConvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int, affine: bool = True, fused: bool = True):
        super().__init__()
        self.conv = _pointwise(c_in, c_out, fused)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x):
        return self.bn(self.conv(F.relu(x)))


class DilConv(nn.Module):
    """ReLU -> depthwise KxK (dilation d) -> 1x1 -> BN. ``pre_relu=False`` when the caller
    already applied the ReLU (shared across an edge's candidates)."""

    def __init__(self, c_in, c_out, kernel_size, stride, dilation, affine=True, fused=True, pre_relu=True):
        super().__init__()
        self.pre_relu = pre_relu
        self.depthwise = _depthwise(c_in, kernel_size, stride, dilation, fused)
        self.pointwise = _pointwise(c_in, c_out, fused)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    @property
    def final_norm(self) -> nn.BatchNorm2d:
        return self.bn

    def forward(self, x, normalize: bool = True):
        if self.pre_relu:
            x = F.relu(x)
        x = self.pointwise(self.depthwise(x))
        return self.bn(x) if normalize else x


class SepConv(nn.Module):
    """Two DilConv(dilation 1) blocks, the first with the stride."""

    def __init__(self, c_in, c_out, kernel_size, stride, affine=True, fused=True, pre_relu=True):
        super().__init__()
        self.first = DilConv(c_in, c_in, kernel_size, stride, 1, affine, fused, pre_relu)
        self.second = DilConv(c_in, c_out, kernel_size, 1, 1, affine, fused)

    @property
    def final_norm(self) -> nn.BatchNorm2d:
        return self.second.bn

    def forward(self, x, normalize: bool = True):
        return self.second(self.first(x), normalize)


class Zero(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Stride-2 skip: two offset 1x1 stride-2 convs, concatenated, BN."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    @property
    def final_norm(self) -> nn.BatchNorm2d:
        return self.bn

    def forward(self, x, normalize: bool = True):
        x = F.relu(x)
        x = torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1)
        return self.bn(x) if normalize else x


class PoolBN(nn.Module):
    """A search edge's pooling candidate: the pool, then BN without affine (as DARTS)."""

    def __init__(self, pool: nn.Module, channels: int):
        super().__init__()
        self.pool = pool
        self.bn = nn.BatchNorm2d(channels, affine=False)

    @property
    def final_norm(self) -> nn.BatchNorm2d:
        return self.bn

    def forward(self, x, normalize: bool = True):
        x = self.pool(x)
        return self.bn(x) if normalize else x


def make_op(name: str, channels: int, stride: int, affine: bool = True, fused: bool = True,
            pre_relu: bool = True) -> nn.Module:
    if name == "none":
        return Zero(stride)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride, 1)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(channels, channels, affine)
    if name in ("sep_conv_3x3", "sep_conv_5x5"):
        return SepConv(channels, channels, int(name[-1]), stride, affine, fused, pre_relu)
    if name in ("dil_conv_3x3", "dil_conv_5x5"):
        return DilConv(channels, channels, int(name[-1]), stride, 2, affine, fused, pre_relu)
    raise ValueError(f"unknown DARTS op {name!r}; choose one of {PRIMITIVES}")


# ---- genotypes ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Genotype:
    """Derived cells: for each cell key ("normal", "reduce", or per level "low_normal",
    "low_reduce", "mid_normal", "mid_reduce", "high_normal") 8 (op, input node) pairs, two
    per intermediate node; the cell outputs the concatenation of nodes ``concat``."""

    cells: dict[str, tuple[tuple[str, int], ...]]
    concat: tuple[int, ...] = (2, 3, 4, 5)

    def __post_init__(self):
        if not self.cells:
            raise ValueError("a genotype needs at least one cell")
        for key, cell in self.cells.items():
            if len(cell) != 2 * STEPS:
                raise ValueError(f"genotype cell {key!r} has {len(cell)} edges; a cell has {2 * STEPS}")
            for i, (op, node) in enumerate(cell):
                if op not in PRIMITIVES or op == "none":
                    raise ValueError(f"genotype cell {key!r}: unknown op {op!r} on edge {i}")
                if not 0 <= node < 2 + i // 2:
                    raise ValueError(f"genotype cell {key!r}: edge {i} reads node {node}, which does not precede it")

    def cell(self, kind: str, level: str | None = None) -> tuple[tuple[str, int], ...]:
        """The cell of a kind ("normal"/"reduce") at a level, falling back to the shared one."""
        if level is not None and f"{level}_{kind}" in self.cells:
            return self.cells[f"{level}_{kind}"]
        if kind in self.cells:
            return self.cells[kind]
        raise KeyError(f"the genotype has no {kind} cell for level {level} (cells: {sorted(self.cells)})")

    def to_json(self) -> str:
        return json.dumps({"cells": {k: [list(e) for e in v] for k, v in self.cells.items()},
                           "concat": list(self.concat)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Genotype":
        try:
            data = json.loads(text)
            cells = {k: tuple((str(op), int(node)) for op, node in v) for k, v in data["cells"].items()}
            return cls(cells, tuple(data.get("concat", (2, 3, 4, 5))))
        except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError) as error:
            raise ValueError(f"malformed genotype JSON: {error}") from None

    def __str__(self) -> str:
        return "\n".join(f"{k}: " + " ".join(f"{op}<-{node}" for op, node in v) for k, v in self.cells.items())


# The published DARTS cells (Liu et al. 2019): first order (V1) and second order (V2).
DARTS_V1 = Genotype({
    "normal": (("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
               ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)),
    "reduce": (("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
               ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)),
})
DARTS_V2 = Genotype({
    "normal": (("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
               ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)),
    "reduce": (("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
               ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)),
})


def edge_count() -> int:
    return sum(2 + i for i in range(STEPS))


def derive_cell(weights: torch.Tensor) -> tuple[tuple[str, int], ...]:
    """DARTS derivation from one cell's (14, 8) softmax weights: on each edge the strongest
    op other than none; each node keeps its two strongest incoming edges."""
    none = PRIMITIVES.index("none")
    cell, start = [], 0
    for node in range(STEPS):
        n_inputs = 2 + node
        w = weights[start:start + n_inputs]
        strength = []
        for src in range(n_inputs):
            best = max((k for k in range(len(PRIMITIVES)) if k != none), key=lambda k: float(w[src, k]))
            strength.append((float(w[src, best]), src, PRIMITIVES[best]))
        for _, src, op in sorted(strength, key=lambda s: -s[0])[:2]:
            cell.append((op, src))
        start += n_inputs
    return tuple(cell)


def architecture_entropy(alphas: Sequence[torch.Tensor]) -> torch.Tensor:
    """Seed 002, Eq. 6: -sum alpha_bar ln alpha_bar over every edge of every cell set."""
    total = 0.0
    for a in alphas:
        p = torch.softmax(a, dim=-1)
        total = total - (p * torch.log_softmax(a, dim=-1)).sum()
    return total


# ---- search supernet -------------------------------------------------------------------------
class SearchEdge(nn.Module):
    """Every candidate op of one edge, weighted. Fused, the convolution candidates share
    the ReLU of the edge input, both poolings come from one pool3x3_pair pass, "none"
    (exactly zero) is never computed, and the candidates' final BNs and the weighted sum
    run as one batch_norm_mixed_op, which never stores the normalised outputs."""

    def __init__(self, channels: int, stride: int, fused: bool):
        super().__init__()
        self.fused, self.stride = fused, stride
        ops = []
        for name in PRIMITIVES:
            op = make_op(name, channels, stride, affine=False, fused=fused, pre_relu=not (fused and name in CONV_PRIMITIVES))
            ops.append(PoolBN(op, channels) if "pool" in name else op)
        self.candidates = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            return reference.mixed_op([op(x) for op in self.candidates], weights)
        relu = F.relu(x)
        pooled = dict(zip(("max_pool_3x3", "avg_pool_3x3"), functional.pool3x3_pair(x, self.stride)))
        outputs, norms = [], []
        # "none" is PRIMITIVES[0]: candidates 1.. are computed, weighted by weights[1:].
        for name, op in zip(PRIMITIVES[1:], self.candidates[1:]):
            norm = getattr(op, "final_norm", None)  # None: the identity skip
            if name in pooled:
                outputs.append(pooled[name])
            else:
                inputs = relu if name in CONV_PRIMITIVES else x
                outputs.append(op(inputs) if norm is None else op(inputs, normalize=False))
            norms.append(norm)
        return functional.batch_norm_mixed_op(outputs, weights[1:], norms)


class SearchCell(nn.Module):
    def __init__(self, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool, fused: bool):
        super().__init__()
        self.reduction = reduction
        self.pre0 = FactorizedReduce(c_pp, c, affine=False) if reduction_prev else ReLUConvBN(c_pp, c, False, fused)
        self.pre1 = ReLUConvBN(c_p, c, False, fused)
        self.edges = nn.ModuleList(
            SearchEdge(c, 2 if reduction and src < 2 else 1, fused)
            for node in range(STEPS) for src in range(2 + node)
        )

    def forward(self, s0, s1, weights):
        states = [self.pre0(s0), self.pre1(s1)]
        offset = 0
        for node in range(STEPS):
            states.append(sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states)))
            offset += len(states) - 1
        return torch.cat(states[-STEPS:], dim=1)


def cell_keys(layers: int, multilevel: bool) -> list[str]:
    """The architecture-parameter set each cell of the supernet uses. Multi-level: cells
    before the first reduction are low, the first reduction closes the low level, and
    so on; the high level has normal cells only."""
    first, second = layers // 3, 2 * layers // 3
    keys = []
    for i in range(layers):
        kind = "reduce" if i in (first, second) else "normal"
        if not multilevel:
            keys.append(kind)
        else:
            level = "low" if i <= first else "mid" if i <= second else "high"
            keys.append(f"{level}_{kind}")
    return keys


class DartsSupernet(nn.Module):
    """The DARTS search network: stem, ``layers`` search cells, global pooling, classifier."""

    def __init__(self, channels: int = 16, num_classes: int = 10, layers: int = 8, multilevel: bool = False,
                 in_channels: int = 3, stem_multiplier: int = 3, fused: bool = True):
        super().__init__()
        if layers < 3:
            raise ValueError(f"layers={layers}; the supernet needs at least 3 cells (two are reductions)")
        self.multilevel = multilevel
        self.keys = cell_keys(layers, multilevel)
        c_curr = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_pp, c_p, c_curr = c_curr, c_curr, channels
        cells, reduction_prev = [], False
        for key in self.keys:
            reduction = key.endswith("reduce")
            if reduction:
                c_curr *= 2
            cells.append(SearchCell(c_pp, c_p, c_curr, reduction, reduction_prev, fused))
            reduction_prev = reduction
            c_pp, c_p = c_p, STEPS * c_curr
        self.cells = nn.ModuleList(cells)
        self.classifier = nn.Linear(c_p, num_classes)
        # Architecture parameters: registered, so they live in state_dict and move with .to().
        self.alphas = nn.ParameterDict(
            {key: nn.Parameter(1e-3 * torch.randn(edge_count(), len(PRIMITIVES))) for key in dict.fromkeys(self.keys)}
        )

    def weight_parameters(self) -> list[nn.Parameter]:
        alpha_ids = {id(p) for p in self.alphas.parameters()}
        return [p for p in self.parameters() if id(p) not in alpha_ids]

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas.values())

    @contextlib.contextmanager
    def frozen_weights(self):
        """Weights stop requiring gradients, so an architecture step's backward skips
        every weight gradient (custom ops decide that at forward time)."""
        flags = [(p, p.requires_grad) for p in self.weight_parameters()]
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = {key: torch.softmax(a, dim=-1) for key, a in self.alphas.items()}
        s0 = s1 = self.stem(x)
        for cell, key in zip(self.cells, self.keys):
            s0, s1 = s1, cell(s0, s1, weights[key])
        return self.classifier(s1.mean(dim=(2, 3)))

    def entropy(self) -> torch.Tensor:
        return architecture_entropy(self.arch_parameters())

    @torch.no_grad()
    def genotype(self) -> Genotype:
        # In network order (low, mid, high), not the ParameterDict's sorted order.
        return Genotype({key: derive_cell(torch.softmax(self.alphas[key], dim=-1).cpu())
                         for key in dict.fromkeys(self.keys)})


def skip_counts(genotype: Genotype) -> dict[str, int]:
    """Number of skip_connect ops in each derived cell (the seed's coupling analysis)."""
    return {key: sum(op == "skip_connect" for op, _ in cell) for key, cell in genotype.cells.items()}


# ---- evaluation networks -------------------------------------------------------------------
def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


class EvalCell(nn.Module):
    def __init__(self, cell: Sequence[tuple[str, int]], concat: Sequence[int], c_pp: int, c_p: int, c: int,
                 reduction: bool, reduction_prev: bool, fused: bool):
        super().__init__()
        self.pre0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, True, fused)
        self.pre1 = ReLUConvBN(c_p, c, True, fused)
        self.ops = nn.ModuleList(make_op(op, c, 2 if reduction and node < 2 else 1, True, fused) for op, node in cell)
        self.inputs = [node for _, node in cell]
        self.concat = list(concat)
        self.multiplier = len(self.concat)

    def forward(self, s0, s1, drop_prob: float):
        states = [self.pre0(s0), self.pre1(s1)]
        for node in range(STEPS):
            total = 0
            for k in (2 * node, 2 * node + 1):
                h = self.ops[k](states[self.inputs[k]])
                if self.training and drop_prob > 0 and not isinstance(self.ops[k], nn.Identity):
                    h = drop_path(h, drop_prob)
                total = total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """The DARTS auxiliary classifier after the second reduction: ReLU, 5x5 average pool
    to 2x2 (stride 3 on CIFAR's 8x8 maps, stride 2 on 7x7 ones: ImageNet, or 28x28
    digits), 1x1 conv 128, BN, ReLU, 2x2 conv 768, BN (not on ImageNet), ReLU, linear."""

    def __init__(self, channels: int, num_classes: int, imagenet: bool = False):
        super().__init__()
        layers = [
            nn.Conv2d(channels, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
        ]
        if not imagenet:
            layers.append(nn.BatchNorm2d(768))
        layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        x = F.avg_pool2d(F.relu(x), 5, stride=3 if x.shape[-1] >= 8 else 2, padding=0, count_include_pad=False)
        return self.classifier(self.features(x).flatten(1))


class _EvalNetwork(nn.Module):
    def _build_cells(self, genotype: Genotype, c_pp, c_p, channels, layers, fused, reduction_prev=False):
        keys = cell_keys(layers, multilevel=True)
        cells, c_curr = [], channels
        self.aux_position = 2 * layers // 3
        for i, key in enumerate(keys):
            level, kind = key.split("_")
            reduction = kind == "reduce"
            if reduction:
                c_curr *= 2
            cell = EvalCell(genotype.cell(kind, level), genotype.concat, c_pp, c_p, c_curr, reduction,
                            reduction_prev, fused)
            reduction_prev = reduction
            cells.append(cell)
            c_pp, c_p = c_p, cell.multiplier * c_curr
            if i == self.aux_position:
                self.aux_channels = c_p
        self.cells = nn.ModuleList(cells)
        return c_p

    def forward(self, x):
        logits_aux = None
        s0, s1 = self._stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_position and self.auxiliary is not None and self.training:
                logits_aux = self.auxiliary(s1)
        logits = self.classifier(self.global_pool(s1).flatten(1))
        return (logits, logits_aux) if self.training and self.auxiliary is not None else logits


class NetworkCIFAR(_EvalNetwork):
    """The DARTS CIFAR evaluation network (20 cells, C=36 in the paper); per-level cells of
    a multi-level genotype go to their level, shared ones everywhere. In training mode with
    ``auxiliary`` it returns (logits, auxiliary logits)."""

    def __init__(self, channels: int, num_classes: int, layers: int, auxiliary: bool, genotype: Genotype,
                 drop_path_prob: float = 0.0, fused: bool = True, in_channels: int = 3):
        super().__init__()
        self.drop_path_prob = drop_path_prob
        c_curr = 3 * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_p = self._build_cells(genotype, c_curr, c_curr, channels, layers, fused)
        self.auxiliary = AuxiliaryHead(self.aux_channels, num_classes) if auxiliary else None
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def _stem(self, x):
        s = self.stem(x)
        return s, s


class NetworkImageNet(_EvalNetwork):
    """The DARTS ImageNet (mobile setting) evaluation network: 14 cells, C=48, two stride-2
    stems, for 224x224 inputs."""

    def __init__(self, channels: int, num_classes: int, layers: int, auxiliary: bool, genotype: Genotype,
                 drop_path_prob: float = 0.0, fused: bool = True):
        super().__init__()
        self.drop_path_prob = drop_path_prob
        self.stem0 = nn.Sequential(
            nn.Conv2d(3, channels // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        # The stems leave s0 at stride 4 and s1 at stride 8: the first cell reduces s0.
        c_p = self._build_cells(genotype, channels, channels, channels, layers, fused, reduction_prev=True)
        self.auxiliary = AuxiliaryHead(self.aux_channels, num_classes, imagenet=True) if auxiliary else None
        self.global_pool = nn.AvgPool2d(7)
        self.classifier = nn.Linear(c_p, num_classes)

    def _stem(self, x):
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


def count_parameters(model: nn.Module, include_auxiliary: bool = False) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if include_auxiliary or "auxiliary" not in name)


# ---- the discrete genotype space -------------------------------------------------------------
class DartsGenotypeSpace(SearchSpace):
    """Derived DARTS architectures as a discrete space with the SearchSpace interface, so
    the REINFORCE/CAS strategies and the cost model work on DARTS cells too. Per cell set
    (``normal``/``reduce``, or the five per-level sets) and per intermediate node i: the two
    inputs (nodes 0..i+1) and their ops (the 7 primitives other than none). ``build``
    gives the evaluation network (no auxiliary head); costs come from per-edge tables."""

    name = "darts"
    EDGE_OPS = tuple(p for p in PRIMITIVES if p != "none")

    def __init__(self, channels: int = 36, layers: int = 20, num_classes: int = 10, multilevel: bool = False,
                 input_size: int = 32, in_channels: int = 3):
        self.channels, self.layers, self.num_classes = channels, layers, num_classes
        self.multilevel, self.input_size, self.in_channels = multilevel, input_size, in_channels
        self.keys = list(dict.fromkeys(cell_keys(layers, multilevel)))

    @property
    def decisions(self) -> tuple[int, ...]:
        per_cell = []
        for node in range(STEPS):
            per_cell += [node + 2, len(self.EDGE_OPS), node + 2, len(self.EDGE_OPS)]
        return tuple(per_cell * len(self.keys))

    def genotype(self, arch) -> Genotype:
        arch = self.validate(arch)
        cells, per = {}, 4 * STEPS
        for k, key in enumerate(self.keys):
            chunk = arch[k * per:(k + 1) * per]
            cells[key] = tuple((self.EDGE_OPS[chunk[4 * n + 2 * e + 1]], chunk[4 * n + 2 * e])
                               for n in range(STEPS) for e in range(2))
        return Genotype(cells)

    def encode(self, arch) -> str:
        return str(self.genotype(arch))

    def build(self, arch, fused: bool = True) -> NetworkCIFAR:
        return NetworkCIFAR(self.channels, self.num_classes, self.layers, False, self.genotype(arch),
                            fused=fused, in_channels=self.in_channels)

    def _cell_geometry(self) -> list[tuple[str, int, int, bool]]:
        """(cell key, channels C, input spatial size, reduction) of every cell."""
        geometry, c, size = [], self.channels, self.input_size
        for key in cell_keys(self.layers, multilevel=True):
            level, kind = key.split("_")
            reduction = kind == "reduce"
            if reduction:
                c *= 2
            own_key = key if self.multilevel else kind
            geometry.append((own_key, c, size, reduction))
            if reduction:
                size = (size - 1) // 2 + 1
        return geometry

    @cached_property
    def _tables(self):
        """Fixed costs (all edges max-pools, which cost nothing) and, per cell, the cost of
        every (op, stride) edge."""
        from fastnas.flops import count

        base_arch = [0, self.EDGE_OPS.index("max_pool_3x3")] * (2 * STEPS * len(self.keys))
        example = torch.zeros(1, self.in_channels, self.input_size, self.input_size)
        fixed = count(self.build(base_arch), example)
        tables = []
        for key, c, size, reduction in self._cell_geometry():
            table = {}
            # In a reduction cell the edges from the two inputs have stride 2; the edges
            # between intermediate nodes already run at the reduced size.
            reduced = (size - 1) // 2 + 1
            for stride, edge_size in (((2, size), (1, reduced)) if reduction else ((1, size),)):
                for op in self.EDGE_OPS:
                    table[(op, stride)] = count(make_op(op, c, stride), torch.zeros(1, c, edge_size, edge_size))
            tables.append((key, reduction, table))
        return fixed, tables

    def _cost(self, arch, field: str) -> int:
        genotype = self.genotype(arch)
        fixed, tables = self._tables
        total = getattr(fixed, field)
        for key, reduction, table in tables:
            for op, node in genotype.cells[key]:
                total += getattr(table[(op, 2 if reduction and node < 2 else 1)], field)
        return total

    def flops(self, arch) -> int:
        return self._cost(arch, "macs")

    def params(self, arch) -> int:
        return self._cost(arch, "params")
