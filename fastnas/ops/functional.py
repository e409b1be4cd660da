"""Functional API of the fused kernels (torch.ops.fastnas.*)."""

from collections.abc import Sequence

import torch
from torch import nn

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
    gets a zero gradient. weights is a 1-D tensor of len(outputs). The zero weights are
    checked on the CPU only: on CUDA reading them would make the host wait for the GPU.
    With no output computed it returns None, as the reference does."""
    if weights.dim() != 1 or weights.shape[0] != len(outputs):
        raise ValueError(
            f"got {len(outputs)} outputs but {tuple(weights.shape)} weights; "
            "pass a 1-D weights tensor with exactly one weight per candidate output"
        )
    indices = [k for k, out in enumerate(outputs) if out is not None]
    if not indices:
        return _empty_sum(weights)
    return _ops.mixed_op.default([outputs[k] for k in indices], weights, indices)


def _empty_sum(weights: torch.Tensor) -> None:
    """The mixed sum when no candidate was computed: None, as the reference's empty sum."""
    if bool(weights.detach().ne(0).any()):
        raise ValueError(
            f"every output is None but weights = {weights.detach().tolist()}; only candidates with "
            "weight exactly 0 may be skipped, compute the others or zero their weights"
        )
    return None


def batch_norm_mixed_op(
    outputs: Sequence[torch.Tensor | None],
    weights: torch.Tensor,
    norms: Sequence[nn.BatchNorm2d | None],
) -> torch.Tensor:
    """``sum_k weights[k] * norms[k](outputs[k])`` for (N, C, H, W) outputs, where norms[k]
    is an ``nn.BatchNorm2d(affine=False)`` or None (outputs[k] is used as is): a DARTS
    edge, whose candidates end in such a BN. While the norms use batch statistics
    (training), it runs fused: the normalised outputs are never materialised, in the
    forward nor saved for the backward, and each norm's running statistics are updated
    as nn.BatchNorm2d updates them. Otherwise (eval) it applies the norms, then mixed_op.
    None outputs are allowed where the weight is exactly zero, as in mixed_op."""
    if weights.dim() != 1 or weights.shape[0] != len(outputs) or len(norms) != len(outputs):
        raise ValueError(
            f"got {len(outputs)} outputs, {len(norms)} norms and {tuple(weights.shape)} weights; "
            "pass one norm (or None) and one weight per candidate output"
        )
    for k, norm in enumerate(norms):
        if norm is not None and (not isinstance(norm, nn.BatchNorm2d) or norm.affine):
            raise ValueError(
                f"norms[{k}] is {norm!r}; pass nn.BatchNorm2d(affine=False) modules or None "
                "(an affine BN can follow the mixed op instead)"
            )
    active = [k for k, out in enumerate(outputs) if out is not None]
    if not active:
        return _empty_sum(weights)
    used = [norms[k] for k in active if norms[k] is not None]
    if used and all(getattr(norm, "synchronized", False) for norm in used):
        # Statistics over every process of a data-parallel run (fastnas.distributed): the
        # fused kernel sees one process's batch only.
        with_norm = [k for k in active if norms[k] is not None]
        inputs = list(outputs)
        for k, normalized in zip(with_norm, type(used[0]).normalize_together([outputs[k] for k in with_norm], used)):
            inputs[k] = normalized
        return mixed_op(inputs, weights)
    batch_statistics = [norm.training or not norm.track_running_stats for norm in used]
    if not all(batch_statistics) or len({norm.eps for norm in used}) > 1:
        return mixed_op([out if out is None or norm is None else norm(out) for out, norm in zip(outputs, norms)], weights)
    eps = used[0].eps if used else 1e-5
    out, mean, _, variance = _ops.batch_norm_mixed_op.default(
        [outputs[k] for k in active], weights, active, [norms[k] is not None for k in active], eps
    )
    _update_running_statistics([norms[k] for k in active], mean, variance, outputs[active[0]])
    return out


@torch.no_grad()
def _update_running_statistics(norms, mean, variance, example):
    """What nn.BatchNorm2d does to its buffers in a training step: count the batch, and
    blend the batch mean and unbiased variance into the running ones (an empty batch is
    counted but leaves them as they are)."""
    tracked = [j for j, norm in enumerate(norms) if norm is not None and norm.training and norm.track_running_stats]
    if not tracked:
        return
    tracked_norms = [norms[j] for j in tracked]
    torch._foreach_add_([norm.num_batches_tracked for norm in tracked_norms], 1)
    count = example.shape[0] * example.shape[2] * example.shape[3]
    if count == 0:
        return
    means, variances = mean.unbind(0), (variance * (count / (count - 1))).unbind(0)
    for momentum in dict.fromkeys(norm.momentum for norm in tracked_norms):
        group = [j for j in tracked if norms[j].momentum == momentum]
        if momentum is None:  # cumulative moving average, per norm
            for j in group:
                factor = 1.0 / float(norms[j].num_batches_tracked)
                norms[j].running_mean.lerp_(means[j].to(norms[j].running_mean.dtype), factor)
                norms[j].running_var.lerp_(variances[j].to(norms[j].running_var.dtype), factor)
            continue
        torch._foreach_lerp_([norms[j].running_mean for j in group],
                             [means[j].to(norms[j].running_mean.dtype) for j in group], momentum)
        torch._foreach_lerp_([norms[j].running_var for j in group],
                             [variances[j].to(norms[j].running_var.dtype) for j in group], momentum)


def pool3x3_pair(x: torch.Tensor, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(max_pool2d(x, 3, stride, 1), avg_pool2d(x, 3, stride, 1, count_include_pad=False))``,
    a DARTS edge's two poolings, in one pass over x. For the backward it keeps one byte per
    output (the max's position in its window) instead of max pooling's int64 indices."""
    max_out, avg_out, _ = _ops.pool3x3_pair.default(x, stride)
    return max_out, avg_out

