"""Mixed precision for search and training: torch.autocast, with the fastnas ops registered
for it (csrc/autocast.cpp). On CUDA the convolutions run in the chosen dtype; on the CPU
torch's convolutions do, and the fastnas ops compute in float32 (their CPU kernels)."""

import contextlib

import torch

AMP_DTYPES = {"bf16": torch.bfloat16}


def autocast(device: torch.device, amp: str | None):
    """torch.autocast for `amp` ("bf16") on `device`; no change for None."""
    if amp is None:
        return contextlib.nullcontext()
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp={amp!r} is not a mixed-precision mode; use one of {sorted(AMP_DTYPES)} or None")
    return torch.autocast(torch.device(device).type, dtype=AMP_DTYPES[amp])
