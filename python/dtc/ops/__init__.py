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
    "bce_dice", "kd_loss", "corr_distill_loss", "tta_accumulate", "edt", "tfd_loss", "msda_st",
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


def edt(mask: torch.Tensor, spacing=(1.0, 1.0)) -> torch.Tensor:
    """Exact Euclidean distance from each element to the nearest nonzero element of ``mask``.

    Args:
        mask: ``(..., *spatial)``; nonzero marks the object. The last ``len(spacing)`` (1 to 3)
            dimensions are spatial, the leading ones a batch of independent samples.
        spacing: physical size of one step along each spatial dimension (e.g. ``(z, y, x)`` in mm for
            anisotropic volumes); distances come out in those units.

    Returns:
        float64 of ``mask``'s shape on ``mask``'s device: 0 on the object, ``+inf`` throughout a sample
        without object. Not differentiable.

    Convention:
        Computed on the CPU (a mask on another device is copied there and the result back): one exact
        pass of the lower-envelope transform per axis, the same 1-D transform as the weighted
        F-measure's distance map.
    """
    spacing = [float(s) for s in spacing]
    out = torch.ops.dtc.edt(mask.detach().cpu(), spacing)
    return out.to(mask.device)


def tfd_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, *, alpha_fg: float = 1.0,
             alpha_bg: float = 0.5, norm: str = "pixel_ln", attn_weight: bool = False) -> torch.Tensor:
    """Target-guided feature distillation on one encoder level (docs/v2i.md).

    Args:
        student: ``(B, C, H, W)`` student features (after the adapter), any float dtype.
        teacher: ``(B, C, H, W)`` the clip teacher's features, same dtype; a stop-gradient target.
        mask: ``(B, 1, H, W)`` soft foreground mask in ``[0, 1]`` at this level (``dtc.distill.soft_foreground``).
        alpha_fg, alpha_bg: weights of the foreground and background terms.
        norm: ``"pixel_ln"`` (standardise each pixel over channels; scale-free across backbones),
            ``"pearson"`` (each channel over the pixels) or ``"none"``.
        attn_weight: multiply the per-pixel error by the teacher's spatial attention
            ``H W softmax_p(mean_c |T| / 0.5)``.

    Returns:
        A scalar (float32, or float64 for float64 input): ``mean_b (alpha_fg L_fg + alpha_bg L_bg)`` with
        ``L_fg = sum_p M e / max(sum M, 1e-6)`` (0 for a sample without foreground),
        ``L_bg = sum_p (1 - M) e / max(sum (1 - M), 1e-6)`` and ``e = mean_c (N(S) - N(T))^2``.
        Differentiable in ``student`` only.

    Convention:
        Half-precision features are upcast inside the kernels; the loss is computed in float32. The mask's
        range is checked (one host sync).
    """
    return torch.ops.dtc.tfd_loss(student, teacher.detach(), mask, float(alpha_fg), float(alpha_bg), norm,
                                  bool(attn_weight))


def msda_st(value: torch.Tensor, spatial_shapes, sampling_locations: torch.Tensor,
            attention_weights: torch.Tensor) -> torch.Tensor:
    """Multi-frame multi-scale deformable attention: the sampler of the clip teacher's global branch.

    Args:
        value: ``(B, S, heads, D)``: the M = T·L value maps (every frame at every level) flattened
            row-major and concatenated, ``S = sum_m h_m w_m``.
        spatial_shapes: ``[(h_0, w_0), ..., (h_{M-1}, w_{M-1})]`` (or the flat list).
        sampling_locations: ``(B, Q, heads, M, K, 2)``, normalised ``(x, y)``.
        attention_weights: ``(B, Q, heads, M, K)`` (a softmax over (M, K) in the module).

    Returns:
        ``(B, Q, heads·D)``: ``sum_{m,k} A · bilinear(value_m, loc)``. Differentiable in value, locations and
        weights; float32 or float64.

    Convention:
        Location ``(u, v)`` on an ``h × w`` map is pixel ``(u w - 0.5, v h - 0.5)``, ``grid_sample``'s
        ``align_corners=False`` placement; samples outside the map read zero. On CUDA the backward uses
        atomics (not bitwise deterministic); the CPU kernel is deterministic.
    """
    flat = [int(v) for item in spatial_shapes for v in (item if isinstance(item, (tuple, list)) else (item,))]
    return torch.ops.dtc.msda_st(value, flat, sampling_locations, attention_weights)
