"""The fused kernels: functional API, drop-in modules, and the pure-PyTorch reference
(``fastnas.ops.reference``) they are tested against."""

from fastnas.ops import reference
from fastnas.ops.functional import (
    batch_norm_mixed_op,
    channel_shuffle,
    mixed_op,
    multi_dilation_dwconv2d,
    pool3x3_pair,
    shuffle_gconv1x1,
)
from fastnas.ops.modules import ChannelShuffle, MixedOp, MultiDilationDWConv2d, ShuffleGConv1x1

__all__ = [
    "ChannelShuffle",
    "MixedOp",
    "MultiDilationDWConv2d",
    "ShuffleGConv1x1",
    "batch_norm_mixed_op",
    "channel_shuffle",
    "mixed_op",
    "multi_dilation_dwconv2d",
    "pool3x3_pair",
    "reference",
    "shuffle_gconv1x1",
]
