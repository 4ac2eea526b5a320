"""Forward–backward consistency: which pixels a flow field can be trusted at."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sample_flow", "forward_backward_consistency"]


def _check_flow(flow: torch.Tensor, name: str) -> None:
    if not isinstance(flow, torch.Tensor) or flow.dim() != 4 or flow.shape[1] != 2:
        shape = tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__
        raise ValueError(f"{name} must have shape (N, 2, H, W) (dx, dy in pixels), got {shape}")
    if not flow.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {flow.dtype}")


def sample_flow(field: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``field`` ``(N, C, H, W)`` at ``p + displacement(p)``, border clamped.

    Convention: pixel centres at integer coordinates (``align_corners=True``), displacement in pixels
    (channel 0 = dx, 1 = dy).
    """
    N, _, H, W = displacement.shape
    ys, xs = torch.meshgrid(torch.arange(H, device=field.device, dtype=displacement.dtype),
                            torch.arange(W, device=field.device, dtype=displacement.dtype), indexing="ij")
    gx = (xs + displacement[:, 0]) * (2.0 / max(W - 1, 1)) - 1.0
    gy = (ys + displacement[:, 1]) * (2.0 / max(H - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(field.to(displacement.dtype), grid, mode="bilinear", padding_mode="border", align_corners=True)


def forward_backward_consistency(flow_fw: torch.Tensor, flow_bw: torch.Tensor, *, alpha: float = 0.01,
                                 beta: float = 0.5, return_error: bool = False):
    """Non-occlusion mask from a forward and a backward flow (Sundaram et al. 2010; docs/method.md §2.5).

    A pixel p is consistent when ``|F_fw(p) + F_bw(p + F_fw(p))|² < alpha·(|F_fw(p)|² +
    |F_bw(p + F_fw(p))|²) + beta``: following the flow there and back returns near the start.

    Args:
        flow_fw: ``(N, 2, H, W)`` flow from frame a to frame b, ``a(p) ≈ b(p + F_fw(p))`` (OpenCV's
            convention, e.g. ``farneback(a, b)``).
        flow_bw: ``(N, 2, H, W)`` flow from b to a (``farneback(b, a)``).
        return_error: also return the squared round-trip error ``(N, 1, H, W)``.

    Returns:
        ``(N, 1, H, W)`` bool, True where the flow is consistent (not occluded), at frame a's pixels.
        Points whose forward flow leaves the image are marked inconsistent.
    """
    _check_flow(flow_fw, "flow_fw")
    _check_flow(flow_bw, "flow_bw")
    if flow_fw.shape != flow_bw.shape:
        raise ValueError(f"flow_fw and flow_bw must have the same shape, got {tuple(flow_fw.shape)} and {tuple(flow_bw.shape)}")
    fw = flow_fw.float()
    bw_at = sample_flow(flow_bw.float(), fw)
    err = ((fw + bw_at) ** 2).sum(1, keepdim=True)
    bound = alpha * ((fw ** 2).sum(1, keepdim=True) + (bw_at ** 2).sum(1, keepdim=True)) + beta
    H, W = fw.shape[-2:]
    xs = torch.arange(W, device=fw.device, dtype=fw.dtype).view(1, 1, 1, W) + fw[:, :1]
    ys = torch.arange(H, device=fw.device, dtype=fw.dtype).view(1, 1, H, 1) + fw[:, 1:]
    inside = (xs >= 0) & (xs <= W - 1) & (ys >= 0) & (ys <= H - 1)
    mask = (err < bound) & inside
    return (mask, err) if return_error else mask
