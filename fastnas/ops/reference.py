"""Pure-PyTorch versions of the fastnas ops: the test oracle, and the plain-ops path
that networks take with ``fused=False``."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, C, ...) -> channels viewed as (groups, C/groups), transposed, flattened."""
    return x.unflatten(1, (groups, x.shape[1] // groups)).transpose(1, 2).flatten(1, 2)


def shuffle_gconv1x1(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    groups: int = 1,
    shuffle_groups: int | None = None,
) -> torch.Tensor:
    return channel_shuffle(F.conv2d(x, weight, bias, groups=groups), shuffle_groups or groups)


def multi_dilation_dwconv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    dilations: Sequence[int],
    bias: torch.Tensor | None = None,
    stride: int = 1,
) -> torch.Tensor:
    kernel_size = weight.shape[-1]
    per_group = x.shape[1] // len(dilations)
    pieces = []
    for i, dilation in enumerate(dilations):
        channels = slice(i * per_group, (i + 1) * per_group)
        pieces.append(
            F.conv2d(
                x[:, channels],
                weight[channels],
                None if bias is None else bias[channels],
                stride=stride,
                padding=dilation * (kernel_size - 1) // 2,
                dilation=dilation,
                groups=per_group,
            )
        )
    return torch.cat(pieces, dim=1)


def mixed_op(outputs: Sequence[torch.Tensor | None], weights: torch.Tensor) -> torch.Tensor:
    total = None
    for k, out in enumerate(outputs):
        if out is None:
            continue
        term = weights[k] * out
        total = term if total is None else total + term
    return total


def batch_norm_mixed_op(outputs, weights, norms) -> torch.Tensor:
    return mixed_op([out if out is None or norm is None else norm(out) for out, norm in zip(outputs, norms)], weights)


def pool3x3_pair(x: torch.Tensor, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return F.max_pool2d(x, 3, stride, 1), F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)

