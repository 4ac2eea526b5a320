"""Plain-PyTorch twins of dtc's XDim-KD volume ops (the tests' oracles), kept beside
:mod:`dtc.ops.reference` (the 2-D ops' twins)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def tta_accumulate(preds: torch.Tensor, params: torch.Tensor, size, eps: float = 1e-9):
    """Plain-PyTorch twin of ``torch.ops.dtc.tta_accumulate``, two-pass (mean first, then the weighted
    variance): materialises the N inverse-warped predictions and validity maps."""
    B, N, h, w = preds.shape
    H, W = int(size[0]), int(size[1])
    # each native pixel q reads the prediction at T(q) = R(a)(q - c) + c + t (align_corners=True)
    prm = params.to(torch.float64).reshape(B * N, 1, 1, 3)
    a, tx, ty = prm[..., 0], prm[..., 1], prm[..., 2]
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    dx, dy = x - (W - 1) / 2, y - (H - 1) / 2
    ux = a.cos() * dx - a.sin() * dy + (W - 1) / 2 + tx
    uy = a.sin() * dx + a.cos() * dy + (H - 1) / 2 + ty
    grid = torch.stack((2 * ux / (W - 1) - 1, 2 * uy / (H - 1) - 1), dim=-1).to(preds.dtype)
    flat = preds.reshape(B * N, 1, h, w)
    p = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=True).view(B, N, H, W)
    v = F.grid_sample(torch.ones_like(flat), grid, mode="bilinear", padding_mode="zeros",
                      align_corners=True).view(B, N, H, W)
    total = v.sum(1)
    mean = p.sum(1) / (total + eps)
    exact = torch.where(total > 0, p.sum(1) / total.clamp_min(torch.finfo(preds.dtype).tiny), torch.zeros_like(total))
    x = torch.where(v > 0, p / v.clamp_min(torch.finfo(preds.dtype).tiny), torch.zeros_like(p))
    var = (v * (x - exact.unsqueeze(1)) ** 2).sum(1) / (total + eps)
    return mean, var.clamp_min(0).sqrt(), total
