"""Loads the compiled kernels (fastnas._C), with a clear error when they are missing
or were built against another torch."""

import importlib
import json
from pathlib import Path

import torch

_META = Path(__file__).with_name("_build_meta.json")
_REBUILD = "rebuild fastnas against the installed torch: pip install --no-build-isolation ."


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("+")[0].split(".")[:2])


def load() -> dict:
    """Imports fastnas._C (which registers torch.ops.fastnas.*) and returns its build info."""
    if not _META.exists():
        raise ImportError(f"fastnas: the compiled kernels are missing; {_REBUILD}")
    meta = json.loads(_META.read_text())
    if _release(meta["torch"]) != _release(torch.__version__):
        raise ImportError(
            f"fastnas was built against torch {meta['torch']} but torch {torch.__version__} "
            f"is installed; {_REBUILD}"
        )
    try:
        importlib.import_module("fastnas._C")
    except ImportError as error:
        raise ImportError(f"fastnas: loading the compiled kernels failed ({error}); {_REBUILD}") from error
    return json.loads(torch.ops.fastnas.build_info())
