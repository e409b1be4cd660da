"""The per-kernel model of benchmarks/kernel_model.py: its floor bytes are what the ops really
read and write, and every kernel's estimate is a time at or above that floor."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import kernel_model  # noqa: E402


def _real_bytes(kernel):
    """Bytes of every tensor the op takes and returns, run for real on the CPU."""
    op, args = kernel.call("cpu")
    results = op(*args)
    tensors = [t for t in kernel_model._flatten(args) if isinstance(t, torch.Tensor)]
    tensors += [t for t in kernel_model._flatten(results) if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


SMALL = [*kernel_model.depthwise_cases(2, 4, 8, 3, (1, 2)), *kernel_model.pool_cases(2, 3, 6),
         *kernel_model.mixed_cases(2, 3, 4, 3), *kernel_model.batch_norm_mixed_cases(2, 3, 4, 3, 2)]


@pytest.mark.parametrize("kernel", SMALL, ids=lambda k: f"{k.name} {k.case}")
def test_floor_bytes_are_the_tensors_the_op_reads_and_writes(kernel):
    assert kernel.floor_bytes() == _real_bytes(kernel)


def test_depthwise_floor_by_hand():
    forward = kernel_model.depthwise_cases(2, 4, 8, 3, (1, 2))[0]
    # x and out (2 x 4 x 8 x 8 float32 each) and the 4 x 1 x 3 x 3 weight
    assert forward.floor_bytes() == 2 * (2 * 4 * 8 * 8 * 4) + 4 * 9 * 4


def test_every_estimate_is_at_or_above_the_floor():
    rows = kernel_model.model(measure_on_gpu=False)
    assert len(rows) == len(kernel_model.cases())
    for row in rows:
        assert row["design_bytes"] >= row["floor_bytes"] > 0
        assert row["estimated_us"] >= row["floor_us"]
        assert 0 < row["estimated_fraction"] <= 1
    text = kernel_model.report(rows)
    assert "depthwise weight grad" in text and "BN mixed op backward" in text


def test_data_parallel_estimate_is_a_ring_all_reduce():
    import run

    estimate = run.scaling_estimate(360_000_000, step_seconds=0.01)
    nvlink = estimate["8 GPUs, NVLink"]
    # each of 8 GPUs moves 2 * 7/8 of 360 MB at 360 GB/s: 1.75 ms, plus 20 us
    assert nvlink["allreduce_ms"] == pytest.approx(1.77)
    assert nvlink["efficiency"] == pytest.approx(10 / 11.77)
    assert estimate["2 nodes x 8 GPUs, InfiniBand"]["allreduce_ms"] == pytest.approx(2 * 15 / 16 * 9 + 0.05)
