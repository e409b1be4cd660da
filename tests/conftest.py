import json
import os
from dataclasses import dataclass

import pytest
import torch
import torch._functorch.config

import simt

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel workers on a small machine: intra-op threads would oversubscribe the
    # cores and OpenMP's spin-waiting then slows everything down many times over.
    torch.set_num_threads(1)

# A custom op whose outputs alias its inputs or each other is an error under torch.compile
# when the environment variable CI is set and only a warning otherwise: be strict everywhere.
torch._functorch.config.error_on_custom_op_aliasing = True

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@dataclass(frozen=True)
class Backend:
    """Where an op test runs: "cpu" (the CPU kernels), "simt" (the CUDA kernels, emulated on
    CPU tensors by the test library fastnas_simt) or "cuda" (the CUDA kernels on a GPU)."""

    name: str

    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if self.name == "cuda" else "cpu")

    @property
    def dtypes(self) -> list[torch.dtype]:
        return ALL_DTYPES if self.name != "cpu" else [torch.float32, torch.float64]

    @property
    def library(self):
        return torch.ops.fastnas_simt if self.name == "simt" else torch.ops.fastnas

    def __str__(self):
        return self.name


BACKENDS = ["cpu", "simt"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """fastnas.ops (functional API and modules) on one backend; on "simt" they call
    torch.ops.fastnas_simt, whose kernels are the CUDA kernels run by the emulator."""
    chosen = Backend(request.param)
    if chosen.name == "simt":
        from fastnas.ops import functional

        simt.load()
        monkeypatch.setattr(functional, "_ops", chosen.library)
        yield chosen
        simt.configure(**simt.DEFAULTS)
    else:
        yield chosen


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


def forward_backward(fn, inputs, grad_dtype=None, grad_out_seed=1):
    """Runs fn, backpropagates a fixed random gradient (rounded to grad_dtype first, so a
    float64 reference sees the gradient a low-precision kernel saw), returns (out, grads)."""
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) if t is not None else None for t in inputs]
    out = fn(*leaves)
    generator = torch.Generator().manual_seed(grad_out_seed)
    grad = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    out.backward(grad.to(grad_dtype or out.dtype).to(out))
    return out.detach(), [None if t is None or t.grad is None else t.grad for t in leaves]


def check_against_reference(fused, plain, inputs, dtype):
    """fused on the inputs against plain in float64: the output and every input gradient."""
    out, grads = forward_backward(fused, inputs)
    wide = [None if t is None else t.detach().double().requires_grad_(t.requires_grad) for t in inputs]
    ref_out, ref_grads = forward_backward(plain, wide, grad_dtype=dtype)
    assert_matches(out, ref_out.to(dtype))
    for grad, ref_grad in zip(grads, ref_grads):
        assert (grad is None) == (ref_grad is None)
        if grad is not None:
            assert_matches(grad, ref_grad.to(grad.dtype))


# ---- which emulated kernel instantiations ran, over every xdist worker -----------------------
def _emulated_kernels():
    return simt.kernel_report() if hasattr(torch.ops, "fastnas_simt") and simt.load.cache_info().currsize else None


def pytest_configure(config):
    config.simt_reports = []


def pytest_sessionfinish(session):
    report = _emulated_kernels()
    if report is None:
        return
    if hasattr(session.config, "workeroutput"):  # an xdist worker: hand it to the controller
        session.config.workeroutput["simt_kernels"] = json.dumps(report)
    else:
        session.config.simt_reports.append(report)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    report = getattr(node, "workeroutput", {}).get("simt_kernels")
    if report:
        node.config.simt_reports.append(json.loads(report))


def pytest_terminal_summary(terminalreporter, config):
    if not config.simt_reports:
        return
    launches = {}
    for report in config.simt_reports:
        for entry in report:
            launches[entry["kernel"]] = launches.get(entry["kernel"], 0) + entry["launches"]
    own = {name: count for name, count in launches.items() if not name.startswith("selftest::")}
    missed = sorted(name for name, count in own.items() if not count)
    terminalreporter.write_sep("-", "CUDA kernels on the SIMT emulator")
    terminalreporter.write_line(
        f"{len(own) - len(missed)} of {len(own)} compiled fastnas kernel instantiations ran "
        f"({sum(own.values())} emulated launches; each op call runs twice, threads in opposite orders)"
    )
    for name in missed[:10]:
        terminalreporter.write_line(f"  not run: {name}")
    if len(missed) > 10:
        terminalreporter.write_line(f"  ... and {len(missed) - 10} more")
