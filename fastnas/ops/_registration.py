"""Fake (meta) kernels and autograd formulas for torch.ops.fastnas.*, so the ops
work under autograd and torch.compile(fullgraph=True). The backward passes call
the fastnas backward kernels and skip work nobody asked for."""

import torch

_ops = torch.ops.fastnas


# ---- channel shuffle --------------------------------------------------------
@torch.library.register_fake("fastnas::channel_shuffle")
def _channel_shuffle_fake(x, groups):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _channel_shuffle_setup(ctx, inputs, output):
    x, groups = inputs
    ctx.inverse_groups = x.shape[1] // groups


def _channel_shuffle_backward(ctx, grad):
    # Shuffling with C/groups groups undoes a shuffle with `groups` groups.
    return _ops.channel_shuffle.default(grad, ctx.inverse_groups), None


torch.library.register_autograd(
    "fastnas::channel_shuffle", _channel_shuffle_backward, setup_context=_channel_shuffle_setup
)


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


def _shuffle_gconv1x1_setup(ctx, inputs, output):
    x, weight, bias, groups, shuffle_groups = inputs
    ctx.save_for_backward(x, weight)
    ctx.groups = groups
    ctx.shuffle_groups = shuffle_groups
    ctx.has_bias = bias is not None


def _shuffle_gconv1x1_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    grad_x = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = _ops.shuffle_gconv1x1_grad_input.default(
            grad, weight, ctx.groups, ctx.shuffle_groups
        )
    if ctx.needs_input_grad[1]:
        grad_weight = _ops.shuffle_gconv1x1_grad_weight.default(
            grad, x, ctx.groups, ctx.shuffle_groups
        )
    if ctx.has_bias and ctx.needs_input_grad[2]:
        # Per-channel sums of the shuffled gradient, moved back to conv channel order.
        per_channel = grad.sum(dim=(0, 2, 3))
        grad_bias = per_channel.view(-1, ctx.shuffle_groups).t().reshape(-1)
    return grad_x, grad_weight, grad_bias, None, None


torch.library.register_autograd(
    "fastnas::shuffle_gconv1x1", _shuffle_gconv1x1_backward, setup_context=_shuffle_gconv1x1_setup
)


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


def _multi_dilation_setup(ctx, inputs, output):
    x, weight, dilations, bias, stride = inputs
    ctx.save_for_backward(x, weight)
    ctx.dilations = list(dilations)
    ctx.stride = stride
    ctx.has_bias = bias is not None


def _multi_dilation_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    grad_x = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = _ops.multi_dilation_dwconv2d_grad_input.default(
            grad, weight, ctx.dilations, ctx.stride, list(x.shape)
        )
    if ctx.needs_input_grad[1]:
        grad_weight = _ops.multi_dilation_dwconv2d_grad_weight.default(
            grad, x, ctx.dilations, ctx.stride, weight.shape[-1]
        )
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = grad.sum(dim=(0, 2, 3))
    return grad_x, grad_weight, None, grad_bias, None


torch.library.register_autograd(
    "fastnas::multi_dilation_dwconv2d", _multi_dilation_backward, setup_context=_multi_dilation_setup
)


# ---- mixed op ------------------------------------------------------------------
@torch.library.register_fake("fastnas::mixed_op")
def _mixed_op_fake(outputs, weights, indices):
    return torch.empty_like(outputs[0], memory_format=torch.contiguous_format)


@torch.library.register_fake("fastnas::mixed_op_backward")
def _mixed_op_backward_fake(grad, outputs, weights, indices, need_output_grads):
    output_grads = [torch.empty_like(grad) for _ in outputs] if need_output_grads else []
    return output_grads, weights.new_empty(weights.shape)


def _mixed_op_setup(ctx, inputs, output):
    outputs, weights, indices = inputs
    ctx.indices = list(indices)
    ctx.save_for_backward(weights, *outputs)


def _mixed_op_backward(ctx, grad):
    weights, *outputs = ctx.saved_tensors
    needs = ctx.needs_input_grad[0]  # one flag per tensor of the list
    need_output_grads = any(needs) if isinstance(needs, (list, tuple)) else bool(needs)
    output_grads, grad_weights = _ops.mixed_op_backward.default(
        grad, outputs, weights, ctx.indices, need_output_grads
    )
    return (
        output_grads if need_output_grads else [None] * len(outputs),
        grad_weights if ctx.needs_input_grad[1] else None,
        None,
    )


torch.library.register_autograd(
    "fastnas::mixed_op", _mixed_op_backward, setup_context=_mixed_op_setup
)
