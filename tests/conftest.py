import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel workers on a small machine: intra-op threads would oversubscribe the
    # cores and OpenMP's spin-waiting then slows everything down many times over.
    torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_matches(actual, expected):
    """Element-wise closeness for float32/64; for float16/bfloat16, whose rounding grows
    with the reduction length, the relative error norm ||a - e|| / ||e||."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    if actual.dtype == torch.float64:
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    elif actual.dtype == torch.float32:
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    else:
        assert torch.isfinite(actual).all()
        error = (actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-12)
        assert error < {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}[actual.dtype], float(error)
