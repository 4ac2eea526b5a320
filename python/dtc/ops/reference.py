"""Plain-PyTorch versions of dtc's ops: the oracle for tests and a readable specification.

They are compositions of ATen ops (``grid_sample``, ``interpolate``), slower and heavier in memory
than the fused kernels but differentiable by PyTorch's own autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_flow(flow: torch.Tensor, size, *, align_corners: bool = True, rescale: bool = True) -> torch.Tensor:
    h, w = flow.shape[-2:]
    H, W = int(size[0]), int(size[1])
    if (h, w) == (H, W):
        return flow
    out = F.interpolate(flow, size=(H, W), mode="bilinear", align_corners=align_corners)
    if not rescale:
        return out
    if align_corners:
        sx = (W - 1) / (w - 1) if w > 1 else 1.0
        sy = (H - 1) / (h - 1) if h > 1 else 1.0
    else:
        sx, sy = W / w, H / h
    return torch.cat([out[:, :1] * sx, out[:, 1:] * sy], dim=1)


def warp(x: torch.Tensor, flow: torch.Tensor, *, padding: str = "border", align_corners: bool = True,
         rescale: bool = True) -> torch.Tensor:
    """``x(p - F(p))`` through ``grid_sample`` with an identity grid (see :func:`dtc.ops.warp`)."""
    N, _, H, W = x.shape
    flow = resize_flow(flow, (H, W), align_corners=align_corners, rescale=rescale)
    ys = torch.arange(H, dtype=x.dtype, device=x.device).view(1, H, 1)
    xs = torch.arange(W, dtype=x.dtype, device=x.device).view(1, 1, W)
    sample_x = xs - flow[:, 0]
    sample_y = ys - flow[:, 1]
    # Normalise with grid_sample's align_corners=False mapping, pixel i <-> (2i + 1)/size - 1, which
    # unnormalises back to the same pixel coordinate and, unlike align_corners=True, also exists
    # for images one pixel wide. Border clipping is in pixel coordinates either way.
    grid = torch.stack([(2 * sample_x + 1) / W - 1, (2 * sample_y + 1) / H - 1], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)
