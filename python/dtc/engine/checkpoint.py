"""Run checkpoints, written atomically: a crash mid-write never leaves a truncated file behind."""
from __future__ import annotations

import os
from pathlib import Path

import torch

FORMAT = "dtc-run-checkpoint"
VERSION = 1


def load_run_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Loads a checkpoint this package wrote; the error names the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # truncated or foreign files raise many different errors
        raise ValueError(f"checkpoint {path} could not be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise ValueError(f"checkpoint {path} is not a dtc run checkpoint (expected format {FORMAT!r})")
    if ckpt.get("version", 0) > VERSION:
        raise ValueError(f"checkpoint {path} has format version {ckpt['version']}; this dtc reads up to {VERSION}")
    return ckpt


def model_from_checkpoint(path: str | os.PathLike, map_location="cpu"):
    """(model in eval mode, checkpoint dict): rebuilds the network from its stored name and kwargs."""
    from dtc.models import create

    ckpt = load_run_checkpoint(path, map_location)
    spec = ckpt["model"]
    model = create(spec["name"], **spec["kwargs"])
    model.load_state_dict(spec["state_dict"])
    model.eval()
    return model, ckpt
