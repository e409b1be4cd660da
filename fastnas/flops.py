"""Exact multiply-add (MAC) and parameter counts.

Counted as published lightweight-network papers count "FLOPs" (ShuffleNet, MobileNet,
seed 000): one multiply-add per weight tap of every convolution and fully connected
layer, per sample; the bias adds, BatchNorm, activations, pooling, residual adds and
channel shuffles are not counted. Parameters are every parameter of the model
(BatchNorm affine parameters included, running statistics excluded).

fastnas ops also get FLOP formulas for ``torch.utils.flop_counter.FlopCounterMode``,
which reports 2 FLOPs per multiply-add.
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from fastnas.ops import MultiDilationDWConv2d, ShuffleGConv1x1


@dataclass(frozen=True)
class Counts:
    macs: int
    params: int

    def __str__(self) -> str:
        return f"{self.macs / 1e6:.2f}M MACs, {self.params / 1e6:.3f}M params"


def _conv_macs(module: nn.Module, output: torch.Tensor) -> int:
    weight = module.weight
    per_output = weight.shape[1] * weight.shape[2] * weight.shape[3]  # (C_in/groups) * K * K
    return output[0].numel() * per_output


_COUNTED = (nn.Conv2d, ShuffleGConv1x1, MultiDilationDWConv2d)


def count(model: nn.Module, example_input: torch.Tensor) -> Counts:
    """MACs per sample of one forward pass of ``model`` on ``example_input``, and the
    number of parameters. Runs the model once in eval mode, without gradients."""
    if example_input.dim() < 1 or example_input.shape[0] < 1:
        raise ValueError("example_input needs a batch dimension with at least one sample")
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, _COUNTED):
            total += _conv_macs(module, output)
        elif isinstance(module, nn.Linear):
            total += output[0].numel() * module.in_features

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (*_COUNTED, nn.Linear))
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input[:1])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return Counts(macs=int(total), params=sum(p.numel() for p in model.parameters()))


# ---- FlopCounterMode formulas (2 FLOPs per multiply-add) ------------------------------
@register_flop_formula(torch.ops.fastnas.shuffle_gconv1x1)
def _shuffle_gconv1x1_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * out_shape[0] * out_shape[1] * out_shape[2] * out_shape[3] * w_shape[1]


@register_flop_formula(torch.ops.fastnas.multi_dilation_dwconv2d)
def _multi_dilation_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    kernel_taps = w_shape[2] * w_shape[3]
    return 2 * out_shape[0] * out_shape[1] * out_shape[2] * out_shape[3] * kernel_taps


@register_flop_formula(torch.ops.fastnas.mixed_op)
def _mixed_op_flop(outputs_shapes, w_shape, indices, *args, out_shape=None, **kwargs) -> int:
    elements = 1
    for size in out_shape:
        elements *= size
    return 2 * elements * len(outputs_shapes)
