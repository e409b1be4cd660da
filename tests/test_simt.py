"""The SIMT emulator that runs the CUDA kernels on the CPU (tests/simt.py, csrc/simt): it
computes what a GPU computes, refuses what a GPU rejects or leaves undefined, and runs every
compiled instantiation of fastnas's CUDA kernels against the reference."""

import itertools
import math

import pytest
import torch

import simt
from conftest import check_against_reference
from fastnas.ops import functional, reference


@pytest.fixture(scope="module")
def lib():
    library = simt.load()
    yield library
    simt.configure(**simt.DEFAULTS)


# ---- the emulator itself ------------------------------------------------------------------
def test_threads_share_shared_memory_after_a_barrier(lib):
    x = torch.randn(5 * 64)
    torch.testing.assert_close(lib.selftest_shared_sum(x, True), x.view(5, 64).sum(1))


def test_a_missing_barrier_fails_the_thread_order_check(lib):
    """Thread 0 sums slots the others write: without __syncthreads it reads them before (in
    forward order) or after (in reverse order) they are written."""
    with pytest.raises(RuntimeError, match="different results with the threads run in opposite orders"):
        lib.selftest_shared_sum(torch.randn(5 * 64), False)


def _cuda_shuffle(values, kind, operand, width, mask):
    """What each lane of each warp reads, by the CUDA programming guide's definitions;
    NaN where it reads a lane outside the mask (undefined on hardware)."""
    result = []
    for lane_id, value in enumerate(values):
        lane, base = lane_id % 32, lane_id - lane_id % 32
        if not (mask >> lane) & 1:
            result.append(value)
            continue
        segment = lane - lane % width
        if kind == "index":
            source = segment + operand % width
        elif kind == "up":
            source = lane - operand if lane % width >= operand else lane
        elif kind == "down":
            source = lane + operand if lane % width + operand < width else lane
        else:
            source = lane ^ operand if (lane ^ operand) < segment + width else lane
        result.append(values[base + source] if (mask >> source) & 1 else math.nan)
    return torch.tensor(result)


@pytest.mark.parametrize("kind, code", [("index", 0), ("up", 1), ("down", 2), ("xor", 3)])
@pytest.mark.parametrize("width", [32, 16, 8])
@pytest.mark.parametrize("mask", [0xFFFFFFFF, 0x0000FFFF, 0x55555555])
def test_warp_shuffles_follow_cuda(lib, kind, code, width, mask):
    values = torch.arange(64, dtype=torch.float32) + 100
    for operand in (1, 3, 5, 16):
        got = lib.selftest_shuffle(values, code, operand, width, mask)
        expected = _cuda_shuffle(values.tolist(), kind, operand, width, mask)
        torch.testing.assert_close(got, expected, equal_nan=True, msg=f"operand {operand}")


def test_ballot(lib):
    x = torch.randn(64)
    got = lib.selftest_ballot(x)
    for warp in range(2):
        bits = sum(1 << lane for lane in range(32) if x[warp * 32 + lane] > 0)
        assert got[warp * 32: (warp + 1) * 32].tolist() == [bits] * 32


def test_dynamic_shared_memory_starts_poisoned(lib):
    assert torch.isnan(lib.selftest_unwritten_shared(96)).all()


@pytest.mark.parametrize("fault, threads, message", [
    (0, 64, r"thread \(5, 0, 0\) ended while other threads of its block wait at __syncthreads\(\)"),
    (1, 64, r"reached __syncthreads\(\) at .*simt_selftest_kernels.cpp:\d+ while others wait at the one at"),
    (2, 64, r"thread \(3, 0, 0\) ended while lanes of its warp wait for it at"),
    (3, 48, r"names lanes that do not exist \(the block's last warp has 16 threads\)"),
])
def test_what_cuda_leaves_undefined_fails_loudly(lib, fault, threads, message):
    with pytest.raises(RuntimeError, match=message):
        lib.selftest_faulty(fault, threads)


def test_launch_limits_as_cuda(lib):
    lib.selftest_launch(1, 65535, 1, 0)  # the largest grid.y
    lib.selftest_launch(1, 1, 1024, 48 * 1024)  # the largest block and dynamic shared memory
    bad = [((1, 1, 1025, 0), r"block \(1025, 1, 1\) exceeds CUDA's limits"),
           ((1, 65536, 32, 0), r"grid \(1, 65536, 1\) exceeds CUDA's limits"),
           ((0, 1, 32, 0), r"empty grid"),
           ((1, 1, 0, 0), r"empty block"),
           ((1, 1, 32, 48 * 1024 + 1), r"49153 bytes of dynamic shared memory exceed the 48 KiB"),
           ((2**32, 1, 32, 0), r"grid size 4294967296 does not fit the 32-bit dim3"),
           ((2**31 - 1, 1, 1024, 0), r"more than the emulator runs")]  # valid CUDA, too large to emulate
    for args, message in bad:
        with pytest.raises(RuntimeError, match=message):
            lib.selftest_launch(*args)


def test_every_kernel_instantiation_has_its_own_name(lib):
    names = [entry["kernel"] for entry in simt.kernel_report()]
    assert len(names) == len(set(names))
    assert sum(not name.startswith("selftest::") for name in names) == KERNEL_INSTANTIATIONS


# ---- every compiled kernel instantiation against the reference ---------------------------------
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# depthwise 80 direct + 48 tiled, mixed op 80, batch-normalised mixed op 144, pooling pair 48
KERNEL_INSTANTIATIONS = 480


def _depthwise(dtype, kernel_size, stride):
    x = torch.randn(2, 6, 7, 5, dtype=dtype).requires_grad_()
    weight = torch.randn(6, 1, kernel_size, kernel_size, dtype=dtype).requires_grad_()
    dilations = (1, 2, 3)
    check_against_reference(lambda a, b: functional.multi_dilation_dwconv2d(a, b, dilations, stride=stride),
                            lambda a, b: reference.multi_dilation_dwconv2d(a, b, dilations, stride=stride),
                            [x, weight], dtype)


def _mixed(dtype, count):
    outputs = [torch.randn(2, 3, 4, 5, dtype=dtype).requires_grad_() for _ in range(count)]
    weights = torch.rand(count).requires_grad_()
    check_against_reference(lambda w, *o: functional.mixed_op(list(o), w), lambda w, *o: reference.mixed_op(list(o), w),
                            [weights, *outputs], dtype)


def _batch_norm_mixed(dtype, count):
    norms = [None if k == 1 else torch.nn.BatchNorm2d(3, affine=False).double() for k in range(count)]
    outputs = [(torch.randn(3, 3, 4, 5) + k).to(dtype).requires_grad_() for k in range(count)]
    weights = torch.rand(count).requires_grad_()
    # float64 norms in both: the statistics are taken in the kernels' accumulation type
    check_against_reference(lambda w, *o: functional.batch_norm_mixed_op(list(o), w, norms),
                            lambda w, *o: reference.batch_norm_mixed_op(list(o), w, norms), [weights, *outputs], dtype)


def _pool_pair(dtype, stride):
    x = torch.randn(2, 3, 7, 6, dtype=dtype).requires_grad_()
    check_against_reference(lambda a: sum(functional.pool3x3_pair(a, stride)),
                            lambda a: sum(reference.pool3x3_pair(a, stride)), [x], dtype)


def test_every_kernel_instantiation_runs_and_matches_the_reference(lib, monkeypatch):
    """Each dtype x kernel size x stride x index width (tiled and direct) of the depthwise conv,
    each candidate count (the templated 1..8 and the general kernel) x index width of the
    mixed ops, each stride of the pooling pair: every compiled instantiation runs, each
    against the float64 reference."""
    monkeypatch.setattr(functional, "_ops", lib)
    before = {entry["kernel"]: entry["launches"] for entry in simt.kernel_report()}
    # int32 limit 0: every launcher takes its 64-bit index kernels; no shared memory: the
    # tiled depthwise kernels give way to the direct ones
    for limit, shared in ((simt.INT32_MAX, 48 * 1024), (simt.INT32_MAX, 0), (0, 0)):
        simt.configure(multiprocessors=2, int32_index_limit=limit, check_thread_order=True,
                       shared_memory_per_block=shared)
        for dtype, kernel_size, stride in itertools.product(DTYPES, (1, 3, 5, 7), (1, 2, 3)):
            _depthwise(dtype, kernel_size, stride)
        if shared == 0 and limit:  # the other ops' kernels take no shared-memory plan
            continue
        for dtype, count in itertools.product(DTYPES, (*range(1, 9), 11)):
            _mixed(dtype, count)
            if limit:  # the batch-norm kernels index planes in 64 bits throughout
                _batch_norm_mixed(dtype, count)
        for dtype, stride in itertools.product(DTYPES, (1, 2, 3)):  # 3: the kernels' run-time stride
            _pool_pair(dtype, stride)
    simt.configure(**simt.DEFAULTS)
    launched = {entry["kernel"]: entry["launches"] - before[entry["kernel"]] for entry in simt.kernel_report()}
    missed = [name for name, count in launched.items() if not count and not name.startswith("selftest::")]
    assert not missed, f"{len(missed)} kernel instantiations never ran: {missed}"


@pytest.mark.parametrize("multiprocessors", [1, 132])
def test_grids_of_one_and_of_many_blocks(lib, monkeypatch, multiprocessors):
    """1 SM: every grid-stride loop takes many steps and the two-stage sums have one block;
    132 (an H100): one step each, and as many partial sums as blocks."""
    monkeypatch.setattr(functional, "_ops", lib)
    simt.configure(**{**simt.DEFAULTS, "multiprocessors": multiprocessors})
    try:
        _depthwise(torch.float64, 3, 1)
        _mixed(torch.float64, 3)
        _batch_norm_mixed(torch.float64, 3)
        _pool_pair(torch.float64, 2)
    finally:
        simt.configure(**simt.DEFAULTS)


@pytest.mark.parametrize("multiprocessors", [1, 2, 132])
@pytest.mark.parametrize("count", [1, 3, 11])
def test_batch_norm_statistics_split_each_channel_over_blocks(lib, monkeypatch, multiprocessors, count):
    """40 images of 16 and 20 values per plane: several blocks share each channel's sums (as
    many as the SMs want, up to one per group of images) and the channel's last block
    adds them up (2 to 3 blocks per channel here)."""
    monkeypatch.setattr(functional, "_ops", lib)
    simt.configure(**{**simt.DEFAULTS, "multiprocessors": multiprocessors})
    try:
        for height, width in ((4, 4), (4, 5)):
            norms = [torch.nn.BatchNorm2d(3, affine=False).double() if k % 2 == 0 else None for k in range(count)]
            outputs = [(torch.randn(40, 3, height, width) * (k + 1) + k).double().requires_grad_()
                       for k in range(count)]
            weights = torch.rand(count).requires_grad_()
            check_against_reference(lambda w, *o: functional.batch_norm_mixed_op(list(o), w, norms),
                                    lambda w, *o: reference.batch_norm_mixed_op(list(o), w, norms),
                                    [weights, *outputs], torch.float64)
    finally:
        simt.configure(**simt.DEFAULTS)


@pytest.mark.parametrize("height", [1, 5, 13, 37])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_rows_per_thread_at_every_dilation(lib, monkeypatch, height, stride):
    """The tiled forward gives each thread 4 rows `dilation` apart: bands whose rows are not
    a multiple of 4 * dilation, at dilations 1 to 4 side by side, in one band and in several."""
    monkeypatch.setattr(functional, "_ops", lib)
    try:
        for shared_bytes in (48 * 1024, 6000):  # one band; bands of 32 (stride 1) or 9 (stride 2) rows
            simt.configure(**{**simt.DEFAULTS, "shared_memory_per_block": shared_bytes})
            x = torch.randn(2, 8, height, 6, dtype=torch.float64).requires_grad_()
            weight = torch.randn(8, 1, 3, 3, dtype=torch.float64).requires_grad_()
            bias = torch.randn(8, dtype=torch.float64).requires_grad_()
            dilations = (1, 2, 3, 4)
            check_against_reference(
                lambda a, b, c: functional.multi_dilation_dwconv2d(a, b, dilations, c, stride=stride),
                lambda a, b, c: reference.multi_dilation_dwconv2d(a, b, dilations, c, stride=stride),
                [x, weight, bias], torch.float64)
    finally:
        simt.configure(**simt.DEFAULTS)


@pytest.mark.parametrize("shared_bytes", [48 * 1024, 3000, 256])  # 16-row bands, 2-row bands, none
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_bands_fit_the_shared_memory(lib, monkeypatch, shared_bytes, stride):
    """Tall planes take several bands of rows per plane; with less shared memory per block
    the bands shrink (down to one row); with too little for one row the direct kernels run."""
    monkeypatch.setattr(functional, "_ops", lib)
    simt.configure(**{**simt.DEFAULTS, "shared_memory_per_block": shared_bytes})
    try:
        x = torch.randn(2, 4, 37, 11, dtype=torch.float64).requires_grad_()
        weight = torch.randn(4, 1, 5, 5, dtype=torch.float64).requires_grad_()
        check_against_reference(lambda a, b: functional.multi_dilation_dwconv2d(a, b, (1, 3), stride=stride),
                                lambda a, b: reference.multi_dilation_dwconv2d(a, b, (1, 3), stride=stride),
                                [x, weight], torch.float64)
    finally:
        simt.configure(**simt.DEFAULTS)
