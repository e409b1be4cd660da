"""Fixed networks of the ShuffleNet family: ShuffleNet v1, the hand-made Dilated
LightNet, and the layout (stem, three stages of units, head) that the CANAS search
space shares with them."""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from fastnas.models.units import DEFAULT_DILATIONS, ClassifierHead, ShuffleUnit, Stem

# ShuffleNet v1 stage output channels at width 1x, per group count (Zhang et al. 2018).
SHUFFLENET_STAGE_CHANNELS = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}


@dataclass(frozen=True)
class MacroLayout:
    """Stem, three stages of units (first unit of each stage has stride 2), head.

    Variants (seed 000): ``imagenet`` 224x224 input, stride-2 stem and max-pool;
    ``cifar`` 32x32 input, the stem's stride and the max-pool removed; ``mnist`` 28x28
    grey input, the max-pool removed (the stem keeps its stride), 2 units per stage,
    width 1/6.
    """

    input_size: int = 224
    in_channels: int = 3
    num_classes: int = 1000
    stem_channels: int = 24
    stem_stride: int = 2
    max_pool: bool = True
    stage_channels: tuple[int, ...] = (288, 576, 1152)
    stage_repeats: tuple[int, ...] = (4, 8, 4)

    @property
    def num_layers(self) -> int:
        return sum(self.stage_repeats)

    def layer_plan(self) -> list[tuple[int, int, int]]:
        """(in_channels, out_channels, stride) of every unit, in order."""
        plan = []
        channels = self.stem_channels
        for out_channels, repeats in zip(self.stage_channels, self.stage_repeats):
            for i in range(repeats):
                plan.append((channels, out_channels, 2 if i == 0 else 1))
                channels = out_channels
        return plan

    def layer_input_sizes(self) -> list[int]:
        """Spatial size of each unit's input (square inputs)."""
        size = _down(self.input_size, self.stem_stride)
        if self.max_pool:
            size = _down(size, 2)
        sizes = []
        for _, _, stride in self.layer_plan():
            sizes.append(size)
            size = _down(size, stride)
        return sizes


def _down(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


VARIANTS = {
    "imagenet": MacroLayout(),
    "cifar": MacroLayout(input_size=32, num_classes=10, stem_stride=1, max_pool=False),
    "mnist": MacroLayout(
        input_size=28, in_channels=1, num_classes=10, stem_stride=2, max_pool=False,
        stage_channels=(48, 96, 192), stage_repeats=(2, 2, 2),
    ),
}


def layout(variant: str = "imagenet", **overrides) -> MacroLayout:
    """The layout of a named input variant, with fields overridden (e.g. num_classes)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown input variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return replace(VARIANTS[variant], **overrides)


def scale_channels(channels: Sequence[int], width_mult: float, multiple: int) -> tuple[int, ...]:
    """Channels times width_mult, rounded to a multiple of `multiple` (at least one)."""
    return tuple(max(multiple, int(round(c * width_mult / multiple)) * multiple) for c in channels)


@dataclass(frozen=True)
class UnitSpec:
    """One layer of a network: a ShuffleNet unit, or a Dilated LightNet unit."""

    groups: int
    dilated: bool = False
    dilations: tuple[int, ...] = field(default=DEFAULT_DILATIONS)


def make_unit(spec: UnitSpec, in_channels: int, out_channels: int, stride: int, first: bool,
              fused: bool = True) -> ShuffleUnit:
    return ShuffleUnit(
        in_channels,
        out_channels,
        stride,
        spec.groups,
        dilations=spec.dilations if spec.dilated else None,
        first_pointwise_groups=1 if first else None,
        fused=fused,
    )


class UnitNetwork(nn.Module):
    """Stem -> units -> classifier head."""

    def __init__(self, layout: MacroLayout, units: Sequence[UnitSpec], fused: bool = True):
        super().__init__()
        plan = layout.layer_plan()
        if len(units) != len(plan):
            raise ValueError(f"got {len(units)} unit specs for a layout of {len(plan)} layers")
        self.layout = layout
        self.specs = tuple(units)
        self.stem = Stem(layout.in_channels, layout.stem_channels, layout.stem_stride, layout.max_pool)
        self.units = nn.Sequential(
            *[
                make_unit(spec, cin, cout, stride, first=i == 0, fused=fused)
                for i, (spec, (cin, cout, stride)) in enumerate(zip(units, plan))
            ]
        )
        self.head = ClassifierHead(layout.stage_channels[-1], layout.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.units(self.stem(x)))


def shufflenet_v1(
    groups: int = 3,
    width_mult: float = 1.0,
    num_classes: int = 1000,
    variant: str = "imagenet",
    fused: bool = True,
) -> UnitNetwork:
    """ShuffleNet v1 (Zhang et al. 2018): stage repeats 4/8/4, bottleneck out/4, the
    first pointwise conv of stage 2 ungrouped, the standard width per group count."""
    if groups not in SHUFFLENET_STAGE_CHANNELS:
        raise ValueError(f"groups={groups}; ShuffleNet v1 defines {sorted(SHUFFLENET_STAGE_CHANNELS)}")
    base = layout(variant, num_classes=num_classes)
    channels = scale_channels(SHUFFLENET_STAGE_CHANNELS[groups], width_mult, 4 * groups)
    net_layout = replace(base, stage_channels=channels)
    return UnitNetwork(net_layout, [UnitSpec(groups)] * net_layout.num_layers, fused=fused)


def dilated_lightnet_pattern(layout: MacroLayout, groups: int,
                             dilations: Sequence[int] = DEFAULT_DILATIONS) -> list[UnitSpec]:
    """Seed 000 mixes ShuffleNet and Dilated LightNet units so stacked dilated convs do
    not amplify the gridding effect; its Fig. 2 is not in the text we have, so we
    alternate them within each stage: the stride-2 unit and every second unit after it
    are ShuffleNet units, the others Dilated LightNet units."""
    specs = []
    for repeats in layout.stage_repeats:
        for i in range(repeats):
            specs.append(UnitSpec(groups, dilated=i % 2 == 1, dilations=tuple(dilations)))
    return specs


def dilated_lightnet(
    groups: int = 4,
    width_mult: float = 1.0,
    num_classes: int = 1000,
    variant: str = "imagenet",
    dilations: Sequence[int] = DEFAULT_DILATIONS,
    fused: bool = True,
) -> UnitNetwork:
    """The hand-made Dilated LightNet with a fixed group count and ShuffleNet v1's
    widths for that count (seed 000 Table 1: g=4 on CIFAR-10 at 224x224, 134M MACs,
    0.90M parameters)."""
    if groups not in SHUFFLENET_STAGE_CHANNELS:
        raise ValueError(f"groups={groups}; choose one of {sorted(SHUFFLENET_STAGE_CHANNELS)}")
    multiple = 4 * math.lcm(groups, len(dilations))
    channels = scale_channels(SHUFFLENET_STAGE_CHANNELS[groups], width_mult, multiple)
    net_layout = replace(layout(variant, num_classes=num_classes), stage_channels=channels)
    return UnitNetwork(net_layout, dilated_lightnet_pattern(net_layout, groups, dilations), fused=fused)
