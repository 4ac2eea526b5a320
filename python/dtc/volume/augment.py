"""Joint geometric augmentation of slice stacks for XDim-KD training (docs/xdim.md, "Data")."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(images: torch.Tensor, targets: torch.Tensor | None = None, generator: torch.Generator | None = None,
                  max_angle_deg: float = 45.0, max_translate: float = 0.2, scale=(0.8, 1.2), hflip: float = 0.5):
    """One random affine (rotation, translation as a fraction of the size, scale) and a horizontal flip
    per sample, applied jointly to images [B, C, H, W] and targets [B, C', H, W] (every channel, e.g. the
    slices of a chunk, gets the sample's draw). Bilinear, zero outside. Returns (images, targets)."""
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
    if targets is not None and (targets.dim() != 4 or targets.shape[0] != images.shape[0]
                                or targets.shape[2:] != images.shape[2:]):
        raise ValueError(f"targets must be [B, C', H, W] matching images {tuple(images.shape)}, got {tuple(targets.shape)}")
    B = images.shape[0]
    u = torch.rand(B, 5, generator=generator, dtype=torch.float64)
    angle = (u[:, 0] * 2 - 1) * math.radians(max_angle_deg)
    shift = (u[:, 1:3] * 2 - 1) * max_translate * 2  # normalised coordinates span 2
    zoom = scale[0] + u[:, 3] * (scale[1] - scale[0])
    flip = torch.where(u[:, 4] < hflip, -1.0, 1.0).to(torch.float64)
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    # output (x, y) reads the input at the inverse transform; the flip mirrors the output's x
    theta = torch.stack([torch.stack([cos * flip, sin, -(cos * shift[:, 0] + sin * shift[:, 1])], 1),
                         torch.stack([-sin * flip, cos, -(-sin * shift[:, 0] + cos * shift[:, 1])], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype).to(images.device), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if targets is None:
        return out, None
    t = F.grid_sample(targets.to(images.dtype), grid.to(images.dtype), mode="bilinear", padding_mode="zeros",
                      align_corners=False)
    return out, t
