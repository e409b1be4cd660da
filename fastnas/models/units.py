"""The ShuffleNet v1 unit and the Dilated LightNet unit, on the fused ops.

ShuffleNet unit (Zhang et al. 2018): GConv1x1 -> BN -> ReLU -> shuffle -> DWConv3x3 ->
BN -> GConv1x1 -> BN, then ReLU(x + branch) at stride 1 or ReLU(cat(AvgPool3x3(x),
branch)) at stride 2. The shuffle is fused into the first GConv1x1's store; BN and ReLU
are per-channel, so they act on the shuffled channels the same way.

Dilated LightNet unit (Shi et al. 2020, cited by seed 000): the same unit whose 3x3
depthwise conv is the multi-dilation depthwise conv, channels split into equal groups
with dilation rates ``dilations`` (default (1, 2, 3, 4)) for multi-scale features.
"""

import math
from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from fastnas.ops import MultiDilationDWConv2d, ShuffleGConv1x1

DEFAULT_DILATIONS = (1, 2, 3, 4)


def bottleneck_channels(out_channels: int, groups: int, dilation_groups: int) -> int:
    """ShuffleNet's bottleneck is out/4; it is rounded up to a multiple of the group
    count and the number of dilation groups so every candidate unit can be built
    (needed only for narrow networks such as the MNIST variant)."""
    mid = out_channels // 4
    step = math.lcm(groups, dilation_groups)
    return -(-mid // step) * step


class ShuffleUnit(nn.Module):
    """One ShuffleNet v1 unit, or with ``dilations`` a Dilated LightNet unit.

    ``first_pointwise_groups`` overrides the first pointwise conv's groups (1 for the
    first unit of stage 2, whose input has only 24 channels); the shuffle after it still
    uses ``groups`` groups. ``mid_channels`` overrides the bottleneck width.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        groups: int,
        dilations: Sequence[int] | None = None,
        first_pointwise_groups: int | None = None,
        mid_channels: int | None = None,
        fused: bool = True,
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride={stride}; a ShuffleNet unit has stride 1 or 2")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(
                f"a stride-1 unit adds its input, so in_channels={in_channels} must equal "
                f"out_channels={out_channels}"
            )
        branch_out = out_channels - in_channels if stride == 2 else out_channels
        if branch_out <= 0:
            raise ValueError(
                f"a stride-2 unit concatenates its pooled input, so out_channels={out_channels} "
                f"must exceed in_channels={in_channels}"
            )
        self.stride = stride
        self.groups = groups
        self.dilations = tuple(dilations) if dilations else (1,)
        mid = mid_channels or bottleneck_channels(out_channels, groups, len(self.dilations))
        first_groups = first_pointwise_groups or groups
        self.pointwise1 = ShuffleGConv1x1(
            in_channels, mid, groups=first_groups, shuffle=groups > 1, shuffle_groups=groups, fused=fused
        )
        self.bn1 = nn.BatchNorm2d(mid)
        self.depthwise = MultiDilationDWConv2d(mid, 3, self.dilations, stride=stride, fused=fused)
        self.bn2 = nn.BatchNorm2d(mid)
        self.pointwise2 = ShuffleGConv1x1(mid, branch_out, groups=groups, shuffle=False, fused=fused)
        self.bn3 = nn.BatchNorm2d(branch_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = F.relu(self.bn1(self.pointwise1(x)))
        branch = self.bn2(self.depthwise(branch))
        branch = self.bn3(self.pointwise2(branch))
        if self.stride == 1:
            return F.relu(x + branch)
        return F.relu(torch.cat([F.avg_pool2d(x, 3, 2, 1), branch], dim=1))


class Stem(nn.Module):
    """3x3 conv -> BN -> ReLU, then an optional 3x3 stride-2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, max_pool: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.pool = nn.MaxPool2d(3, 2, 1) if max_pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.bn(self.conv(x))))


class ClassifierHead(nn.Module):
    """Global average pool -> fully connected."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))
