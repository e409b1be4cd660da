"""fastnas: C++/CUDA-accelerated neural architecture search for lightweight CNNs."""

from fastnas import _extension

_BUILD_INFO = _extension.load()

from fastnas import ops  # noqa: E402  (ops need the compiled library loaded)
from fastnas import flops  # noqa: E402  (registers FlopCounterMode formulas)


def build_info() -> dict:
    """How the kernels were built: ``cuda`` (CUDA kernels compiled), ``cuda_arch_list``,
    ``torch`` (the version built against), ``openmp`` (the CPU kernels use torch's threads)."""
    return dict(_BUILD_INFO)


__all__ = ["build_info", "flops", "ops"]
__version__ = "0.1.0"
