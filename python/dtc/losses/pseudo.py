"""Flip pseudo-labels (docs/method.md §2.1)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["flip_pseudo_labels"]


def _logits_of(output):
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def flip_pseudo_labels(model: nn.Module, x: torch.Tensor, mode: str = "flip") -> torch.Tensor:
    """Soft pseudo-labels ``(N, 1, H, W)`` in ``[0, 1]`` from ``model`` run in eval mode without gradients.

    ``mode="flip"`` (the released code): ``flip(sigmoid(f(flip x)))``; ``"mean"`` (the paper's prose):
    the average of that and ``sigmoid(f(x))``. The model may return logits or a tuple whose first
    element is the logits; its train/eval mode is restored afterwards, also when it raises.

    Convention:
        ``flip`` mirrors the width axis (the last dimension); ``x`` is ``(N, 3, H, W)``.
    """
    if mode not in ("flip", "mean"):
        raise ValueError(f"mode must be 'flip' or 'mean', got {mode!r}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    was_training = model.training
    model.eval()
    try:
        flipped = torch.sigmoid(_logits_of(model(torch.flip(x, dims=(-1,))))).flip(-1)
        if mode == "mean":
            flipped = 0.5 * (flipped + torch.sigmoid(_logits_of(model(x))))
    finally:
        model.train(was_training)
    if flipped.dim() != 4 or flipped.shape[0] != x.shape[0] or flipped.shape[1] != 1:
        raise ValueError(f"model must return logits (N, 1, H, W), got shape {tuple(flipped.shape)}")
    return flipped
