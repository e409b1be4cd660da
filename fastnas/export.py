"""Deployment: turn a network built on fastnas ops into plain torch.nn modules with the
same parameters and outputs, so it exports with torch.onnx.export and runs anywhere
(seed 000's point is edge devices)."""

import copy
from pathlib import Path

import torch
from torch import nn

from fastnas.ops import ChannelShuffle, MixedOp, MultiDilationDWConv2d, ShuffleGConv1x1
from fastnas.ops import reference


class PlainChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        return reference.channel_shuffle(x, self.groups)


class DilationGroups(nn.Module):
    """Depthwise convs with one dilation per channel group, concatenated."""

    def __init__(self, convs: list[nn.Conv2d]):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.split = [conv.in_channels for conv in convs]

    def forward(self, x):
        return torch.cat([conv(part) for conv, part in zip(self.convs, torch.split(x, self.split, dim=1))], dim=1)


def _plain_pointwise(module: ShuffleGConv1x1) -> nn.Module:
    conv = nn.Conv2d(module.in_channels, module.out_channels, 1, groups=module.groups, bias=module.bias is not None)
    conv.weight.data.copy_(module.weight.data)
    if module.bias is not None:
        conv.bias.data.copy_(module.bias.data)
    if module.shuffle_groups == 1:
        return conv
    return nn.Sequential(conv, PlainChannelShuffle(module.shuffle_groups))


def _plain_depthwise(module: MultiDilationDWConv2d) -> nn.Module:
    per_group = module.channels // len(module.dilations)
    convs = []
    for i, dilation in enumerate(module.dilations):
        conv = nn.Conv2d(per_group, per_group, module.kernel_size, module.stride,
                         dilation * (module.kernel_size - 1) // 2, dilation=dilation, groups=per_group,
                         bias=module.bias is not None)
        rows = slice(i * per_group, (i + 1) * per_group)
        conv.weight.data.copy_(module.weight.data[rows])
        if module.bias is not None:
            conv.bias.data.copy_(module.bias.data[rows])
        convs.append(conv)
    return convs[0] if len(convs) == 1 else DilationGroups(convs)


def to_plain(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose fastnas modules are replaced by equivalent torch.nn ones.
    Search-time MixedOps are refused: derive the architecture first."""
    model = copy.deepcopy(model)

    def replace(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, MixedOp):
                raise ValueError(f"{name} is a search-time MixedOp; build the searched architecture "
                                 "(space.build(arch) or a genotype's network) before exporting")
            if isinstance(child, ShuffleGConv1x1):
                setattr(parent, name, _plain_pointwise(child))
            elif isinstance(child, MultiDilationDWConv2d):
                setattr(parent, name, _plain_depthwise(child))
            elif isinstance(child, ChannelShuffle):
                setattr(parent, name, PlainChannelShuffle(child.groups))
            else:
                replace(child)

    replace(model)
    return model


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path) -> Path:
    """Exports the plain version of ``model`` (eval mode) to ONNX with a dynamic batch size."""
    plain = to_plain(model).eval()
    path = Path(path)
    torch.onnx.export(plain, (example_input,), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path
