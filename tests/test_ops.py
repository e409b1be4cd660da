"""fastnas.ops against the pure-PyTorch reference: forward, backward, gradcheck,
opcheck, torch.compile, layouts, batch 0 and bad input. The ops with CUDA kernels run on
every backend: the CPU kernels, the CUDA kernels on the SIMT emulator (CPU tensors) and,
where a GPU is present, on the GPU."""

import pytest
import torch
import torch.nn.functional as F

import fastnas
from fastnas import ops
from fastnas.ops import reference
from conftest import assert_matches, check_against_reference, forward_backward


def dtypes_for(device):
    return [torch.float32, torch.float64] + ([torch.float16, torch.bfloat16] if device.type == "cuda" else [])


# ---- channel shuffle ----------------------------------------------------------------
@pytest.mark.parametrize("groups", [1, 2, 3, 4])
def test_channel_shuffle_matches_reference(device, groups):
    x = torch.randn(2, 12, 5, 3, device=device, requires_grad=True)
    out = ops.channel_shuffle(x, groups)
    torch.testing.assert_close(out, reference.channel_shuffle(x, groups), rtol=0, atol=0)
    grad = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, x, grad)
    (g_ref,) = torch.autograd.grad(reference.channel_shuffle(x, groups), x, grad)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=0)


def test_channel_shuffle_known_permutation(device):
    x = torch.arange(6.0, device=device).view(1, 6, 1, 1)
    # groups=2: channels (0 1 2 | 3 4 5) interleave to 0 3 1 4 2 5
    assert ops.channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


# ---- shuffle + grouped 1x1 conv ---------------------------------------------------
SHUFFLE_CASES = [
    # N, C_in, C_out, H, W, groups, shuffle_groups
    (2, 8, 8, 5, 7, 2, 2),
    (3, 12, 24, 4, 4, 3, 3),
    (2, 16, 32, 3, 5, 4, 4),
    (1, 16, 16, 7, 7, 8, 8),
    (2, 12, 12, 3, 3, 3, 2),  # shuffle blocks straddle conv groups
    (2, 8, 12, 2, 3, 4, 6),
    (2, 6, 10, 3, 3, 1, 1),  # plain 1x1 conv
    (2, 8, 8, 3, 3, 4, 1),  # grouped conv, no shuffle
]


@pytest.mark.parametrize("case", SHUFFLE_CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_shuffle_gconv1x1_matches_reference(device, case, with_bias):
    n, cin, cout, h, w, groups, sg = case
    for dtype in dtypes_for(device):
        x = torch.randn(n, cin, h, w, device=device, dtype=dtype, requires_grad=True)
        weight = torch.randn(cout, cin // groups, 1, 1, device=device, dtype=dtype, requires_grad=True)
        bias = torch.randn(cout, device=device, dtype=dtype, requires_grad=True) if with_bias else None
        check_against_reference(
            lambda a, b, c: ops.shuffle_gconv1x1(a, b, c, groups, sg),
            lambda a, b, c: reference.shuffle_gconv1x1(a, b, c, groups, sg),
            [x, weight, bias],
            dtype,
        )


def test_shuffle_gconv1x1_channels_last_and_strided_input(device):
    x = torch.randn(2, 16, 6, 6, device=device).to(memory_format=torch.channels_last)
    weight = torch.randn(8, 4, 1, 1, device=device)
    expected = reference.shuffle_gconv1x1(x, weight, None, 4, 4)
    torch.testing.assert_close(ops.shuffle_gconv1x1(x, weight, None, 4), expected)
    wide = torch.randn(2, 32, 6, 6, device=device)[:, ::2]
    torch.testing.assert_close(
        ops.shuffle_gconv1x1(wide, weight, None, 4), reference.shuffle_gconv1x1(wide, weight, None, 4)
    )


def test_shuffle_gconv1x1_batch_zero(device):
    x = torch.randn(0, 8, 4, 4, device=device, requires_grad=True)
    weight = torch.randn(8, 4, 1, 1, device=device, requires_grad=True)
    out = ops.shuffle_gconv1x1(x, weight, None, 2)
    assert out.shape == (0, 8, 4, 4)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(weight.grad, torch.zeros_like(weight))


# ---- multi-dilation depthwise conv -----------------------------------------------
DWCONV_CASES = [
    # N, C, H, W, K, dilations, stride
    (2, 8, 9, 7, 3, (1, 2, 3, 4), 1),
    (2, 8, 9, 7, 3, (1, 2, 3, 4), 2),
    (1, 6, 11, 11, 5, (1, 2), 1),
    (2, 6, 10, 13, 5, (2, 1, 3), 2),
    (3, 4, 5, 5, 3, (1,), 1),
    (1, 4, 3, 3, 3, (4, 4), 1),  # dilation wider than the image
    (2, 4, 8, 8, 7, (1, 2), 3),
    (1, 3, 6, 6, 1, (1, 2, 3), 2),
    (3, 11, 13, 17, 3, (1,), 1),  # odd sizes: partial warps and blocks
]


@pytest.mark.parametrize("case", DWCONV_CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_multi_dilation_dwconv2d_matches_reference(backend, case, with_bias):
    n, c, h, w, k, dilations, stride = case
    device = backend.device
    for dtype in backend.dtypes:
        x = torch.randn(n, c, h, w, device=device, dtype=dtype, requires_grad=True)
        weight = torch.randn(c, 1, k, k, device=device, dtype=dtype, requires_grad=True)
        bias = torch.randn(c, device=device, dtype=dtype, requires_grad=True) if with_bias else None
        check_against_reference(
            lambda a, b, bb: ops.multi_dilation_dwconv2d(a, b, dilations, bb, stride),
            lambda a, b, bb: reference.multi_dilation_dwconv2d(a, b, dilations, bb, stride),
            [x, weight, bias],
            dtype,
        )


def test_multi_dilation_single_dilation_equals_depthwise_conv(backend):
    x = torch.randn(2, 6, 8, 8, device=backend.device, dtype=torch.float64)
    weight = torch.randn(6, 1, 3, 3, device=backend.device, dtype=torch.float64)
    expected = F.conv2d(x, weight, stride=2, padding=2, dilation=2, groups=6)
    torch.testing.assert_close(ops.multi_dilation_dwconv2d(x, weight, (2,), stride=2), expected)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_multi_dilation_channels_last_and_strided_input(backend, layout):
    device = backend.device
    base = torch.randn(2, 16, 7, 7, device=device, dtype=torch.float64)
    x = base.to(memory_format=torch.channels_last) if layout == "channels_last" else base[:, ::2]
    weight = torch.randn(x.shape[1], 1, 3, 3, device=device, dtype=torch.float64)
    check_against_reference(lambda a, b: ops.multi_dilation_dwconv2d(a, b, (1, 2), stride=2),
                            lambda a, b: reference.multi_dilation_dwconv2d(a, b, (1, 2), stride=2),
                            [x.requires_grad_(), weight.requires_grad_()], torch.float64)


@pytest.mark.parametrize("shape", [(0, 8, 7, 7), (2, 0, 7, 7)])
def test_multi_dilation_empty_batch_and_no_channels(backend, shape):
    """Batch 0 and C = 0 give empty outputs and zero weight gradients (the CUDA launcher
    once divided by C in the weight gradient: a host SIGFPE)."""
    x = torch.randn(*shape, device=backend.device, requires_grad=True)
    w = torch.randn(shape[1], 1, 3, 3, device=backend.device, requires_grad=True)
    out = ops.multi_dilation_dwconv2d(x, w, (1, 2) if shape[1] else (1,), stride=2)
    assert out.shape == (shape[0], shape[1], 4, 4)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_multi_dilation_backward_ops_check_their_arguments(backend):
    """The backward ops are public: called directly with a gradient or arguments that do not
    fit, they raise instead of reading out of bounds or dividing by zero."""
    lib, device = backend.library, backend.device
    x = torch.randn(2, 8, 9, 7, device=device)
    w = torch.randn(8, 1, 3, 3, device=device)
    grad = torch.randn(2, 8, 5, 4, device=device)  # the output of stride 2
    lib.multi_dilation_dwconv2d_grad_input(grad, w, [1, 2], 2, [2, 8, 9, 7])
    lib.multi_dilation_dwconv2d_grad_weight(grad, x, [1, 2], 2, 3)
    with pytest.raises(RuntimeError, match=r"dilations is empty"):
        lib.multi_dilation_dwconv2d_grad_input(grad, w, [], 2, [2, 8, 9, 7])
    with pytest.raises(RuntimeError, match=r"dilations is empty"):
        lib.multi_dilation_dwconv2d_grad_weight(grad, x, [], 2, 3)
    for stride in (0, -1):
        with pytest.raises(RuntimeError, match=r"stride must be >= 1"):
            lib.multi_dilation_dwconv2d_grad_input(grad, w, [1, 2], stride, [2, 8, 9, 7])
        with pytest.raises(RuntimeError, match=r"stride must be >= 1"):
            lib.multi_dilation_dwconv2d_grad_weight(grad, x, [1, 2], stride, 3)
    with pytest.raises(RuntimeError, match=r"grad_out must be shaped \[2, 8, 5, 4\]"):
        lib.multi_dilation_dwconv2d_grad_input(grad[:, :, :3], w, [1, 2], 2, [2, 8, 9, 7])
    with pytest.raises(RuntimeError, match=r"grad_out must be shaped \[2, 8, 9, 7\]"):
        lib.multi_dilation_dwconv2d_grad_weight(grad, x, [1, 2], 1, 3)
    with pytest.raises(RuntimeError, match=r"weight must be shaped \(C, 1, K, K\) = \(8, 1, K, K\)"):
        lib.multi_dilation_dwconv2d_grad_input(grad, w[:4], [1, 2], 2, [2, 8, 9, 7])
    with pytest.raises(RuntimeError, match=r"kernel_size=4"):
        lib.multi_dilation_dwconv2d_grad_weight(grad, x, [1, 2], 2, 4)
    with pytest.raises(RuntimeError, match=r"grad_out has dtype Double but x has dtype Float"):
        lib.multi_dilation_dwconv2d_grad_weight(grad.double(), x, [1, 2], 2, 3)


# ---- mixed op ----------------------------------------------------------------------
@pytest.mark.parametrize("present", [(True, True, True), (True, False, True), (False, False, True)])
def test_mixed_op_matches_reference(backend, present):
    device = backend.device
    for dtype in backend.dtypes:
        outputs = [
            torch.randn(2, 3, 5, 5, device=device, dtype=dtype, requires_grad=True) if p else None
            for p in present
        ]
        weights = torch.rand(len(present), device=device, dtype=torch.float32)
        weights = torch.where(torch.tensor(present, device=device), weights, torch.zeros_like(weights))
        weights.requires_grad_()
        leaves = [weights, *[o for o in outputs if o is not None]]

        def fused(w, *computed, fn=ops.mixed_op):
            it = iter(computed)
            return fn([next(it) if p else None for p in present], w)

        check_against_reference(fused, lambda *a: fused(*a, fn=reference.mixed_op), leaves, dtype)


@pytest.mark.parametrize("count", [1, 8, 11])  # CUDA: templated counts and the general kernel
def test_mixed_op_candidate_counts(backend, count):
    device = backend.device
    outputs = [torch.randn(3, 4, 5, device=device, dtype=torch.float64, requires_grad=True) for _ in range(count)]
    weights = torch.rand(count, device=device, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, 4, 5, device=device, dtype=torch.float64)
    fused = torch.autograd.grad(ops.mixed_op(outputs, weights), [weights, *outputs], grad)
    plain = torch.autograd.grad(reference.mixed_op(outputs, weights), [weights, *outputs], grad)
    for got, expected in zip(fused, plain):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_mixed_op_channels_last_and_strided_outputs(backend, layout):
    base = [torch.randn(2, 6, 5, 7, device=backend.device, dtype=torch.float64) for _ in range(3)]
    outputs = [b.to(memory_format=torch.channels_last) if layout == "channels_last" else b[:, ::2] for b in base]
    weights = torch.rand(3, device=backend.device, dtype=torch.float64)
    check_against_reference(lambda w, *o: ops.mixed_op(list(o), w), lambda w, *o: reference.mixed_op(list(o), w),
                            [weights.requires_grad_(), *(o.requires_grad_() for o in outputs)], torch.float64)


@pytest.mark.parametrize("permutation", [(0, 2, 3, 1), (2, 3, 0, 1)])  # channels_last, another order
def test_mixed_op_runs_in_a_shared_dense_layout_without_copies(backend, permutation):
    """Candidates and gradient in the same dense non-contiguous layout: results in that layout
    and no copy of any input (the op is element-wise); mixed layouts give contiguous results."""
    inverse = [permutation.index(d) for d in range(4)]
    outputs = [torch.randn(2, 6, 5, 7, device=backend.device, dtype=torch.float64).permute(*permutation)
               .contiguous().permute(*inverse).requires_grad_() for _ in range(3)]
    grad = torch.randn(2, 6, 5, 7, device=backend.device, dtype=torch.float64).permute(*permutation) \
        .contiguous().permute(*inverse)
    weights = torch.rand(3, device=backend.device, dtype=torch.float64, requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        out = backend.library.mixed_op(outputs, weights, [0, 1, 2])
        output_grads, _ = backend.library.mixed_op_backward(grad, outputs, weights, [0, 1, 2], True)
    copies = [e.name for e in profile.events() if e.name in ("aten::clone", "aten::copy_", "aten::contiguous")]
    assert not copies, copies
    assert out.stride() == outputs[0].stride()
    assert all(g.stride() == grad.stride() for g in output_grads)
    check_against_reference(lambda w, *o: ops.mixed_op(list(o), w), lambda w, *o: reference.mixed_op(list(o), w),
                            [weights, *outputs], torch.float64)
    mixed = [outputs[0], outputs[1].contiguous()]
    out = backend.library.mixed_op(mixed, weights[:2].detach(), [0, 1])
    assert out.is_contiguous()
    torch.testing.assert_close(out, reference.mixed_op(mixed, weights[:2]))


def test_mixed_op_outputs_at_unaligned_addresses(backend):
    """Views that start one element into their storage: the CUDA kernels load 16 bytes at a
    time and must take such inputs (they copy them) as well as aligned ones."""
    for dtype in backend.dtypes:
        storage = torch.randn(3, 2 * 5 * 7 + 2, device=backend.device, dtype=dtype, requires_grad=True)
        outputs = [row[1:-1].view(2, 5, 7) for row in storage]  # odd element offsets; views, used in place
        assert all(o.data_ptr() % 16 for o in outputs)
        weights = torch.rand(3, device=backend.device, requires_grad=True)
        grad = torch.randn(2, 5, 7, device=backend.device, dtype=torch.float64).to(dtype)
        out = ops.mixed_op(outputs, weights)
        grads = torch.autograd.grad(out, [weights, *outputs], grad)
        wide = [t.detach().double().requires_grad_() for t in [weights, *outputs]]
        ref_out = reference.mixed_op(wide[1:], wide[0])
        ref_grads = torch.autograd.grad(ref_out, wide, grad.double())
        assert_matches(out, ref_out.to(dtype))
        for got, expected in zip(grads, ref_grads):
            assert_matches(got, expected.to(got.dtype))


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4)])
def test_mixed_op_empty_outputs(backend, shape):
    outputs = [torch.randn(*shape, device=backend.device, requires_grad=True) for _ in range(2)]
    weights = torch.tensor([0.4, 0.6], device=backend.device, requires_grad=True)
    out = ops.mixed_op(outputs, weights)
    assert out.shape == shape
    out.sum().backward()
    assert torch.equal(weights.grad, torch.zeros(2, device=backend.device))
    assert all(o.grad.shape == shape for o in outputs)


def test_mixed_op_with_no_computed_output_returns_what_the_reference_returns(backend):
    weights = torch.zeros(3, device=backend.device)
    assert reference.mixed_op([None] * 3, weights) is None
    assert ops.mixed_op([None] * 3, weights) is None
    norms = [torch.nn.BatchNorm2d(4, affine=False)] * 3
    assert ops.batch_norm_mixed_op([None] * 3, weights, norms) is None
    with pytest.raises(ValueError, match=r"every output is None but weights = \[0.0, 1.0, 0.0\]"):
        ops.mixed_op([None] * 3, torch.tensor([0.0, 1.0, 0.0], device=backend.device))


def test_mixed_op_partial_gradients(backend):
    """Frozen weights (the weight step of DARTS) and candidates that need no gradient: the
    others still get w_k * grad, and nothing is computed for the rest."""
    device = backend.device
    outputs = [torch.randn(2, 3, 4, device=device, requires_grad=k != 1) for k in range(3)]
    weights = torch.tensor([0.2, 0.5, 0.3], device=device)
    grad = torch.randn(2, 3, 4, device=device)
    ops.mixed_op(outputs, weights).backward(grad)
    assert outputs[1].grad is None and weights.grad is None
    for k in (0, 2):
        torch.testing.assert_close(outputs[k].grad, weights[k] * grad)
    weights.requires_grad_()
    (g,) = torch.autograd.grad(ops.mixed_op([o.detach() for o in outputs], weights), weights, grad)
    torch.testing.assert_close(g, torch.stack([(grad * o).sum() for o in outputs]).detach())


def test_mixed_op_backward_checks_the_incoming_gradient(backend):
    lib, device = backend.library, backend.device
    outputs = [torch.randn(2, 3, 4, 5, device=device) for _ in range(2)]
    weights = torch.tensor([0.3, 0.7], device=device)
    with pytest.raises(RuntimeError, match=r"grad has shape \[2, 3, 4, 4\] but the outputs have shape \[2, 3, 4, 5\]"):
        lib.mixed_op_backward(torch.randn(2, 3, 4, 4, device=device), outputs, weights, [0, 1], True)
    with pytest.raises(RuntimeError, match=r"grad has dtype Double on .* but the outputs have dtype Float"):
        lib.mixed_op_backward(torch.randn(2, 3, 4, 5, device=device, dtype=torch.float64), outputs, weights, [0, 1],
                              True)


def test_autograd_is_registered_in_cpp():
    # A Python autograd formula costs 100-300 us per call (see csrc/autograd.cpp).
    for name in ("channel_shuffle", "shuffle_gconv1x1", "multi_dilation_dwconv2d", "mixed_op", "batch_norm_mixed_op",
                 "pool3x3_pair"):
        registrations = torch._C._dispatch_dump(f"fastnas::{name}").splitlines()
        (autograd,) = [line for line in registrations if line.startswith("Autograd")]
        assert "csrc/autograd.cpp" in autograd and "[ boxed unboxed ]" in autograd


def test_mixed_op_large_tensor_weight_gradient(backend):
    # Many chunks/blocks in the reduction.
    device = backend.device
    shape = (4, 16, 64, 64) if backend.name != "simt" else (2, 16, 32, 32)
    outputs = [torch.randn(*shape, device=device, dtype=torch.float64) for _ in range(3)]
    weights = torch.rand(3, device=device, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(*shape, device=device, dtype=torch.float64)
    (g,) = torch.autograd.grad(ops.mixed_op(outputs, weights), weights, grad)
    expected = torch.stack([(grad * o).sum() for o in outputs])
    torch.testing.assert_close(g, expected)


def test_mixed_op_module_runs_only_active_candidates(backend):
    calls = []

    class Probe(torch.nn.Module):
        def __init__(self, index):
            super().__init__()
            self.index = index

        def forward(self, x):
            calls.append(self.index)
            return x * (self.index + 1)

    module = ops.MixedOp([Probe(i) for i in range(4)])
    x = torch.randn(2, 3, device=backend.device)
    out = module(x, torch.tensor([0.0, 0.0, 1.0, 0.0], device=backend.device))
    assert calls == [2]
    torch.testing.assert_close(out, 3 * x)


# ---- batch-normalised mixed op -------------------------------------------------------
def _edge_norms(count, channels, device, momentum=0.1):
    """BN(affine=False) modules for every candidate but the second (used as is)."""
    return [None if k == 1 else torch.nn.BatchNorm2d(channels, affine=False, momentum=momentum).to(device)
            for k in range(count)]


def _wide_copies(norms):
    import copy
    return [None if n is None else copy.deepcopy(n).double() for n in norms]


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_mixed_op_matches_reference(backend, momentum):
    """Outputs far from zero mean (the statistics must not cancel), a skipped candidate,
    a candidate used as is; output, every gradient and the running statistics."""
    device = backend.device
    for dtype in backend.dtypes:
        present = [True, True, False, True]
        outputs = [(torch.randn(3, 5, 7, 6, device=device) * 0.5 + 4 * k).to(dtype).requires_grad_() if p else None
                   for k, p in enumerate(present)]
        weights = torch.tensor([0.3, 0.2, 0.0, 0.5], device=device, requires_grad=True)
        norms = _edge_norms(4, 5, device, momentum)
        reference_norms = _wide_copies(norms)
        # rounded to the dtype first: the float64 reference sees the gradient the kernel sees
        grad = torch.randn(3, 5, 7, 6, device=device, dtype=torch.float64).to(dtype)
        leaves = [weights] + [o for o in outputs if o is not None]

        def call(fn, tensors, norm_list):
            it = iter(tensors[1:])
            return fn([next(it) if p else None for p in present], tensors[0], norm_list)

        for _ in range(2):  # twice: the running statistics blend two batches
            out = call(ops.batch_norm_mixed_op, leaves, norms)
            grads = torch.autograd.grad(out, leaves, grad)
            wide = [t.detach().double().requires_grad_() for t in leaves]
            ref_out = call(reference.batch_norm_mixed_op, wide, reference_norms)
            ref_grads = torch.autograd.grad(ref_out, wide, grad.double())
        assert_matches(out, ref_out.to(dtype))
        assert_matches(grads[0], ref_grads[0].float())
        for got, expected in zip(grads[1:], ref_grads[1:]):
            assert_matches(got, expected.to(dtype))
        for norm, ref, computed in zip(norms, reference_norms, present):
            if norm is not None and computed:
                torch.testing.assert_close(norm.running_mean, ref.running_mean.float(), rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(norm.running_var, ref.running_var.float(), rtol=1e-3, atol=1e-4)
                assert int(norm.num_batches_tracked) == int(ref.num_batches_tracked) == 2


@pytest.mark.parametrize("count", [1, 8, 11])  # CUDA: templated counts and the general kernel
def test_batch_norm_mixed_op_candidate_counts(backend, count):
    device = backend.device
    outputs = [torch.randn(4, 3, 5, 5, device=device, dtype=torch.float64, requires_grad=True) for _ in range(count)]
    weights = torch.rand(count, device=device, dtype=torch.float64, requires_grad=True)
    norms = _wide_copies(_edge_norms(count, 3, device))
    grad = torch.randn(4, 3, 5, 5, device=device, dtype=torch.float64)
    fused = torch.autograd.grad(ops.batch_norm_mixed_op(outputs, weights, norms), [weights, *outputs], grad)
    plain = torch.autograd.grad(reference.batch_norm_mixed_op(outputs, weights, norms), [weights, *outputs], grad)
    for got, expected in zip(fused, plain):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_batch_norm_mixed_op_channels_last_and_strided_outputs(backend, layout):
    base = [torch.randn(3, 8, 5, 6, device=backend.device, dtype=torch.float64) + k for k in range(3)]
    outputs = [b.to(memory_format=torch.channels_last) if layout == "channels_last" else b[:, ::2] for b in base]
    norms = _wide_copies(_edge_norms(3, 4 if layout == "strided" else 8, backend.device))
    weights = torch.rand(3, device=backend.device, dtype=torch.float64)
    check_against_reference(lambda w, *o: ops.batch_norm_mixed_op(list(o), w, norms),
                            lambda w, *o: reference.batch_norm_mixed_op(list(o), w, norms),
                            [weights.requires_grad_(), *(o.requires_grad_() for o in outputs)], torch.float64)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 4)])
def test_batch_norm_mixed_op_empty_batch_as_batch_norm(backend, shape, momentum):
    """No values per channel: nn.BatchNorm2d gives an empty output, counts the batch and
    keeps its running statistics; so does the fused op (it used to reject the batch)."""
    device = backend.device
    norms = _edge_norms(2, 3, device, momentum)
    reference_norms = _wide_copies(norms)
    outputs = [torch.randn(*shape, device=device, requires_grad=True) for _ in range(2)]
    weights = torch.tensor([0.4, 0.6], device=device, requires_grad=True)
    out = ops.batch_norm_mixed_op(outputs, weights, norms)
    ref_out = reference.batch_norm_mixed_op([o.double() for o in outputs], weights.double(), reference_norms)
    assert out.shape == ref_out.shape == shape
    out.sum().backward()
    assert torch.equal(weights.grad, torch.zeros(2, device=device))
    for norm, ref in zip(norms, reference_norms):
        if norm is not None:
            torch.testing.assert_close(norm.running_mean, ref.running_mean.float(), rtol=0, atol=0)
            torch.testing.assert_close(norm.running_var, ref.running_var.float(), rtol=0, atol=0)
            assert int(norm.num_batches_tracked) == int(ref.num_batches_tracked) == 1


def test_batch_norm_mixed_op_running_variance_of_nearly_constant_channels(backend):
    """The running variance is the batch variance the statistics pass computed, not one
    rebuilt from 1/sqrt(var + eps) (which loses var below eps to rounding, even below 0)."""
    device = backend.device
    x = torch.full((4, 3, 5, 5), 5.0, device=device)
    x[:, 1] += 1e-4 * torch.randn(4, 5, 5, device=device)  # var ~ 1e-8, far below eps
    x[:, 2] += torch.randn(4, 5, 5, device=device)
    norm = torch.nn.BatchNorm2d(3, affine=False, momentum=1.0).to(device)  # running = this batch's
    reference_norm = torch.nn.BatchNorm2d(3, affine=False, momentum=1.0).to(device)
    ops.batch_norm_mixed_op([x], torch.ones(1, device=device), [norm])
    reference_norm(x)
    assert torch.all(norm.running_var >= 0)
    assert norm.running_var[0] == 0  # a constant channel has no variance at all
    torch.testing.assert_close(norm.running_var, reference_norm.running_var, rtol=1e-5, atol=1e-14)


def test_batch_norm_mixed_op_backward_checks_the_incoming_gradient(backend):
    lib, device = backend.library, backend.device
    outputs = [torch.randn(2, 3, 4, 5, device=device) for _ in range(2)]
    weights = torch.tensor([0.3, 0.7], device=device)
    _, mean, invstd, _ = lib.batch_norm_mixed_op(outputs, weights, [0, 1], [True, True], 1e-5)
    with pytest.raises(RuntimeError, match=r"grad has shape \[2, 3, 4\] but the outputs have shape \[2, 3, 4, 5\]"):
        lib.batch_norm_mixed_op_backward(torch.randn(2, 3, 4, device=device), outputs, weights, [0, 1],
                                         [True, True], mean, invstd, True)


def test_batch_norm_mixed_op_eval_mode_uses_running_statistics(backend):
    device = backend.device
    outputs = [torch.randn(2, 3, 4, 4, device=device) + 1 for _ in range(3)]
    weights = torch.tensor([0.2, 0.3, 0.5], device=device)
    norms = _edge_norms(3, 3, device)
    for norm in norms[::2]:
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.eval()
    torch.testing.assert_close(ops.batch_norm_mixed_op(outputs, weights, norms),
                               reference.batch_norm_mixed_op(outputs, weights, norms))


def test_batch_norm_mixed_op_saves_no_normalised_output():
    """What the fused edge is for: the tensors kept for the backward are the candidates'
    inputs and small statistics, not one normalised copy per candidate."""
    outputs = [torch.randn(8, 4, 16, 16, requires_grad=True) for _ in range(3)]
    weights = torch.rand(3, requires_grad=True)
    norms = _edge_norms(3, 4, "cpu")

    def saved_bytes(fn):
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(outputs, weights, norms)
        own = {o.untyped_storage().data_ptr() for o in outputs} | {weights.untyped_storage().data_ptr()}
        return sum(size for ptr, size in storages.items() if ptr not in own)

    assert saved_bytes(ops.batch_norm_mixed_op) <= 2 * 3 * 4 * 4  # mean + invstd, (3, 4) float32
    assert saved_bytes(reference.batch_norm_mixed_op) >= 2 * outputs[0].numel() * 4


# ---- 3x3 pooling pair -----------------------------------------------------------------
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(5, 7), (8, 8), (1, 2), (13, 11)])
def test_pool3x3_pair_matches_reference(backend, stride, size):
    device = backend.device
    for dtype in backend.dtypes:
        x = torch.randn(2, 3, *size, device=device, dtype=dtype)
        x[0, 0, 0, :2] = 5.0  # a tie: the first maximum in row-major order gets the gradient
        for use in ((True, True), (True, False), (False, True)):
            def combined(a, fn):
                max_out, avg_out = fn(a, stride)
                return sum(out * (k + 1) for k, (out, used) in enumerate(zip((max_out, avg_out), use)) if used)

            check_against_reference(lambda a: combined(a, ops.pool3x3_pair),
                                    lambda a: combined(a, reference.pool3x3_pair), [x.requires_grad_()], dtype)


@pytest.mark.parametrize("stride", [1, 2])
def test_pool3x3_pair_infinities_and_nan_as_pytorch(backend, stride):
    """+inf and -inf in one window (their sum is NaN, the max is not), and NaNs: the max, the
    mean and where the max's gradient goes all follow PyTorch's pools (the last NaN of a
    window takes the gradient)."""
    device = backend.device
    for dtype in backend.dtypes:
        x = torch.randn(2, 3, 7, 6, device=device, dtype=dtype)
        x[0, 0, 1, 1], x[0, 0, 2, 2] = float("inf"), float("-inf")
        x[0, 1, 3, 1] = x[0, 1, 4, 2] = x[0, 1, 4, 3] = float("nan")
        x[1, 2, 0, :] = float("-inf")
        leaf = x.clone().requires_grad_()
        max_out, avg_out = ops.pool3x3_pair(leaf, stride)
        # the float64 reference of the same values (CPU pooling has no half kernels)
        ref_leaf = x.double().clone().requires_grad_()
        ref_max, ref_avg = reference.pool3x3_pair(ref_leaf, stride)
        torch.testing.assert_close(max_out, ref_max.to(dtype), rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(avg_out, ref_avg.to(dtype), equal_nan=True)
        weights = torch.arange(1.0, max_out.numel() + 1, device=device, dtype=dtype).view_as(max_out)
        (grad,) = torch.autograd.grad((max_out * weights).sum(), leaf)
        (ref_grad,) = torch.autograd.grad((ref_max * weights.double()).sum(), ref_leaf)
        torch.testing.assert_close(grad, ref_grad.to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_pool3x3_pair_channels_last_and_strided_input(backend, layout):
    base = torch.randn(2, 8, 9, 7, device=backend.device, dtype=torch.float64)
    x = base.to(memory_format=torch.channels_last) if layout == "channels_last" else base[:, 1::2]
    check_against_reference(lambda a: sum(ops.pool3x3_pair(a, 2)), lambda a: sum(reference.pool3x3_pair(a, 2)),
                            [x.requires_grad_()], torch.float64)


@pytest.mark.parametrize("shape", [(0, 3, 5, 5), (2, 0, 5, 5)])
def test_pool3x3_pair_empty_batch_and_no_channels(backend, shape):
    x = torch.randn(*shape, device=backend.device, requires_grad=True)
    max_out, avg_out = ops.pool3x3_pair(x, 2)
    assert max_out.shape == avg_out.shape == (*shape[:2], 3, 3)
    (max_out.sum() + avg_out.sum()).backward()
    assert x.grad.shape == shape


def test_pool3x3_pair_backward_checks_its_arguments(backend):
    lib, device = backend.library, backend.device
    x = torch.randn(2, 3, 7, 6, device=device)
    max_out, avg_out, positions = lib.pool3x3_pair(x, 2)  # outputs (2, 3, 4, 3)
    lib.pool3x3_pair_backward(max_out, avg_out, positions, [2, 3, 7, 6], 2)
    with pytest.raises(RuntimeError, match=r"grad_max has shape \[2, 3, 4, 2\] but positions has shape \[2, 3, 4, 3\]"):
        lib.pool3x3_pair_backward(max_out[..., :2], None, positions, [2, 3, 7, 6], 2)
    with pytest.raises(RuntimeError, match=r"grad_avg has shape \[2, 3, 4\] but positions has shape \[2, 3, 4, 3\]"):
        lib.pool3x3_pair_backward(None, avg_out[..., 0], positions, [2, 3, 7, 6], 2)
    with pytest.raises(RuntimeError, match=r"positions has shape \[2, 3, 4, 3\] but pooling input_size \[2, 3, 7, 6\]"
                                           r" with stride 1 gives \[2, 3, 7, 6\]"):
        lib.pool3x3_pair_backward(max_out, avg_out, positions, [2, 3, 7, 6], 1)
    with pytest.raises(RuntimeError, match=r"stride must be >= 1"):
        lib.pool3x3_pair_backward(max_out, avg_out, positions, [2, 3, 7, 6], 0)
    with pytest.raises(RuntimeError, match=r"grad_avg has dtype Double but grad_max has dtype Float"):
        lib.pool3x3_pair_backward(max_out, avg_out.double(), positions, [2, 3, 7, 6], 2)


def test_pool3x3_pair_keeps_a_byte_per_output_for_the_backward():
    x = torch.randn(4, 8, 16, 16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ops.pool3x3_pair(x)
    assert [(t.dtype, t.shape) for t in saved] == [(torch.uint8, x.shape)]


# ---- gradcheck, opcheck, compile --------------------------------------------------
def test_gradcheck_shuffle_ops(device):
    kw = dict(device=device, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 8, 5, 4, **kw)
    w1 = torch.randn(12, 4, 1, 1, **kw)
    b1 = torch.randn(12, **kw)
    assert torch.autograd.gradcheck(lambda a, b, c: ops.shuffle_gconv1x1(a, b, c, 2, 3), (x, w1, b1))
    assert torch.autograd.gradcheck(lambda a: ops.channel_shuffle(a, 4), (x,))


def test_gradcheck_kernel_ops(backend):
    kw = dict(device=backend.device, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 8, 5, 4, **kw)
    w2 = torch.randn(8, 1, 3, 3, **kw)
    b2 = torch.randn(8, **kw)
    for stride in (1, 2):
        assert torch.autograd.gradcheck(
            lambda a, b, c: ops.multi_dilation_dwconv2d(a, b, (1, 3), c, stride), (x, w2, b2)
        )
    outs = [torch.randn(2, 3, 4, **kw) for _ in range(2)]
    weights = torch.tensor([0.3, 0.7], **kw)
    zero = torch.zeros(1, device=backend.device, dtype=torch.float64)
    # The skipped candidate's weight stays exactly 0 (gradcheck must not perturb it).
    assert torch.autograd.gradcheck(
        lambda w, a, b: ops.mixed_op([a, None, b], torch.cat([w[:1], zero, w[1:]])), (weights, *outs)
    )
    for stride in (1, 2):
        assert torch.autograd.gradcheck(lambda a: ops.pool3x3_pair(a, stride), (x,))
    bn_outs = [torch.randn(3, 2, 3, 2, **kw) + k for k in range(3)]
    assert torch.autograd.gradcheck(
        lambda w, *o: backend.library.batch_norm_mixed_op(list(o), w, [0, 1, 2], [True, False, True], 1e-5)[0],
        (torch.tensor([0.2, 0.5, 0.3], **kw), *bn_outs),
    )


def test_opcheck_all_ops(device):
    x = torch.randn(2, 8, 5, 4, device=device, requires_grad=True)
    w1 = torch.randn(8, 4, 1, 1, device=device, requires_grad=True)
    b1 = torch.randn(8, device=device, requires_grad=True)
    w2 = torch.randn(8, 1, 3, 3, device=device, requires_grad=True)
    outs = [torch.randn(2, 3, 4, device=device, requires_grad=True) for _ in range(2)]
    weights = torch.tensor([0.3, 0.0, 0.7], device=device, requires_grad=True)
    lib = torch.ops.fastnas
    cases = [
        (lib.channel_shuffle.default, (x, 2)),
        (lib.shuffle_gconv1x1.default, (x, w1, b1, 2, 2)),
        (lib.shuffle_gconv1x1.default, (x, w1, None, 2, 4)),
        (lib.multi_dilation_dwconv2d.default, (x, w2, [1, 2], None, 2)),
        (lib.mixed_op.default, ([outs[0], outs[1]], weights, [0, 2])),
        (lib.mixed_op.default, ([x.to(memory_format=torch.channels_last)] * 2, weights, [0, 2])),
        (lib.mixed_op_backward.default, (x.detach().to(memory_format=torch.channels_last),
                                         [x.detach().to(memory_format=torch.channels_last)] * 2, weights, [0, 2],
                                         True)),
        (lib.mixed_op_backward.default, (x.detach(), [x.detach().to(memory_format=torch.channels_last)] * 2,
                                         weights, [0, 2], True)),
        (lib.batch_norm_mixed_op.default, ([x, x * 2], weights, [0, 2], [True, False], 1e-5)),
        (lib.pool3x3_pair.default, (x, 1)),
        (lib.pool3x3_pair.default, (x, 2)),
        (lib.shuffle_gconv1x1_grad_input.default, (x.detach(), w1.detach(), 2, 2)),
        (lib.shuffle_gconv1x1_grad_weight.default, (x.detach(), x.detach(), 2, 2)),
        (lib.multi_dilation_dwconv2d_grad_input.default, (x.detach(), w2.detach(), [1, 2], 1, [2, 8, 5, 4])),
        (lib.multi_dilation_dwconv2d_grad_weight.default, (x.detach(), x.detach(), [1, 2], 1, 3)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


class _TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pw = ops.ShuffleGConv1x1(8, 16, groups=4)
        self.dw = ops.MultiDilationDWConv2d(16, dilations=(1, 2))
        self.alpha = torch.nn.Parameter(torch.randn(2))
        self.norms = torch.nn.ModuleList([torch.nn.BatchNorm2d(16, affine=False), torch.nn.BatchNorm2d(16, affine=False)])

    def forward(self, x):
        y = self.pw(x)
        z = self.dw(y)
        mixed = ops.mixed_op([y, z], torch.softmax(self.alpha, 0)).relu()
        pooled, _ = ops.pool3x3_pair(z)
        normalised = ops.batch_norm_mixed_op([mixed, pooled], torch.softmax(self.alpha, 0), [self.norms[0], None])
        return normalised.mean((2, 3))


def test_torch_compile_fullgraph(device):
    import copy
    model = _TinyNet().to(device)
    twin = copy.deepcopy(model)
    x = torch.randn(2, 8, 6, 6, device=device)
    eager = model(x)
    eager.sum().backward()
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager" if device.type == "cpu" else "inductor")
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(q.grad, p.grad)
    for b, c in zip(model.buffers(), twin.buffers()):  # running statistics updated alike
        torch.testing.assert_close(c, b)


def test_cpu_kernels_give_the_same_bits_on_any_thread_count():
    """The CPU kernels split their work over torch's threads; partial sums are taken over
    fixed chunks, so the outputs and every gradient are identical for 1 and 3 threads."""
    x = torch.randn(3, 8, 36, 36)  # planes of 16 channels x 1296: mixed-op work of several chunks

    def run(threads):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            torch.manual_seed(1)
            model = _TinyNet()
            leaf = x.clone().requires_grad_()
            out = model(leaf)
            out.backward(torch.ones_like(out))
            return [out, leaf.grad, *(p.grad for p in model.parameters()), *model.buffers()]
        finally:
            torch.set_num_threads(previous)

    for single, several in zip(run(1), run(3)):
        torch.testing.assert_close(several, single, rtol=0, atol=0)


# ---- modules ----------------------------------------------------------------------
def test_modules_initialise_like_conv2d():
    torch.manual_seed(3)
    ours = ops.ShuffleGConv1x1(16, 32, groups=4, bias=True)
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(16, 32, 1, groups=4, bias=True)
    torch.testing.assert_close(ours.weight, conv.weight)
    torch.testing.assert_close(ours.bias, conv.bias)
    torch.manual_seed(4)
    dw = ops.MultiDilationDWConv2d(12, 5, dilations=(1, 2, 3))
    torch.manual_seed(4)
    conv = torch.nn.Conv2d(12, 12, 5, groups=12, bias=False)
    torch.testing.assert_close(dw.weight, conv.weight)


def test_fused_and_plain_modules_agree():
    fused = ops.MultiDilationDWConv2d(8, dilations=(1, 2), stride=2, bias=True)
    plain = ops.MultiDilationDWConv2d(8, dilations=(1, 2), stride=2, bias=True, fused=False)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(fused(x), plain(x))


def test_build_info():
    info = fastnas.build_info()
    assert set(info) >= {"cuda", "cuda_arch_list", "torch", "openmp"}
    # the CPU kernels run on torch's threads (at::parallel_for needs OpenMP at compile time)
    assert info["openmp"] == torch.backends.openmp.is_available()
    assert info["torch"].split(".")[:2] == torch.__version__.split("+")[0].split(".")[:2]
    if torch.cuda.is_available():
        assert info["cuda"]


# ---- bad input ---------------------------------------------------------------------
def test_errors_name_the_argument_and_fix():
    x = torch.randn(2, 6, 4, 4)
    with pytest.raises(RuntimeError, match=r"not divisible by groups=4"):
        ops.shuffle_gconv1x1(x, torch.randn(8, 1, 1, 1), groups=4)
    with pytest.raises(RuntimeError, match=r"weight must be shaped \(C_out, C_in/groups, 1, 1\)"):
        ops.shuffle_gconv1x1(x, torch.randn(6, 2, 1, 1), groups=2)
    with pytest.raises(RuntimeError, match=r"cannot be split into len\(dilations\)=4"):
        ops.multi_dilation_dwconv2d(x, torch.randn(6, 1, 3, 3), (1, 2, 3, 4))
    with pytest.raises(RuntimeError, match=r"even kernel size K=4"):
        ops.multi_dilation_dwconv2d(x, torch.randn(6, 1, 4, 4), (1, 2))
    with pytest.raises(RuntimeError, match=r"weight has dtype Double but x has dtype Float"):
        ops.multi_dilation_dwconv2d(x, torch.randn(6, 1, 3, 3, dtype=torch.float64), (1, 2))
    with pytest.raises(ValueError, match=r"got 2 outputs but \(3,\) weights"):
        ops.mixed_op([x, x], torch.ones(3))
    with pytest.raises(RuntimeError, match=r"outputs\[1\] is None but weights\[1\] = 0.5"):
        ops.mixed_op([x, None], torch.tensor([0.5, 0.5]))
    with pytest.raises(RuntimeError, match=r"every candidate must produce the same shape"):
        ops.mixed_op([x, x[:1]], torch.ones(2))
    with pytest.raises(ValueError, match=r"in_channels=6 is not divisible by groups=4"):
        ops.ShuffleGConv1x1(6, 8, groups=4)
    bn = torch.nn.BatchNorm2d(6, affine=False)
    with pytest.raises(ValueError, match=r"norms\[1\] is BatchNorm2d.*pass nn.BatchNorm2d\(affine=False\)"):
        ops.batch_norm_mixed_op([x, x], torch.ones(2), [bn, torch.nn.BatchNorm2d(6)])
    with pytest.raises(ValueError, match=r"got 2 outputs, 1 norms"):
        ops.batch_norm_mixed_op([x, x], torch.ones(2), [bn])
    with pytest.raises(RuntimeError, match=r"more than one value per channel"):
        ops.batch_norm_mixed_op([x[:1, :, :1, :1]], torch.ones(1), [bn])
    with pytest.raises(RuntimeError, match=r"outputs must be 4-D tensors shaped \(N, C, H, W\)"):
        ops.batch_norm_mixed_op([x[0]], torch.ones(1), [None])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_mismatch_is_reported():
    x = torch.randn(2, 4, 4, 4, device="cuda")
    with pytest.raises(RuntimeError, match=r"weight is on cpu but x is on cuda"):
        ops.multi_dilation_dwconv2d(x, torch.randn(4, 1, 3, 3), (1, 2))


# ---- autocast ------------------------------------------------------------------------
def test_ops_under_autocast(device):
    """Under torch.autocast(bfloat16) the convolution-like ops take bfloat16 activations and
    float32 weights (CUDA: computed in bfloat16; CPU: in float32, the CPU kernels' type), and
    the weighted sums take candidates of mixed dtypes (promoted to the widest)."""
    lower = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.randn(2, 8, 6, 5, device=device)
    conv = torch.nn.Conv2d(8, 8, 1).to(device)
    w_dw = torch.randn(8, 1, 3, 3, device=device, requires_grad=True)
    w_pw = torch.randn(8, 4, 1, 1, device=device, requires_grad=True)
    weights = torch.tensor([0.3, 0.7], device=device, requires_grad=True)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y = conv(x)
        assert y.dtype == torch.bfloat16
        dw = ops.multi_dilation_dwconv2d(y, w_dw, (1, 2))
        pw = ops.shuffle_gconv1x1(y, w_pw, None, 2, 2)
        mixed = ops.mixed_op([dw, x], weights)
    assert dw.dtype == lower and pw.dtype == lower
    assert mixed.dtype == torch.float32  # bfloat16/float32 candidates promote to float32
    y32 = y.detach().float()
    tolerance = dict(rtol=2e-2, atol=5e-2) if lower == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dw.float(), reference.multi_dilation_dwconv2d(y32, w_dw.detach(), (1, 2)),
                               **tolerance)
    torch.testing.assert_close(pw.float(), reference.shuffle_gconv1x1(y32, w_pw.detach(), None, 2, 2),
                               **tolerance)
    torch.testing.assert_close(mixed, reference.mixed_op([dw.float(), x], weights.detach()), **tolerance)
    mixed.sum().backward()
    assert w_dw.grad.dtype == torch.float32 and weights.grad.dtype == torch.float32
    assert torch.isfinite(w_dw.grad).all() and torch.isfinite(weights.grad).all()
