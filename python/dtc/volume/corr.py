"""Correlation distillation between a 3-D student and a 2-D teacher, slice by slice (docs/xdim.md)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import dtc.ops


def sample_points(features: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (border padding, align_corners=True) of [M, C, h, w] features at points [M, n, 2]
    in [-1, 1] (x, y), L2-normalised over channels: [M, n, C]."""
    sampled = F.grid_sample(features, points.unsqueeze(2).to(features.dtype), mode="bilinear",
                            padding_mode="border", align_corners=True)  # [M, C, n, 1]
    return F.normalize(sampled.squeeze(3).transpose(1, 2), dim=-1, eps=1e-12)


def correlation_distillation(student: torch.Tensor, teacher: torch.Tensor, n_points: int = 256, max_slices: int = 64,
                             replacement: bool = True, generator: torch.Generator | None = None,
                             slices: torch.Tensor | None = None, points: torch.Tensor | None = None,
                             perm: torch.Tensor | None = None, b0: float = 0.1, clamp_max: float = 0.8):
    """(L_self, L_perm) for student features and teacher features of the same slices.

    student: [B, C_s, Z, h, w] (the 3-D student's KD head) or [B*Z, C_s, h, w]; teacher: [B*Z, C_t, H_t, W_t]
    on the same slices (any grid: points are sampled in normalised coordinates; the channel counts may
    differ). When there are more than `max_slices` slices, that many are drawn, with replacement by
    default as the original code does. Each selected slice gets `n_points` uniform points. `slices`,
    `points` [M, n, 2] and `perm` [M] fix the random draws (tests); otherwise they come from `generator`.
    The teacher is detached.
    """
    if student.dim() == 5:
        student = student.transpose(1, 2).flatten(0, 1)
    if student.dim() != 4 or teacher.dim() != 4 or student.shape[0] != teacher.shape[0]:
        raise ValueError(f"student must be [B, C, Z, h, w] or [B*Z, C, h, w] and teacher [B*Z, C_t, H, W] over the same "
                         f"slices, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    if n_points < 1 or max_slices < 1:
        raise ValueError(f"n_points and max_slices must be >= 1, got {n_points} and {max_slices}")
    teacher = teacher.detach()
    total = student.shape[0]
    device = student.device
    if slices is None:
        if total > max_slices:
            slices = (torch.randint(total, (max_slices,), generator=generator) if replacement
                      else torch.randperm(total, generator=generator)[:max_slices])
        else:
            slices = torch.arange(total)
    slices = slices.to(device)
    M = slices.numel()
    if points is None:
        points = torch.rand(M, n_points, 2, generator=generator) * 2 - 1
    if points.shape[0] != M or points.dim() != 3 or points.shape[2] != 2:
        raise ValueError(f"points must be [M={M}, n, 2], got {tuple(points.shape)}")
    if perm is None:
        perm = torch.randperm(M, generator=generator)
    points, perm = points.to(device), perm.to(device)
    # losses in fp32 (or float64) even when the features are half precision
    dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    s_hat = sample_points(student[slices].to(dtype), points)
    t_hat = sample_points(teacher[slices].to(dtype), points)
    identity = torch.arange(M, device=device)
    return (dtc.ops.corr_distill_loss(s_hat, t_hat, identity, b0, clamp_max),
            dtc.ops.corr_distill_loss(s_hat, t_hat, perm, b0, clamp_max))
