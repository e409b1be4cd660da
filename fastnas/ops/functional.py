"""Functional API of the fused kernels (torch.ops.fastnas.*)."""

from collections.abc import Sequence

import torch

from fastnas.ops import _registration  # noqa: F401  (fake + autograd kernels)

_ops = torch.ops.fastnas


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: channels viewed as (groups, C/groups), transposed."""
    return _ops.channel_shuffle.default(x, groups)


def shuffle_gconv1x1(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    groups: int = 1,
    shuffle_groups: int | None = None,
) -> torch.Tensor:
    """``channel_shuffle(conv2d(x, weight, bias, groups=groups), shuffle_groups or groups)``
    in one pass: the shuffle happens in the GEMM's store.

    weight is shaped like a grouped ``nn.Conv2d`` 1x1 weight, (C_out, C_in/groups, 1, 1).
    ``shuffle_groups=1`` gives the plain grouped conv.
    """
    return _ops.shuffle_gconv1x1.default(x, weight, bias, groups, shuffle_groups or groups)


def multi_dilation_dwconv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    dilations: Sequence[int],
    bias: torch.Tensor | None = None,
    stride: int = 1,
) -> torch.Tensor:
    """Depthwise KxK conv whose channels are split into len(dilations) equal contiguous
    groups, group i using dilation dilations[i] and 'same' padding dilations[i]*(K-1)//2.

    Equals ``cat([conv2d(x_i, w_i, b_i, stride, padding=p_i, dilation=d_i, groups=C_i)])``
    in a single launch. weight is (C, 1, K, K) with K odd.
    """
    return _ops.multi_dilation_dwconv2d.default(x, weight, list(dilations), bias, stride)


def mixed_op(outputs: Sequence[torch.Tensor | None], weights: torch.Tensor) -> torch.Tensor:
    """``sum_k weights[k] * outputs[k]``. An entry of outputs may be None when its weight
    is exactly zero (a masked-out candidate that was never computed); its weight then
    gets a zero gradient. weights is a 1-D tensor of len(outputs)."""
    if weights.dim() != 1 or weights.shape[0] != len(outputs):
        raise ValueError(
            f"got {len(outputs)} outputs but {tuple(weights.shape)} weights; "
            "pass a 1-D weights tensor with exactly one weight per candidate output"
        )
    indices = [k for k, out in enumerate(outputs) if out is not None]
    return _ops.mixed_op.default([outputs[k] for k in indices], weights, indices)
