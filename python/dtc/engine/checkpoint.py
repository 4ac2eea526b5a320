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
    """(model in eval mode, checkpoint dict): rebuilds the network through the factory its stored name
    resolves to (built-in, registered or import path), with its kwargs and feature taps."""
    from dtc.models import build

    ckpt = load_run_checkpoint(path, map_location)
    spec = ckpt["model"]
    try:
        model = build(spec["name"], spec["kwargs"], spec.get("taps"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint {path}: its model {spec['name']!r} cannot be rebuilt: {exc}") from exc
    model.load_state_dict(spec["state_dict"])
    model.eval()
    return model, ckpt
