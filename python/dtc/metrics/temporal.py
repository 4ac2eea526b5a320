"""Temporal stability metrics of a predicted video (docs/method.md section 5).

Convention:
    Predictions ``P_t`` are (H, W) probabilities in [0, 1]; binary masks are ``P > threshold``.
    ``flow`` is the dense flow from frame t-1 to frame t, shape (2, H, W), in pixels, channel 0 = dx
    (columns), channel 1 = dy (rows), evaluated at the pixel of frame t. Warping is the first-order
    backward warp ``W(A)(p) = A(p - F(p))``: bilinear sampling, border padding, pixel centres at
    ``align_corners=True`` positions (pixel i of a size-n axis sits at normalised 2 i / (n - 1) - 1).
    A custom ``warp(image (N,C,H,W) tensor, flow (N,2,H,W) tensor) -> (N,C,H,W) tensor`` following the
    same convention (e.g. the compiled op) can be passed instead of the grid_sample one.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from dtc.metrics._checks import as_array, check_prob_map

WarpFn = Callable[["object", "object"], "object"]


def _check_flow(flow, shape: tuple[int, int], name: str = "flow") -> np.ndarray:
    f = as_array(flow, name).astype(np.float64, copy=False)
    if f.shape != (2, *shape):
        raise ValueError(f"{name} must have shape (2, H, W) = (2, {shape[0]}, {shape[1]}) matching the "
                         f"predictions (channel 0 = dx, 1 = dy, in pixels), got {tuple(f.shape)}")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return f


def grid_sample_warp(image, flow):
    """Backward warp ``W(A)(p) = A(p - F(p))`` with torch.nn.functional.grid_sample.

    ``image``: (N, C, H, W) tensor, ``flow``: (N, 2, H, W) tensor in pixels (dx, dy).
    """
    import torch
    import torch.nn.functional as F

    n, _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype, device=flow.device),
                            torch.arange(w, dtype=flow.dtype, device=flow.device), indexing="ij")
    src_x = xs.unsqueeze(0) - flow[:, 0]
    src_y = ys.unsqueeze(0) - flow[:, 1]
    # align_corners=True: pixel 0 -> -1, pixel n-1 -> +1 (a size-1 axis maps to 0).
    gx = 2.0 * src_x / max(w - 1, 1) - 1.0
    gy = 2.0 * src_y / max(h - 1, 1) - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def compiled_warp(image, flow):
    """The same warp through dtc's compiled op (:func:`dtc.ops.warp`, border padding), for callers that
    have the core loaded; bit-for-bit the convention above."""
    from dtc import ops

    return ops.warp(image, flow.to(image.dtype), padding="border")


def warp_map(a: np.ndarray, flow: np.ndarray, warp: WarpFn | None = None) -> np.ndarray:
    """Warp one (H, W) or (C, H, W) float map with the convention above; returns float64 numpy."""
    import torch

    arr = np.asarray(a, dtype=np.float64)
    squeeze = arr.ndim == 2
    t = torch.from_numpy(arr[None] if squeeze else arr).unsqueeze(0)
    fl = torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float64)).unsqueeze(0)
    out = (warp or grid_sample_warp)(t, fl)
    out = out.detach().cpu().double().numpy()[0]
    return out[0] if squeeze else out


def temporal_consistency(pred_t, pred_prev) -> float:
    """TC = 1 - mean |P_t - P_{t-1}| (no motion compensation; the DTC authors' metric)."""
    p = check_prob_map(pred_t, "pred_t")
    q = check_prob_map(pred_prev, "pred_prev")
    if p.shape != q.shape:
        raise ValueError(f"pred_t and pred_prev must have the same shape, got {p.shape} and {q.shape}")
    return float(1.0 - np.mean(np.abs(p - q)))


def flow_temporal_consistency(pred_t, pred_prev, flow, warp: WarpFn | None = None) -> float:
    """TC_flow = 1 - mean |P_t - W(P_{t-1})|."""
    p = check_prob_map(pred_t, "pred_t")
    q = check_prob_map(pred_prev, "pred_prev")
    if p.shape != q.shape:
        raise ValueError(f"pred_t and pred_prev must have the same shape, got {p.shape} and {q.shape}")
    f = _check_flow(flow, p.shape)
    return float(1.0 - np.mean(np.abs(p - warp_map(q, f, warp))))


def warping_iou(pred_t, pred_prev, flow, threshold: float = 0.5, warp: WarpFn | None = None) -> float:
    """IoU(B_t, W(B_{t-1}) > 0.5) with B = P > threshold; 1 when both are empty."""
    p = check_prob_map(pred_t, "pred_t")
    q = check_prob_map(pred_prev, "pred_prev")
    if p.shape != q.shape:
        raise ValueError(f"pred_t and pred_prev must have the same shape, got {p.shape} and {q.shape}")
    f = _check_flow(flow, p.shape)
    b_t = p > threshold
    # A bilinearly warped binary mask is soft at the edges: re-binarise at one half.
    b_prev = warp_map((q > threshold).astype(np.float64), f, warp) > 0.5
    union = np.count_nonzero(b_t | b_prev)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(b_t & b_prev) / union)


def occlusion_mask(flow_forward, flow_backward, warp: WarpFn | None = None) -> np.ndarray:
    """Non-occlusion mask of frame t by the forward-backward check (Sundaram et al.; Ruder et al.).

    ``flow_forward``: t-1 -> t (the ``flow`` of the other functions); ``flow_backward``: t -> t-1, both
    (2, H, W) at frame-t pixels for the backward one. A pixel p of frame t is kept (True) when
    ``|b + f'|^2 < 0.01 (|b|^2 + |f'|^2) + 0.5`` with ``b = F_bw(p)`` and ``f' = F_fw(p + F_bw(p))``.
    """
    fw = as_array(flow_forward, "flow_forward").astype(np.float64)
    bw = as_array(flow_backward, "flow_backward").astype(np.float64)
    if fw.ndim != 3 or fw.shape[0] != 2:
        raise ValueError(f"flow_forward must have shape (2, H, W), got {tuple(fw.shape)}")
    if bw.shape != fw.shape:
        raise ValueError(f"flow_backward must have the shape of flow_forward {tuple(fw.shape)}, got {tuple(bw.shape)}")
    # Sampling at p + F_bw(p) is the backward warp with displacement -F_bw.
    fw_at_target = warp_map(fw, -bw, warp)
    lhs = np.sum((bw + fw_at_target) ** 2, axis=0)
    rhs = 0.01 * (np.sum(bw**2, axis=0) + np.sum(fw_at_target**2, axis=0)) + 0.5
    return lhs < rhs


def warping_error(pred_t, pred_prev, flow, mask=None, flow_backward=None, warp: WarpFn | None = None) -> float:
    """Occlusion-masked warping error of Lai et al. (ECCV 2018) for one frame pair.

    ``E = sum_p M(p) (P_t(p) - W(P_{t-1})(p))^2 / sum_p M(p)``. ``M`` is ``mask`` when given, else the
    forward-backward check with ``flow_backward`` when given, else all ones. NaN when M is all zero.
    """
    p = check_prob_map(pred_t, "pred_t")
    q = check_prob_map(pred_prev, "pred_prev")
    if p.shape != q.shape:
        raise ValueError(f"pred_t and pred_prev must have the same shape, got {p.shape} and {q.shape}")
    f = _check_flow(flow, p.shape)
    if mask is not None:
        m = as_array(mask, "mask")
        if m.shape != p.shape:
            raise ValueError(f"mask must have the predictions' shape {p.shape}, got {tuple(m.shape)}")
        m = m.astype(np.float64)
    elif flow_backward is not None:
        m = occlusion_mask(f, _check_flow(flow_backward, p.shape, "flow_backward"), warp).astype(np.float64)
    else:
        m = np.ones_like(p)
    total = m.sum()
    if total == 0:
        return float("nan")
    return float(np.sum(m * (p - warp_map(q, f, warp)) ** 2) / total)


def flicker(values) -> float:
    """Standard deviation over time (population, ddof=0) of a per-frame series, NaNs skipped."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be a non-empty 1-D series, got shape {v.shape}")
    v = v[np.isfinite(v)]
    return float(np.std(v)) if v.size else float("nan")


def area_flicker(preds, threshold: float = 0.5) -> float:
    """Std over time of the predicted area fraction (``P_t > threshold``) of one video (T, H, W)."""
    p = check_prob_map(preds, "preds", ndim=3)
    return flicker((p > threshold).mean(axis=(1, 2)))


def dice_flicker(preds, gts, threshold: float = 0.5) -> float:
    """Std over time of Dice at ``threshold`` against the masks, for one video (T, H, W)."""
    from dtc.metrics._checks import check_mask
    from dtc.metrics.reference import binary_metrics

    p = check_prob_map(preds, "preds", ndim=3)
    g = check_mask(gts, "gts", ndim=3)
    if p.shape != g.shape:
        raise ValueError(f"preds and gts must have the same (T, H, W) shape, got {p.shape} and {g.shape}")
    return flicker([binary_metrics(p[t], g[t], threshold)["Dice"] for t in range(p.shape[0])])


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be a 1-D per-frame series, got shape {v.shape}")
    return v[np.isfinite(v)]


def worst_frame(values) -> float:
    """The lowest value of a per-frame series (e.g. Dice), NaNs skipped; NaN when nothing is left."""
    v = _finite(values)
    return float(v.min()) if v.size else float("nan")


def event_split(values, events) -> tuple[float, float]:
    """``(mean over event frames, mean over calm frames)`` of a per-frame series of one video.

    ``events`` is one bool per frame (a transient event touched the frame). NaN values are skipped; a
    class without a finite frame gives NaN.
    """
    v = np.asarray(values, dtype=np.float64)
    e = np.asarray(events)
    if v.ndim != 1 or e.shape != v.shape:
        raise ValueError(f"values and events must be 1-D per-frame series of the same length, got shapes "
                         f"{v.shape} and {e.shape}")
    if e.dtype != np.bool_:
        if not np.isin(e, (0, 1)).all():
            raise ValueError("events must hold booleans (or 0/1), one per frame")
        e = e.astype(bool)
    out = []
    for chosen in (v[e], v[~e]):
        chosen = chosen[np.isfinite(chosen)]
        out.append(float(chosen.mean()) if chosen.size else float("nan"))
    return out[0], out[1]
