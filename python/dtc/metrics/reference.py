"""Plain-numpy reference implementation of every frame metric (the test oracle and the fallback).

Written from the papers' formulas:
- S-measure: Fan et al., "Structure-measure", ICCV 2017 (object term + region term, alpha = 0.5).
- E-measure: Fan et al., "Enhanced-alignment measure", IJCAI 2018.
- weighted F-measure: Margolin, Zelnik-Manor and Tal, "How to evaluate foreground maps?", CVPR 2014.
- F-measure (beta^2 = 0.3), MAE, and the SUN-SEG "medical" curves (Dice, sensitivity, specificity, IoU
  over thresholds ``linspace(1, 0, 256)``).
Where those papers leave a convention open (centroid rounding, epsilon placement, empty masks), the
choice of the SUN-SEG evaluation toolbox is followed so that its published tables can be reproduced.

Convention:
    ``pred`` is a float64 (H, W) probability map in [0, 1] (already resized and, for the SUN-SEG
    protocol, min-max normalised: see :func:`dtc.metrics.sunseg.prepare_frame`); ``gt`` is a bool
    (H, W) mask. Threshold curves have 256 entries ordered from the highest threshold to the lowest:
    entry ``i`` belongs to threshold ``(255 - i) / 255`` (E/F curves: ``uint8(255 * pred) >= 255 - i``;
    medical curves: ``pred >= linspace(1, 0, 256)[i]``).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

# MATLAB's eps, the constant the original evaluation code uses to guard divisions.
EPS = float(np.spacing(1))
MEDICAL_THRESHOLDS = np.linspace(1.0, 0.0, 256)

SUNSEG_SCALARS = ("Smeasure", "wFmeasure", "MAE", "adpEm", "adpFm")
SUNSEG_CURVES = ("Em", "Fm", "Sen", "Spe", "Dice", "IoU")


# ----------------------------------------------------------------------------------------------- S-measure
def s_measure(pred: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> float:
    """Structure measure S_alpha = alpha * S_object + (1 - alpha) * S_region, clipped at 0."""
    gt_mean = gt.mean()
    if gt_mean == 0:  # no object: reward predicting nothing
        return float(1.0 - pred.mean())
    if gt_mean == 1:  # all object
        return float(pred.mean())
    score = alpha * _s_object(pred, gt) + (1.0 - alpha) * _s_region(pred, gt)
    return float(max(0.0, score))


def _object_similarity(values: np.ndarray) -> float:
    # 2x / (x^2 + 1 + sigma_x): high mean and low spread of the prediction inside the region.
    mean = values.mean()
    std = values.std(ddof=1) if values.size > 1 else np.nan
    return 2.0 * mean / (mean * mean + 1.0 + std + EPS)


def _s_object(pred: np.ndarray, gt: np.ndarray) -> float:
    u = gt.mean()
    fg = _object_similarity(pred[gt])
    bg = _object_similarity(1.0 - pred[~gt])
    return u * fg + (1.0 - u) * bg


def gt_centroid_split(gt: np.ndarray) -> tuple[int, int]:
    """Split point (x, y) of the region term: rounded 0-based centroid + 1 (so row/col counts of the top-left block)."""
    h, w = gt.shape
    area = gt.sum()
    if area == 0:
        x, y = np.round(w / 2), np.round(h / 2)
    else:
        # np.round is half-to-even: the toolbox's rounding, kept for parity with its tables.
        x = np.round(np.sum(gt.sum(axis=0) * np.arange(w)) / area)
        y = np.round(np.sum(gt.sum(axis=1) * np.arange(h)) / area)
    return int(x) + 1, int(y) + 1


def _ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    n = pred.size
    x, y = pred.mean(), gt.mean()
    # Blocks with one pixel give N - 1 = 0: the toolbox then divides by zero; guard to keep it finite.
    denom = n - 1 if n > 1 else np.nan
    sx = np.sum((pred - x) ** 2) / denom
    sy = np.sum((gt - y) ** 2) / denom
    sxy = np.sum((pred - x) * (gt - y)) / denom
    a = 4.0 * x * y * sxy
    b = (x * x + y * y) * (sx + sy)
    if a != 0:
        return a / (b + EPS)
    if b == 0:
        return 1.0
    return 0.0


def _s_region(pred: np.ndarray, gt: np.ndarray) -> float:
    h, w = gt.shape
    x, y = gt_centroid_split(gt)
    g = gt.astype(np.float64)
    area = h * w
    w1 = x * y / area
    w2 = y * (w - x) / area
    w3 = (h - y) * x / area
    w4 = 1.0 - w1 - w2 - w3
    blocks = [(slice(0, y), slice(0, x)), (slice(0, y), slice(x, w)),
              (slice(y, h), slice(0, x)), (slice(y, h), slice(x, w))]
    score = 0.0
    for weight, (rows, cols) in zip((w1, w2, w3, w4), blocks):
        p_blk, g_blk = pred[rows, cols], g[rows, cols]
        if p_blk.size == 0:  # a zero-area block has zero weight; skip its undefined SSIM
            continue
        score += weight * _ssim(p_blk, g_blk)
    return score


# ----------------------------------------------------------------------------------------------- E-measure
def _enhanced_sum(tp, fp, n_fg_gt: int, n_total: int):
    """Sum of the enhanced-alignment matrix for binary predictions with `tp`/`fp` foreground counts.

    For a binary prediction the alignment matrix takes only four values (one per TP/FP/FN/TN cell), so
    the sum is a count-weighted sum of four closed-form terms; works on scalars and on arrays of counts.
    """
    tp = np.asarray(tp, dtype=np.float64)
    fp = np.asarray(fp, dtype=np.float64)
    n_fg_pred = tp + fp
    n_bg_pred = n_total - n_fg_pred
    if n_fg_gt == 0:
        return n_bg_pred
    if n_fg_gt == n_total:
        return n_fg_pred
    fn = n_fg_gt - tp
    tn = n_bg_pred - fn
    mean_pred = n_fg_pred / n_total
    mean_gt = n_fg_gt / n_total
    total = 0.0
    for count, dp, dg in ((tp, 1.0 - mean_pred, 1.0 - mean_gt), (fp, 1.0 - mean_pred, -mean_gt),
                          (fn, -mean_pred, 1.0 - mean_gt), (tn, -mean_pred, -mean_gt)):
        align = 2.0 * dp * dg / (dp * dp + dg * dg + EPS)
        total = total + count * (align + 1.0) ** 2 / 4.0
    return total


def e_measure_at(pred: np.ndarray, gt: np.ndarray, threshold: float) -> float:
    """E-measure of the binary map ``pred >= threshold``."""
    binary = pred >= threshold
    tp = np.count_nonzero(binary & gt)
    fp = np.count_nonzero(binary & ~gt)
    return float(_enhanced_sum(tp, fp, int(np.count_nonzero(gt)), gt.size) / (gt.size - 1 + EPS))


def adaptive_threshold(pred: np.ndarray) -> float:
    """Twice the mean prediction, capped at 1 (Achanta et al.'s adaptive threshold)."""
    return float(min(2.0 * pred.mean(), 1.0))


def adaptive_e_measure(pred: np.ndarray, gt: np.ndarray) -> float:
    return e_measure_at(pred, gt, adaptive_threshold(pred))


def _uint8_cumulative_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TP and FP counts of ``uint8(255 * pred) >= k`` for k = 255..0 (256 entries, highest k first)."""
    levels = (pred * 255).astype(np.uint8)  # truncation, as the toolbox quantises
    fg_hist = np.bincount(levels[gt], minlength=256)
    bg_hist = np.bincount(levels[~gt], minlength=256)
    return np.cumsum(fg_hist[::-1]), np.cumsum(bg_hist[::-1])


def e_measure_curve(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """E-measure at the 256 thresholds of ``uint8(255 * pred)``; its mean is the mean E-measure."""
    tp, fp = _uint8_cumulative_counts(pred, gt)
    return _enhanced_sum(tp, fp, int(np.count_nonzero(gt)), gt.size) / (gt.size - 1 + EPS)


def mean_e_measure(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(e_measure_curve(pred, gt).mean())


# ----------------------------------------------------------------------------------------------- F-measures
def _f_beta(precision, recall, beta2: float):
    precision = np.asarray(precision, dtype=np.float64)
    recall = np.asarray(recall, dtype=np.float64)
    num = (1.0 + beta2) * precision * recall
    den = np.where(num == 0, 1.0, beta2 * precision + recall)
    return num / den


def f_measure_curve(pred: np.ndarray, gt: np.ndarray, beta2: float = 0.3) -> np.ndarray:
    """F_beta at the 256 thresholds of ``uint8(255 * pred)`` (beta^2 = 0.3); mean/max give mean/max F."""
    tp, fp = _uint8_cumulative_counts(pred, gt)
    predicted = tp + fp
    precision = tp / np.where(predicted == 0, 1, predicted)
    recall = tp / max(int(np.count_nonzero(gt)), 1)
    return _f_beta(precision, recall, beta2)


def adaptive_f_measure(pred: np.ndarray, gt: np.ndarray, beta2: float = 0.3) -> float:
    binary = pred >= adaptive_threshold(pred)
    tp = np.count_nonzero(binary & gt)
    if tp == 0:
        return 0.0
    precision = tp / np.count_nonzero(binary)
    recall = tp / np.count_nonzero(gt)
    return float(_f_beta(precision, recall, beta2))


def mae(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - gt)))


def matlab_gaussian_kernel(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    """2-D Gaussian normalised to sum 1, as MATLAB's ``fspecial('gaussian', size, sigma)``."""
    r = (size - 1) / 2.0
    ax = np.arange(-r, r + 1)
    k = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2.0 * sigma * sigma))
    k[k < np.finfo(k.dtype).eps * k.max()] = 0
    return k / k.sum()


def weighted_f_measure(pred: np.ndarray, gt: np.ndarray, beta2: float = 1.0) -> float:
    """Margolin et al.'s weighted F-measure; 0 for an empty mask (the toolbox's convention)."""
    if not gt.any():
        return 0.0
    # Distance of every background pixel to the nearest object pixel, and which object pixel that is.
    dist, nearest = ndimage.distance_transform_edt(~gt, return_indices=True)
    err = np.abs(pred - gt)
    # Pixel dependency: a background error next to the object is judged by the nearest object pixel's error...
    err_dep = err[nearest[0], nearest[1]]
    err_dep = np.where(gt, err, err_dep)
    # ...smoothed by a 7x7 Gaussian (sigma 5, zero padding outside the image).
    err_blur = ndimage.convolve(err_dep, matlab_gaussian_kernel(7, 5.0), mode="constant", cval=0.0)
    err_min = np.where(gt & (err_blur < err), err_blur, err)
    # Pixel importance: background errors count more the farther they are from the object.
    importance = np.where(gt, 1.0, 2.0 - np.exp(np.log(0.5) / 5.0 * dist))
    err_w = err_min * importance
    tp_w = gt.sum() - err_w[gt].sum()
    fp_w = err_w[~gt].sum()
    recall = 1.0 - err_w[gt].mean()
    precision = tp_w / (tp_w + fp_w + EPS)
    return float((1.0 + beta2) * recall * precision / (recall + beta2 * precision + EPS))


# ----------------------------------------------------------------------------------------------- medical curves
def medical_threshold_index(pred: np.ndarray) -> np.ndarray:
    """For each pixel, the first index ``i`` of MEDICAL_THRESHOLDS with ``pred >= thresholds[i]``.

    The thresholds descend, so ``pred >= thresholds[j]`` holds exactly for ``j >= i``: one histogram of
    these indices gives every threshold's counts. Exact (same float comparisons as a per-threshold loop).
    """
    ascending = MEDICAL_THRESHOLDS[::-1]
    # number of thresholds <= pred
    n_le = np.searchsorted(ascending, pred, side="right")
    return 256 - n_le


def medical_curves(pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, Dice and IoU of ``pred >= t`` for t in ``linspace(1, 0, 256)``.

    Toolbox convention: when a threshold yields no true positive all four are 0 (also specificity).
    """
    idx = medical_threshold_index(pred)
    tp = np.cumsum(np.bincount(idx[gt], minlength=257)[:256]).astype(np.float64)
    fp = np.cumsum(np.bincount(idx[~gt], minlength=257)[:256]).astype(np.float64)
    n_obj = float(np.count_nonzero(gt))
    n_pred = tp + fp
    fn = n_obj - tp
    tn = gt.size - n_pred - fn
    hit = tp > 0

    def ratio(num, den):
        # Full-object frames give specificity 0/0 = NaN, as in the toolbox.
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.divide(num, den, out=np.zeros(256), where=hit)

    return {
        "Sen": ratio(tp, np.full_like(tp, n_obj)),
        "Spe": ratio(tn, tn + fp),
        "Dice": ratio(2.0 * tp, n_obj + n_pred),
        "IoU": ratio(tp, fn + n_pred),
    }


def sunseg_frame(pred: np.ndarray, gt: np.ndarray) -> dict:
    """Every SUN-SEG quantity of one prepared frame: scalars and 256-entry curves."""
    out = {
        "Smeasure": s_measure(pred, gt),
        "wFmeasure": weighted_f_measure(pred, gt),
        "MAE": mae(pred, gt),
        "adpEm": adaptive_e_measure(pred, gt),
        "adpFm": adaptive_f_measure(pred, gt),
        "Em": e_measure_curve(pred, gt),
        "Fm": f_measure_curve(pred, gt),
    }
    out.update(medical_curves(pred, gt))
    return out


# ----------------------------------------------------------------------------------------------- threshold 0.5
BINARY_METRICS = ("IoU", "Dice", "sensitivity", "precision", "specificity", "accuracy", "F1")


def binary_metrics(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Overlap metrics of ``pred > threshold`` against ``gt``.

    Convention: when both prediction and mask are empty every ratio is 1 (a correct "nothing here");
    otherwise a ratio whose denominator is 0 (sensitivity on an empty mask, precision of an empty
    prediction) is NaN, and averages skip it.
    """
    b = pred > threshold
    tp = float(np.count_nonzero(b & gt))
    fp = float(np.count_nonzero(b & ~gt))
    fn = float(np.count_nonzero(~b & gt))
    tn = float(gt.size) - tp - fp - fn
    return _ratios_from_counts(tp, fp, fn, tn)


def _ratios_from_counts(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
    both_empty = tp + fp + fn == 0

    def div(num, den):
        if den == 0:
            return 1.0 if both_empty else float("nan")
        return num / den

    dice = div(2 * tp, 2 * tp + fp + fn)
    return {
        "IoU": div(tp, tp + fp + fn),
        "Dice": dice,
        "sensitivity": div(tp, tp + fn),
        "precision": div(tp, tp + fp),
        "specificity": tn / (tn + fp) if tn + fp > 0 else 1.0,
        "accuracy": (tp + tn) / (tp + fp + fn + tn),
        "F1": dice,
    }


def _boundary(mask: np.ndarray) -> np.ndarray:
    # Object pixels with at least one 4-neighbour outside the object (image border counts as outside).
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1), border_value=0)
    return mask & ~eroded


def surface_distances(pred_mask: np.ndarray, gt: np.ndarray, spacing=(1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each boundary pixel of one mask to the nearest boundary pixel of the other.

    Convention: ``spacing`` is (row, column) pixel size; distances come in those units (pixels by default).
    """
    bp, bg = _boundary(pred_mask), _boundary(gt)
    d_to_gt = ndimage.distance_transform_edt(~bg, sampling=spacing)
    d_to_pred = ndimage.distance_transform_edt(~bp, sampling=spacing)
    return d_to_gt[bp], d_to_pred[bg]


def hd95_assd(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5, spacing=(1.0, 1.0)) -> tuple[float, float]:
    """95th-percentile symmetric Hausdorff distance and average symmetric surface distance.

    Convention: both masks empty -> (0, 0); exactly one empty -> (NaN, NaN), undefined and skipped by
    averages. HD95 = max of the two directed 95th percentiles (linear interpolation).
    """
    b = pred > threshold
    if not b.any() and not gt.any():
        return 0.0, 0.0
    if not b.any() or not gt.any():
        return float("nan"), float("nan")
    d_pg, d_gp = surface_distances(b, gt, spacing)
    hd95 = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
    assd = (d_pg.sum() + d_gp.sum()) / (d_pg.size + d_gp.size)
    return float(hd95), float(assd)
