"""pytest-benchmark cases: every fused op and the end-to-end supernet steps, each next to
the plain PyTorch composition it replaces (and, on CUDA, torch.compile of it).

Run through ``python benchmarks/run.py`` (which prints the ratio table and writes
benchmarks/results/); ``FASTNAS_BENCH_QUICK=1`` runs few rounds (CI). On the CPU the
batch sizes are scaled down (see CPU_BATCH) so the suite stays in minutes on 2 cores.
"""

import os

import pytest
import torch
import torch.nn.functional as F

from fastnas import ops
from fastnas.ops import reference
from fastnas.spaces import CanasSpace

DEVICE = torch.device(os.environ.get("FASTNAS_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))
QUICK = os.environ.get("FASTNAS_BENCH_QUICK") == "1"
ON_CUDA = DEVICE.type == "cuda"
CPU_BATCH = 16  # instead of 128 (ops) / 64 (DARTS edge) on the CPU
DTYPES = [torch.float32, torch.bfloat16] if ON_CUDA else [torch.float32]
IMPLS = ["fastnas", "eager"] + (["compile"] if ON_CUDA else [])

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def _batch(n: int) -> int:
    return n if ON_CUDA else min(n, CPU_BATCH)


def _sync():
    if ON_CUDA:
        torch.cuda.synchronize()


def saved_activation_bytes(forward) -> int:
    """Bytes of the tensors autograd keeps for the backward of forward() (each storage
    once, parameters excluded): the activation memory that dominates a training step's
    peak, measurable on any device."""
    storages = {}

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(storages.values())


def gradient_bytes(parameters) -> int:
    """Bytes a data-parallel step all-reduces: the gradients the last step produced (the
    sampled path's parameters; DARTS: weights and architecture parameters)."""
    return sum(p.grad.numel() * p.grad.element_size() for p in parameters if p.grad is not None)


def _run(benchmark, fn, info: dict):
    """Times fn (synchronised), recording its case description and, on CUDA, peak memory."""
    rounds, warmup = (3, 1) if QUICK else ((50, 5) if ON_CUDA else (10, 2))

    def call():
        fn()
        _sync()

    for _ in range(warmup):
        call()
    if ON_CUDA:
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(info)
    benchmark.extra_info["device"] = str(DEVICE)
    if ON_CUDA:
        benchmark.extra_info["peak_memory_bytes"] = torch.cuda.max_memory_allocated()


_compiled = {}


def _impl_fn(impl: str, fused_fn, plain_fn):
    if impl == "fastnas":
        return fused_fn
    if impl == "eager":
        return plain_fn
    if plain_fn not in _compiled:
        _compiled[plain_fn] = torch.compile(plain_fn)
    return _compiled[plain_fn]


def _step(fn, inputs, mode):
    """Forward only, or forward + backward of sum(out * g)."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                fn(*inputs)
        return run

    grad_out = {}

    def run():
        out = fn(*inputs)
        if "g" not in grad_out:
            grad_out["g"] = torch.randn_like(out)
        out.backward(grad_out["g"])
    return run


def _leaf(*shape, dtype):
    return torch.randn(*shape, device=DEVICE, dtype=dtype).requires_grad_()


# ---- ops ----------------------------------------------------------------------------------
SHUFFLE_CASES = [(128, 288, 28, g) for g in (2, 4, 8)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", SHUFFLE_CASES, ids=lambda c: f"N{c[0]}-C{c[1]}-{c[2]}x{c[2]}-g{c[3]}")
def test_shuffle_gconv1x1(benchmark, case, dtype, mode, impl):
    n, c, hw, g = case
    n = _batch(n)
    x, w = _leaf(n, c, hw, hw, dtype=dtype), _leaf(c, c // g, 1, 1, dtype=dtype)
    fn = _impl_fn(impl, lambda a, b: ops.shuffle_gconv1x1(a, b, None, g),
                  lambda a, b: reference.shuffle_gconv1x1(a, b, None, g))
    element = torch.finfo(dtype).bits // 8
    _run(benchmark, _step(fn, (x, w), mode), {
        "op": "shuffle_gconv1x1", "case": f"N{n} C{c} {hw}x{hw} g{g}", "dtype": str(dtype), "mode": mode,
        "impl": impl, "bytes": 2 * x.numel() * element})


DWCONV_CASES = [(128, 72, 56), (128, 144, 28)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", DWCONV_CASES, ids=lambda c: f"N{c[0]}-C{c[1]}-{c[2]}x{c[2]}")
def test_multi_dilation_dwconv2d(benchmark, case, dtype, mode, impl):
    n, c, hw = case
    n = _batch(n)
    dilations = (1, 2, 3, 4)
    x, w = _leaf(n, c, hw, hw, dtype=dtype), _leaf(c, 1, 3, 3, dtype=dtype)
    fn = _impl_fn(impl, lambda a, b: ops.multi_dilation_dwconv2d(a, b, dilations),
                  lambda a, b: reference.multi_dilation_dwconv2d(a, b, dilations))
    element = torch.finfo(dtype).bits // 8
    _run(benchmark, _step(fn, (x, w), mode), {
        "op": "multi_dilation_dwconv2d", "case": f"N{n} C{c} {hw}x{hw} d1-4", "dtype": str(dtype), "mode": mode,
        "impl": impl, "bytes": 2 * x.numel() * element})


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mixed_op(benchmark, dtype, mode, impl):
    n, c, hw, k = _batch(64), 16, 32, 8
    outputs = [_leaf(n, c, hw, hw, dtype=dtype) for _ in range(k)]
    weights = torch.softmax(torch.randn(k, device=DEVICE), 0).requires_grad_()

    def fused(w, *outs):
        return ops.mixed_op(outs, w)

    def plain(w, *outs):
        return reference.mixed_op(outs, w)

    fn = _impl_fn(impl, fused, plain)
    element = torch.finfo(dtype).bits // 8
    _run(benchmark, _step(fn, (weights, *outputs), mode), {
        "op": "mixed_op", "case": f"N{n} C{c} {hw}x{hw} K{k}", "dtype": str(dtype), "mode": mode, "impl": impl,
        "bytes": (k + 1) * outputs[0].numel() * element})


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pool3x3_pair(benchmark, dtype, mode, impl):
    """A DARTS edge's max and average 3x3 poolings of one input."""
    n, c, hw = _batch(64), 16, 32
    x = _leaf(n, c, hw, hw, dtype=dtype)

    def fused(a):
        max_out, avg_out = ops.pool3x3_pair(a)
        return max_out + avg_out

    def plain(a):
        max_out, avg_out = reference.pool3x3_pair(a)
        return max_out + avg_out

    fn = _impl_fn(impl, fused, plain)
    _run(benchmark, _step(fn, (x,), mode), {
        "op": "pool3x3_pair", "case": f"N{n} C{c} {hw}x{hw}", "dtype": str(dtype), "mode": mode, "impl": impl})


DARTS_EDGE_NORMALIZED = (True, True, True, True, True, True, False)  # pools, 4 convs, identity


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_batch_norm_mixed_op(benchmark, dtype, mode, impl):
    """A DARTS edge's final BNs (affine=False) + weighted sum over its 7 computed candidates."""
    n, c, hw = _batch(64), 16, 32
    outputs = [_leaf(n, c, hw, hw, dtype=dtype) for _ in DARTS_EDGE_NORMALIZED]
    weights = torch.softmax(torch.randn(len(outputs), device=DEVICE), 0).requires_grad_()
    norms = [torch.nn.BatchNorm2d(c, affine=False).to(DEVICE) if normalized else None
             for normalized in DARTS_EDGE_NORMALIZED]

    def fused(w, *outs):
        return ops.batch_norm_mixed_op(outs, w, norms)

    def plain(w, *outs):
        return reference.batch_norm_mixed_op(outs, w, norms)

    fn = _impl_fn(impl, fused, plain)
    element = torch.finfo(dtype).bits // 8
    # what the fused forward moves: a statistics pass over the normalised inputs, then
    # every input read and the output written
    passes = sum(DARTS_EDGE_NORMALIZED) + len(outputs) + 1
    _run(benchmark, _step(fn, (weights, *outputs), mode), {
        "op": "batch_norm_mixed_op", "case": f"N{n} C{c} {hw}x{hw} K7", "dtype": str(dtype), "mode": mode,
        "impl": impl, "bytes": passes * outputs[0].numel() * element})


# ---- end to end -----------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["fastnas", "eager"])
def test_canas_training_step(benchmark, impl):
    """One sampled-path training step of the CANAS supernet (32x32, batch 128)."""
    space = CanasSpace("cifar", num_classes=10)
    torch.manual_seed(0)
    supernet = space.supernet(fused=impl == "fastnas").to(DEVICE)
    optimizer = torch.optim.SGD(supernet.parameters(), lr=0.05, momentum=0.9)
    n = _batch(128)
    x = torch.randn(n, 3, 32, 32, device=DEVICE)
    y = torch.randint(0, 10, (n,), device=DEVICE)
    arch = (4, 5, 6, 7) * 4  # Dilated LightNet units of every group count

    def step():
        loss = F.cross_entropy(supernet(x, arch), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # the gradients whose bytes a data-parallel step would all-reduce
    _run(benchmark, step, {"op": "canas_step", "case": f"N{n} 32x32 dilated g1-8", "dtype": "torch.float32",
                           "mode": "fwdbwd", "impl": impl,
                           "saved_bytes": saved_activation_bytes(lambda: supernet(x, arch)),
                           "allreduce_bytes": gradient_bytes(supernet.parameters())})


@pytest.mark.parametrize("impl", ["fastnas", "eager"])
def test_darts_search_step(benchmark, impl):
    """One first-order DARTS step (alphas on a validation batch, then weights), batch 64,
    C=16, 8 cells, 32x32."""
    from fastnas.spaces.darts import DartsSupernet

    torch.manual_seed(0)
    model = DartsSupernet(16, 10, 8, fused=impl == "fastnas").to(DEVICE)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=3e-4)
    n = _batch(64)
    x = torch.randn(n, 3, 32, 32, device=DEVICE)
    y = torch.randint(0, 10, (n,), device=DEVICE)

    def step():
        a_opt.zero_grad(set_to_none=True)
        with model.frozen_weights():  # as DartsSearch does: no weight gradients in the alpha step
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), model.arch_parameters())
        for a, g in zip(model.arch_parameters(), grads):
            a.grad = g
        a_opt.step()
        w_opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        w_opt.step()

    step()
    _run(benchmark, step, {"op": "darts_step", "case": f"N{n} C16 8 cells 32x32", "dtype": "torch.float32",
                           "mode": "fwdbwd", "impl": impl, "saved_bytes": saved_activation_bytes(lambda: model(x)),
                           "allreduce_bytes": gradient_bytes(model.parameters())})
