"""dtc's tensor ops: thin wrappers over ``torch.ops.dtc.*`` (C++/CUDA kernels with C++ autograd).

Each op here has a plain-PyTorch twin in :mod:`dtc.ops.reference` that the tests use as the oracle.
"""
from __future__ import annotations

import torch

from dtc._extension import load as _load

# Loading registers torch.ops.dtc.*; done at import so the op calls below stay traceable by
# torch.compile (dynamo cannot step into the pybind11 loader).
_load()

__all__ = [
    "warp", "resize_flow", "temporal_consistency", "local_prototypes", "global_prototypes", "foreground_threshold",
    "bce_dice", "kd_loss", "corr_distill_loss", "tta_accumulate",
]


def resize_flow(flow: torch.Tensor, size, *, align_corners: bool = True, rescale: bool = True) -> torch.Tensor:
    """Bilinearly resize a flow field ``(N, 2, h, w)`` to ``size = (H, W)``.

    Convention:
        With ``rescale`` the components are multiplied by the size ratio so they stay displacements
        in pixels of the new grid: ``(W-1)/(w-1)`` for x with ``align_corners=True``, ``W/w`` without
        (likewise for y). The authors' released code does not rescale (``preset="reference"``).
    """
    return torch.ops.dtc.resize_flow(flow, [int(s) for s in size], align_corners, rescale)


def warp(
    x: torch.Tensor,
    flow: torch.Tensor,
    *,
    padding: str = "border",
    align_corners: bool = True,
    rescale: bool = True,
) -> torch.Tensor:
    """Backward-warp ``x`` with ``flow``: ``W(x)(p) = x(p - F(p))``, bilinear.

    Args:
        x: ``(N, C, H, W)``, float32/float64 (also float16/bfloat16 on CUDA); any strides.
        flow: ``(N, 2, h, w)``, same dtype and device. If ``(h, w) != (H, W)`` it is resized with
            :func:`resize_flow` (``align_corners``, ``rescale``) first.
        padding: ``"border"`` clamps the sample point into the image; ``"zeros"`` reads 0 outside.

    Returns:
        ``(N, C, H, W)``, contiguous, differentiable in ``x`` and ``flow``.

    Convention:
        Flow is in pixels, channel 0 = dx (along W), channel 1 = dy (along H), evaluated at the
        target pixel and negated (a first-order backward warp, docs/method.md §2.5). Pixel ``(i, j)``
        sits at integer coordinates (``align_corners=True`` placement), so zero flow is the identity
        and an integer flow is an exact shift. A NaN/Inf flow vector yields NaN in every channel of
        that output pixel and no gradient (checking for it would cost a host sync per call).
        On CUDA the gradient with respect to ``x`` uses atomics and is not bitwise deterministic.
    """
    if x.dim() == 4 and flow.dim() == 4 and flow.shape[-2:] != x.shape[-2:]:
        flow = torch.ops.dtc.resize_flow(flow, [x.shape[-2], x.shape[-1]], align_corners, rescale)
    return torch.ops.dtc.warp(x, flow, padding)


# ---- The DTC training signals (docs/method.md §2). Thin wrappers over the fused ops with the same
# arguments and results as their plain-PyTorch twins in dtc.ops.reference; dtc.losses is the
# user-facing API (argument checks, presets). Shapes and conventions: cpp/include/dtc/ops.h.


def temporal_consistency(logits, images, flows, flows_backward=None, channel_scale=None, alpha: float = 13.3,
                         confidence: str = "mean_abs", soft_target: bool = False, normalise: bool = False,
                         return_maps: bool = False):
    """Fused confidence-weighted consistency of a window batch: ``(loss (T-1,), mass (T-1,), M, target)``.

    See :func:`dtc.losses.temporal_consistency` for the formula and conventions."""
    scale = [] if channel_scale is None else [float(s) for s in channel_scale]
    return torch.ops.dtc.temporal_consistency(logits, images, flows, flows_backward, scale, float(alpha), confidence,
                                              bool(soft_target), bool(normalise), bool(return_maps))


def local_prototypes(probs, features, flows, threshold, rescale_flow: bool = True, hard_target: bool = False):
    """Fused warp + masked average pooling of the local features: ``(v_prev, v_cur, mass)``.

    The mask is ``1[P_t > thr] * 1[P~ > thr]`` with ``P~ = W(P_{t-1})``, binarised at 0.5 first when
    ``hard_target`` (the reference's hard warped target)."""
    return torch.ops.dtc.local_prototypes(probs, features, flows, threshold, bool(rescale_flow), bool(hard_target))


def global_prototypes(probs, features, threshold):
    """Fused background masked average pooling of the global features: ``(u_prev, u_cur, mass_prev, mass_cur)``."""
    return torch.ops.dtc.global_prototypes(probs, features, threshold)


def foreground_threshold(probs, q: float = 0.7):
    """Per pair, ``mean_b sort(P_t[b].flatten())[int(q N)]`` (an order statistic, no interpolation; batched
    selection on the device)."""
    return torch.ops.dtc.foreground_threshold(probs, float(q))


def bce_dice(logits, target, smooth: float = 1e-5):
    """Fused ``0.5 BCE + 1 - mean soft Dice``: ``(loss, stats)``."""
    return torch.ops.dtc.bce_dice(logits, target, float(smooth))


def kd_loss(student_logits, teacher_logits, tau: float = 4.0):
    """Fused ``tau^2 mean((sigmoid(z/tau) - sigmoid(z_T/tau))^2)``."""
    return torch.ops.dtc.kd_loss(student_logits, teacher_logits, float(tau))


def corr_distill_loss(student_points, teacher_points, pair, b0: float = 0.1, clamp_max: float = 0.8):
    """Fused correlation distillation on L2-normalised point features (docs/xdim.md).

    student_points [M, n, C_s], teacher_points [M, n, C_t] (channel counts may differ), pair [M] int64:
    a permutation giving each slice's partner (``arange(M)`` for the self pairs). Returns
    ``mean_{i,a,b} -clamp(S_i(a).S_j(b), 0, clamp_max) * (Ft_ij(a,b) - b0)`` with the teacher correlation
    centred per row and re-centred on the mean over all pairs. The teacher gets no gradient.
    """
    return torch.ops.dtc.corr_distill_loss(student_points, teacher_points, pair, float(b0), float(clamp_max))


def tta_accumulate(preds, params, size, eps: float = 1e-9):
    """Test-time-augmentation accumulation for XDim-KD pseudo-labels (docs/xdim.md): ``(mean, std, coverage)``.

    preds [B, N, h, w]: N predictions per slice on augmented slices (any resolution covering the native
    field of view); params [B, N, 3]: each draw's (angle in radians, tx, ty in native pixels), the same
    values given to :func:`dtc.volume.tta_warp`; size = native (H, W). Each prediction is warped back to
    the native grid (up-sampling and inverse warp in one bilinear interpolation, zero outside) and the
    valid-weighted mean and standard deviation are accumulated in one Welford pass. Not differentiable.
    """
    return torch.ops.dtc.tta_accumulate(preds, params, [int(s) for s in size], float(eps))
