"""3-D evaluation of XDim-KD segmentations (docs/xdim.md, "Evaluation"): per-volume Dice, HD95 in mm with
anisotropic voxel spacing, relative volume error and volume in mL.

Arrays are (D, H, W) = (slice, row, column); `spacing` is the voxel size along those axes in mm.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def _spacing(spacing, ndim: int) -> tuple[float, ...]:
    s = tuple(float(v) for v in spacing)
    if len(s) != ndim or not all(math.isfinite(v) and v > 0 for v in s):
        raise ValueError(f"spacing must be {ndim} positive voxel sizes (mm), got {spacing!r}")
    return s


def _binary(x, name: str, threshold: float = 0.5) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == bool:
        return a
    if not np.issubdtype(a.dtype, np.number):
        raise TypeError(f"{name} must be a numeric or boolean array, got {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds non-finite values")
    return a > threshold


def edt(mask, spacing=None) -> np.ndarray:
    """Distance (in the units of `spacing`) from every element to the nearest True element of `mask`
    (0 on the mask; inf everywhere when the mask is empty), 2-D or 3-D: `torch.ops.dtc.edt` on numpy."""
    import torch

    import dtc.ops

    m = np.asarray(mask, bool)
    s = _spacing(spacing if spacing is not None else (1.0,) * m.ndim, m.ndim)
    return dtc.ops.edt(torch.from_numpy(m), s).numpy()


def _surface(mask: np.ndarray) -> np.ndarray:
    # voxels with a face neighbour outside the object (the array border counts as outside)
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)
    return mask & ~eroded


def hd95(pred, gt, spacing, threshold: float = 0.5) -> float:
    """95th-percentile symmetric Hausdorff distance between the surfaces, in mm: the larger of the two
    directed 95th percentiles. Both empty -> 0; exactly one empty -> NaN (undefined)."""
    p, g = _binary(pred, "pred", threshold), _binary(gt, "gt", 0.5)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have one shape, got {p.shape} and {g.shape}")
    s = _spacing(spacing, p.ndim)
    if not p.any() and not g.any():
        return 0.0
    if not p.any() or not g.any():
        return float("nan")
    sp, sg = _surface(p), _surface(g)
    d_pg = edt(sg, s)[sp]
    d_gp = edt(sp, s)[sg]
    return float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))


def volume_metrics(pred, gt, spacing, threshold: float = 0.5) -> dict[str, float]:
    """Dice, HD95 (mm), relative volume error |V_pred - V_gt| / V_gt and both volumes in mL for one volume.
    pred: probabilities or a mask (> threshold is foreground); gt: a 0/1 mask."""
    p, g = _binary(pred, "pred", threshold), _binary(gt, "gt", 0.5)
    if p.shape != g.shape or p.ndim != 3:
        raise ValueError(f"pred and gt must be 3-D volumes of one shape, got {p.shape} and {g.shape}")
    s = _spacing(spacing, 3)
    voxel_ml = s[0] * s[1] * s[2] / 1000.0
    inter, ps, gs = int((p & g).sum()), int(p.sum()), int(g.sum())
    dice = 1.0 if ps + gs == 0 else 2.0 * inter / (ps + gs)
    v_pred, v_gt = ps * voxel_ml, gs * voxel_ml
    return {"dice": dice, "hd95_mm": hd95(p, g, s), "volume_error": abs(v_pred - v_gt) / v_gt if gs else float("nan"),
            "volume_ml": v_pred, "volume_ml_gt": v_gt}
