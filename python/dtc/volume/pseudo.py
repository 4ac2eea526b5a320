"""Pseudo-label post-processing for XDim-KD (docs/xdim.md, "Pseudo-labels"): the 3-D smoother.

The smoother minimises, per volume (or per chunk of slices),

    E(p) = (lambda_d / N) sum w (p - target)^2 + lambda_tv sum_a (1 / N_a) |D_a p|^2,

w = clip(1 - sigma_TTA, 0, 1), D_a forward differences along z, y, x, N voxels, N_a differences along
a. Its minimiser solves (W + kappa sum_a (N / N_a) L_a) p = W target with kappa = lambda_tv / lambda_d
(`torch.ops.dtc.smooth3d_pcg`, Eigen's Jacobi-preconditioned conjugate gradient). solver="adam" is the
original code's approximation: 60 Adam steps (lr 0.01) on E from the target.
"""
from __future__ import annotations

import torch

import dtc.ops  # noqa: F401  (registers torch.ops.dtc.* and their fake kernels)

SOLVERS = ("pcg", "adam")


def smoothing_energy(p: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, lambda_d: float = 1000.0,
                     lambda_tv: float = 100.0, lambda_tv_z: float | None = None) -> torch.Tensor:
    """E(p) above for a [D, H, W] volume (differentiable in p)."""
    lambda_tv_z = lambda_tv if lambda_tv_z is None else lambda_tv_z
    energy = lambda_d * (weight * (p - target) ** 2).mean()
    for axis, lam in ((0, lambda_tv_z), (1, lambda_tv), (2, lambda_tv)):
        if p.shape[axis] > 1:
            energy = energy + lam * (torch.diff(p, dim=axis) ** 2).mean()
    return energy


def _check(target, sigma):
    if not isinstance(target, torch.Tensor) or target.dim() != 3:
        raise ValueError(f"target must be a 3-D tensor [D, H, W], got "
                         f"{tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__}")
    if not target.is_floating_point():
        raise TypeError(f"target must be floating point, got {target.dtype}")
    if sigma is not None and (not isinstance(sigma, torch.Tensor) or sigma.shape != target.shape):
        raise ValueError(f"sigma must be a tensor of the target's shape {tuple(target.shape)}, got "
                         f"{tuple(sigma.shape) if isinstance(sigma, torch.Tensor) else type(sigma).__name__}")


def smooth3d(target: torch.Tensor, sigma: torch.Tensor | None = None, solver: str = "pcg", lambda_d: float = 1000.0,
             lambda_tv: float = 100.0, lambda_tv_z: float | None = None, chunk: int | None = None,
             tol: float = 1e-6, max_iter: int = 200, lr: float = 0.01, steps: int = 60,
             return_info: bool = False):
    """Smooth a cleaned mean pseudo-label volume [D, H, W] in 3-D; the result is clipped to [0, 1].

    sigma: the TTA standard deviation (weight w = clip(1 - sigma, 0, 1)); None means w = 1.
    lambda_tv_z: a separate weight for the z term (default lambda_tv).
    chunk: solve slices in independent chunks of this many (the original code used 64); None solves the
        whole volume at once, which avoids seams between chunks.
    solver: "pcg" (exact minimiser, to relative residual `tol` in at most `max_iter` iterations) or
        "adam" (`steps` Adam steps at `lr` from the target, as the original code).
    return_info: also return {"iterations": [...], "residual": [...]} per chunk (pcg only; empty for adam).
    """
    _check(target, sigma)
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if lambda_d <= 0 or lambda_tv < 0 or (lambda_tv_z is not None and lambda_tv_z < 0):
        raise ValueError(f"lambda_d must be > 0 and lambda_tv, lambda_tv_z >= 0, got {lambda_d}, {lambda_tv}, {lambda_tv_z}")
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be None or a positive int, got {chunk!r}")
    weight = torch.ones_like(target) if sigma is None else (1 - sigma).clamp(0, 1)
    if (weight <= 0).any():
        raise ValueError("sigma must stay below 1 (the weight 1 - sigma must be > 0; sigma <= 0.5 for probabilities)")
    lambda_tv_z = lambda_tv if lambda_tv_z is None else lambda_tv_z
    D = target.shape[0]
    step = D if chunk is None else chunk
    out = torch.empty_like(target)
    info = {"iterations": [], "residual": []}
    for z0 in range(0, D, step):
        t, w = target[z0:z0 + step], weight[z0:z0 + step]
        if solver == "pcg":
            p, it = torch.ops.dtc.smooth3d_pcg(t.cpu(), w.cpu(), lambda_tv_z / lambda_d, lambda_tv / lambda_d, tol, max_iter)
            info["iterations"].append(int(it[0]))
            info["residual"].append(float(it[1]))
            out[z0:z0 + step] = p.to(target.device)
        else:
            p = t.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([p], lr=lr)
            for _ in range(steps):
                opt.zero_grad()
                smoothing_energy(p, t, w, lambda_d, lambda_tv, lambda_tv_z).backward()
                opt.step()
            out[z0:z0 + step] = p.detach()
    out = out.clamp_(0, 1)
    return (out, info) if return_info else out
