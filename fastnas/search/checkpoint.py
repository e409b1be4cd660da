"""Atomic search checkpoints and their checked loading, shared by every search loop."""

import os
from pathlib import Path

import torch


def atomic_save(state: dict, path: Path) -> None:
    """Writes to a temporary file and renames it over ``path``: a kill mid-write leaves
    the previous checkpoint intact."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checked(path: Path, device: torch.device, expected_format: str, current_config: dict,
                 world_size: int = 1) -> dict:
    """Loads a checkpoint for ``--resume``; clear errors when it is missing, unreadable,
    of another kind, made with other settings or with another number of processes."""
    if not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}; start without --resume")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # a truncated or foreign file
        raise ValueError(f"--resume: {path} is not a readable fastnas checkpoint ({error})") from None
    if not isinstance(state, dict) or state.get("format") != expected_format:
        raise ValueError(f"--resume: {path} is not a {expected_format} checkpoint")
    saved = state["config"]
    differing = sorted(k for k in current_config if saved.get(k) != current_config[k])
    if differing:
        details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current_config[k]!r}" for k in differing)
        raise ValueError(f"--resume: the checkpoint was made with other settings ({details}); "
                         f"rerun with the same settings or another --out")
    saved_world = state.get("world_size", 1)
    if saved_world != world_size:
        raise ValueError(f"--resume: the search in {path.parent} ran on {saved_world} process(es), this launch has "
                         f"{world_size}; resume it with the same number (the batch shares and batch-norm layers "
                         f"depend on it)")
    return state
