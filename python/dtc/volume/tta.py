"""Test-time augmentation of XDim-KD pseudo-labels (docs/xdim.md, "Pseudo-labels").

A draw is a rotation by angle a about the slice centre followed by a translation t, in native pixels:
T(q) = R(a)(q - c) + c + t. `tta_warp` builds the augmented slice A x(u) = x(T^-1 u) at the network's
resolution; `torch.ops.dtc.tta_accumulate` warps the predictions back through T and accumulates them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import dtc.ops


def draw_tta_params(count: int, draws: int, size, max_angle_deg: float = 45.0, max_shift_fraction: float = 0.1,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """[count, draws, 3] (angle in radians, tx, ty in pixels): angle ~ U(-max_angle, max_angle), each shift
    ~ U(-R, R) with R = max_shift_fraction * max(H, W) (the original code's +-45 degrees and max(H, W)/10)."""
    if count < 1 or draws < 1:
        raise ValueError(f"count and draws must be >= 1, got {count} and {draws}")
    reach = max_shift_fraction * max(int(size[0]), int(size[1]))
    u = torch.rand(count, draws, 3, generator=generator, dtype=torch.float64) * 2 - 1
    return u * torch.tensor([math.radians(max_angle_deg), reach, reach], dtype=torch.float64)


def tta_warp(slices: torch.Tensor, params: torch.Tensor, out_size=None, mode: str = "bilinear") -> torch.Tensor:
    """Augmented copies of each slice: slices [B, H, W] (native), params [B, N, 3] -> [B, N, h, w] with
    (h, w) = out_size (default native). The output grid covers the native field of view
    (align_corners=True), so resizing to the network's input size happens in the same interpolation.
    Outside the slice the result is 0 (as the original code's affine augmentation fills)."""
    if not isinstance(slices, torch.Tensor) or slices.dim() != 3 or not slices.is_floating_point():
        raise ValueError(f"slices must be a floating [B, H, W] tensor, got "
                         f"{tuple(slices.shape) if isinstance(slices, torch.Tensor) else type(slices).__name__}")
    B, H, W = slices.shape
    if params.dim() != 3 or params.shape[0] != B or params.shape[2] != 3:
        raise ValueError(f"params must be [B={B}, N, 3] (angle, tx, ty), got {tuple(params.shape)}")
    if H < 2 or W < 2:
        raise ValueError(f"slices must be at least 2x2, got {H}x{W}")
    h, w = (H, W) if out_size is None else (int(out_size[0]), int(out_size[1]))
    N = params.shape[1]
    p = params.to(torch.float64, copy=False).reshape(B * N, 1, 1, 3).to(slices.device)
    a, tx, ty = p[..., 0], p[..., 1], p[..., 2]
    dev = slices.device
    ys = torch.arange(h, dtype=torch.float64, device=dev) * ((H - 1) / max(h - 1, 1))
    xs = torch.arange(w, dtype=torch.float64, device=dev) * ((W - 1) / max(w - 1, 1))
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    # T^-1(u) = R(-a)(u - c - t) + c
    dx, dy = x - (W - 1) / 2 - tx, y - (H - 1) / 2 - ty
    qx = a.cos() * dx + a.sin() * dy + (W - 1) / 2
    qy = -a.sin() * dx + a.cos() * dy + (H - 1) / 2
    grid = torch.stack((2 * qx / (W - 1) - 1, 2 * qy / (H - 1) - 1), dim=-1).to(slices.dtype)
    source = slices.unsqueeze(1).expand(B, N, H, W).reshape(B * N, 1, H, W)
    out = F.grid_sample(source, grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out.view(B, N, h, w)


def tta_predict(predict, slices: torch.Tensor, draws: int = 20, size=(256, 256), max_angle_deg: float = 45.0,
                max_shift_fraction: float = 0.1, generator: torch.Generator | None = None, batch: int = 32):
    """(mean, std, coverage) [B, H, W] of `predict` (a callable mapping [M, 1, h, w] slices to probabilities
    [M, 1, h, w]) over `draws` random rotations/translations of each native slice [B, H, W]."""
    B, H, W = slices.shape
    params = draw_tta_params(B, draws, (H, W), max_angle_deg, max_shift_fraction, generator)
    augmented = tta_warp(slices, params, size).reshape(B * draws, 1, int(size[0]), int(size[1]))
    with torch.no_grad():
        probs = torch.cat([predict(augmented[i:i + batch]) for i in range(0, augmented.shape[0], batch)])
    probs = probs.reshape(B, draws, int(size[0]), int(size[1]))
    return dtc.ops.tta_accumulate(probs, params.to(probs.device), (H, W))
