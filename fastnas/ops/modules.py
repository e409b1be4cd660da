"""Drop-in modules over the fused ops. They hold only weights and hyperparameters.

``fused=False`` runs the same parameters through the pure-PyTorch reference, so a
whole network can be built either way (the benchmarks time one against the other).
Initialisation matches the ``nn.Conv2d`` each module replaces, drawing from the RNG
in the same order, so swapping one in does not change training.
"""

import math
from collections.abc import Sequence

import torch
from torch import nn

from fastnas.ops import functional, reference


def _init_like_conv2d(weight: nn.Parameter, bias: nn.Parameter | None) -> None:
    # nn.Conv2d.reset_parameters
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(bias, -bound, bound)


def _require_divisible(value: int, value_name: str, divisor: int, divisor_name: str) -> None:
    if divisor < 1 or value % divisor:
        raise ValueError(
            f"{value_name}={value} is not divisible by {divisor_name}={divisor}; "
            f"choose {divisor_name} to divide {value_name}"
        )


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int, fused: bool = True):
        super().__init__()
        self.groups = groups
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        impl = functional if self.fused else reference
        return impl.channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class ShuffleGConv1x1(nn.Module):
    """Grouped 1x1 conv followed by a channel shuffle with ``shuffle_groups`` groups
    (default: ``groups``; ``shuffle=False``: no shuffle). Parameters named like
    nn.Conv2d's."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        groups: int = 1,
        bias: bool = False,
        shuffle: bool = True,
        fused: bool = True,
        shuffle_groups: int | None = None,
    ):
        super().__init__()
        _require_divisible(in_channels, "in_channels", groups, "groups")
        _require_divisible(out_channels, "out_channels", groups, "groups")
        self.shuffle_groups = (shuffle_groups or groups) if shuffle else 1
        _require_divisible(out_channels, "out_channels", self.shuffle_groups, "shuffle_groups")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.groups, self.shuffle, self.fused = groups, shuffle, fused
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, 1, 1))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        _init_like_conv2d(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        impl = functional if self.fused else reference
        return impl.shuffle_gconv1x1(x, self.weight, self.bias, self.groups, self.shuffle_groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, groups={self.groups}, "
            f"bias={self.bias is not None}, shuffle_groups={self.shuffle_groups}"
        )


class MultiDilationDWConv2d(nn.Module):
    """Depthwise KxK conv with a different dilation per equal channel group
    (the multi-scale conv of the Dilated LightNet unit)."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        dilations: Sequence[int] = (1, 2, 3, 4),
        stride: int = 1,
        bias: bool = False,
        fused: bool = True,
    ):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size} is even; 'same' padding needs an odd size")
        _require_divisible(channels, "channels", len(dilations), "len(dilations)")
        self.channels, self.kernel_size, self.stride = channels, kernel_size, stride
        self.dilations = tuple(int(d) for d in dilations)
        self.fused = fused
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        _init_like_conv2d(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        impl = functional if self.fused else reference
        return impl.multi_dilation_dwconv2d(x, self.weight, self.dilations, self.bias, self.stride)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, kernel_size={self.kernel_size}, dilations={self.dilations}, "
            f"stride={self.stride}, bias={self.bias is not None}"
        )


class MixedOp(nn.Module):
    """Weighted sum of candidate ops on one input. ``forward(x, weights)`` runs only
    the candidates whose weight is non-zero (DARTS: softmax weights, all run;
    ENAS/CANAS: a one-hot mask, one runs)."""

    def __init__(self, candidates: Sequence[nn.Module], fused: bool = True):
        super().__init__()
        self.candidates = nn.ModuleList(candidates)
        self.fused = fused

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if weights.shape != (len(self.candidates),):
            raise ValueError(
                f"weights has shape {tuple(weights.shape)}; pass one weight per candidate, "
                f"shape ({len(self.candidates)},)"
            )
        if torch.compiler.is_compiling() or weights.requires_grad:
            # Differentiable weights (DARTS) are never exactly zero: run every candidate
            # and avoid a host read of the weights.
            active = [True] * len(self.candidates)
        else:
            active = weights.detach().ne(0).tolist()
        outputs = [op(x) if run else None for op, run in zip(self.candidates, active)]
        impl = functional if self.fused else reference
        return impl.mixed_op(outputs, weights)
