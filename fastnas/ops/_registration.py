"""Fake (meta) kernels for torch.ops.fastnas.*, so the ops trace under
torch.compile(fullgraph=True). Autograd is registered in C++ (csrc/autograd.cpp): a
Python formula would cost 100-300 us of interpreter time per call."""

import torch


# ---- channel shuffle --------------------------------------------------------
@torch.library.register_fake("fastnas::channel_shuffle")
def _channel_shuffle_fake(x, groups):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# ---- shuffle + grouped 1x1 conv ----------------------------------------------
@torch.library.register_fake("fastnas::shuffle_gconv1x1")
def _shuffle_gconv1x1_fake(x, weight, bias, groups, shuffle_groups):
    return x.new_empty((x.shape[0], weight.shape[0], x.shape[2], x.shape[3]))


@torch.library.register_fake("fastnas::shuffle_gconv1x1_grad_input")
def _shuffle_gconv1x1_grad_input_fake(grad_out, weight, groups, shuffle_groups):
    shape = (grad_out.shape[0], weight.shape[1] * groups, grad_out.shape[2], grad_out.shape[3])
    return grad_out.new_empty(shape)


@torch.library.register_fake("fastnas::shuffle_gconv1x1_grad_weight")
def _shuffle_gconv1x1_grad_weight_fake(grad_out, x, groups, shuffle_groups):
    return x.new_empty((grad_out.shape[1], x.shape[1] // groups, 1, 1))


# ---- multi-dilation depthwise conv -------------------------------------------
@torch.library.register_fake("fastnas::multi_dilation_dwconv2d")
def _multi_dilation_fake(x, weight, dilations, bias, stride):
    out_h = (x.shape[2] - 1) // stride + 1
    out_w = (x.shape[3] - 1) // stride + 1
    return x.new_empty((x.shape[0], x.shape[1], out_h, out_w))


@torch.library.register_fake("fastnas::multi_dilation_dwconv2d_grad_input")
def _multi_dilation_grad_input_fake(grad_out, weight, dilations, stride, input_size):
    return grad_out.new_empty(input_size)


@torch.library.register_fake("fastnas::multi_dilation_dwconv2d_grad_weight")
def _multi_dilation_grad_weight_fake(grad_out, x, dilations, stride, kernel_size):
    return x.new_empty((x.shape[1], 1, kernel_size, kernel_size))


# ---- mixed op ------------------------------------------------------------------
def _covers_storage_densely(t):
    """Every element of the storage span once (dimensions of size 1 aside)."""
    if t.numel() == 0:
        return False
    expected = 1
    for stride, size in sorted((t.stride(d), t.shape[d]) for d in range(t.dim()) if t.shape[d] != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _empty_in_elementwise_layout(like, tensors):
    """A result of the mixed op (csrc/elementwise_layout.h): in `like`'s strides where all
    `tensors` share them and cover their storage densely, else contiguous."""
    shared = _covers_storage_densely(tensors[0]) and all(t.stride() == tensors[0].stride() for t in tensors)
    return torch.empty_like(like, memory_format=torch.preserve_format if shared else torch.contiguous_format)


def _empty_stacked_in_elementwise_layout(count, like, tensors):
    """`count` such results stacked along a new first dimension, each starting 16-byte aligned."""
    one = _empty_in_elementwise_layout(like, tensors)
    per_16_bytes = max(1, 16 // like.element_size())
    span = -(-like.numel() // per_16_bytes) * per_16_bytes
    return like.new_empty_strided((count, *like.shape), (span, *one.stride()))


@torch.library.register_fake("fastnas::mixed_op")
def _mixed_op_fake(outputs, weights, indices):
    return _empty_in_elementwise_layout(outputs[0], outputs)


@torch.library.register_fake("fastnas::mixed_op_backward")
def _mixed_op_backward_fake(grad, outputs, weights, indices, need_output_grads):
    count = len(outputs) if need_output_grads else 0
    return _empty_stacked_in_elementwise_layout(count, grad, [*outputs, grad]), weights.new_empty(weights.shape)


# ---- batch-normalised mixed op ---------------------------------------------------
def _statistics_dtype(dtype):
    # the kernels keep the (J, C) statistics in the accumulation type
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("fastnas::batch_norm_mixed_op")
def _batch_norm_mixed_op_fake(outputs, weights, indices, normalize, eps):
    first = outputs[0]
    statistics = first.new_empty((len(outputs), first.shape[1]), dtype=_statistics_dtype(first.dtype))
    out = torch.empty_like(first, memory_format=torch.contiguous_format)
    return out, statistics, torch.empty_like(statistics), torch.empty_like(statistics)


@torch.library.register_fake("fastnas::batch_norm_mixed_op_backward")
def _batch_norm_mixed_op_backward_fake(grad, outputs, weights, indices, normalize, mean, invstd, need_output_grads):
    count = len(outputs) if need_output_grads else 0
    output_grads = grad.new_empty((count, *grad.shape))
    return output_grads, weights.new_empty(weights.shape)


# ---- 3x3 pooling pair --------------------------------------------------------------
@torch.library.register_fake("fastnas::pool3x3_pair")
def _pool3x3_pair_fake(x, stride):
    shape = (x.shape[0], x.shape[1], (x.shape[2] - 1) // stride + 1, (x.shape[3] - 1) // stride + 1)
    return x.new_empty(shape), x.new_empty(shape), x.new_empty(shape, dtype=torch.uint8)


@torch.library.register_fake("fastnas::pool3x3_pair_backward")
def _pool3x3_pair_backward_fake(grad_max, grad_avg, positions, input_size, stride):
    return (grad_max if grad_max is not None else grad_avg).new_empty(input_size)

