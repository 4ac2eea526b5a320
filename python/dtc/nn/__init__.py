"""``nn.Module`` twins of dtc's functional ops."""
from __future__ import annotations

import torch
from torch import nn

from dtc import ops

__all__ = ["Warp"]


class Warp(nn.Module):
    """Module form of :func:`dtc.ops.warp` (same convention); ``forward(x, flow)``."""

    def __init__(self, padding: str = "border", align_corners: bool = True, rescale: bool = True):
        super().__init__()
        if padding not in ("border", "zeros"):
            raise ValueError(f"Warp: padding must be 'border' or 'zeros', got {padding!r}")
        self.padding, self.align_corners, self.rescale = padding, align_corners, rescale

    def forward(self, x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        return ops.warp(x, flow, padding=self.padding, align_corners=self.align_corners, rescale=self.rescale)

    def extra_repr(self) -> str:
        return f"padding={self.padding!r}, align_corners={self.align_corners}, rescale={self.rescale}"
from dtc.models.taps import FeatureTaps  # noqa: E402,F401  (re-exported: the model protocol wrapper)
