"""The SUN-SEG evaluation protocol: frame preparation, per-video averaging, summary table.

The SUN-SEG toolbox (GewelsJI/VPS, ``eval/``) evaluates a method as follows, and this module
reproduces it (checked against the toolbox's own result table in the tests):

1. per case (video), frames sorted by number; the first and the last frame are dropped;
2. each prediction (8-bit PNG) is resized to its mask with bilinear interpolation when sizes differ;
3. the prediction is divided by 255 and min-max normalised per frame (unless constant); the mask is
   ``gt > 128``;
4. every quantity (scalars and 256-threshold curves) is averaged over the frames of a case, then over
   cases; ``mean*``/``max*`` are the mean/max of the averaged curve; the table shows 3 decimals.

One version detail matters at the third decimal: the toolbox at commit a718e53 (``MyEval.py``, which
produced the table that the SUN-SEG fixture tests expect) rounds each case's scalar scores (S-measure,
weighted F, MAE, adaptive E and F) to 3 decimals *before* averaging over cases; later versions
(``vps_evaluator.py``, 2022-03-14) average unrounded values. ``case_decimals=3`` reproduces the former,
``None`` (default) the latter. On the fixture this moves weighted F from 0.3404958 (prints 0.340) to
0.3405 (prints 0.341, as the table does).

Convention:
    frame records are dicts from :func:`dtc.metrics.functional.sunseg_frame`; summaries use the
    toolbox's column names (``Smeasure, wFmeasure, MAE, adpEm, meanEm, maxEm, adpFm, meanFm, maxFm,
    meanSen, maxSen, meanSpe, maxSpe, meanDic, maxDic, meanIoU, maxIoU``).
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np

from dtc.metrics import reference as ref

SUMMARY_COLUMNS = ("Smeasure", "wFmeasure", "MAE", "adpEm", "meanEm", "maxEm", "adpFm", "meanFm", "maxFm",
                   "meanSen", "maxSen", "meanSpe", "maxSpe", "meanDic", "maxDic", "meanIoU", "maxIoU")
_CURVE_COLUMNS = {"Em": ("meanEm", "maxEm"), "Fm": ("meanFm", "maxFm"), "Sen": ("meanSen", "maxSen"),
                  "Spe": ("meanSpe", "maxSpe"), "Dice": ("meanDic", "maxDic"), "IoU": ("meanIoU", "maxIoU")}


def resize_to(pred: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize to (H, W) with OpenCV, as the toolbox does (uint8 in -> uint8 out)."""
    if pred.shape == tuple(shape):
        return pred
    import cv2

    if pred.dtype not in (np.uint8, np.float32, np.float64):
        pred = pred.astype(np.float64)
    return cv2.resize(pred, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_LINEAR)


def minmax_normalize(pred: np.ndarray) -> np.ndarray:
    """Per-frame min-max stretch to [0, 1]; a constant map is left as it is (the toolbox's rule)."""
    lo, hi = pred.min(), pred.max()
    if hi != lo:
        return (pred - lo) / (hi - lo)
    return pred


def prepare_frame(pred, gt, normalize: str | None = "minmax", name: str = "pred") -> tuple[np.ndarray, np.ndarray]:
    """Toolbox preparation of one frame.

    ``pred``: uint8 (0..255) or float in [0, 1]; resized to ``gt`` when sizes differ. ``gt``: 8-bit mask
    (binarised ``> 128``, which also accepts the grey-level masks of some datasets; an 8-bit mask whose
    largest value is 1 is read as 0/1), or bool/{0,1}.
    Returns float64 ``pred`` in [0, 1] and bool ``gt``.
    """
    from dtc.metrics._checks import as_array, check_prob_map

    gt_arr = as_array(gt, "gt")
    if gt_arr.ndim != 2 or gt_arr.size == 0:
        raise ValueError(f"gt must be a non-empty (H, W) mask, got shape {tuple(gt_arr.shape)}")
    if gt_arr.dtype == bool:
        g = gt_arr
    elif gt_arr.dtype == np.uint8 and gt_arr.max() == 1:
        # A 0/1 mask stored as 8-bit PNG: "> 128" would make it empty and score a perfect prediction
        # as Dice 0 (no 0/255 or grey-level mask has 1 as its largest value).
        g = gt_arr > 0
    elif gt_arr.dtype == np.uint8 or gt_arr.max() > 1:
        g = gt_arr > 128
    else:
        g = gt_arr > 0.5
    p_arr = as_array(pred, name)
    if p_arr.ndim != 2 or p_arr.size == 0:
        raise ValueError(f"{name} must be a non-empty (H, W) map, got shape {tuple(p_arr.shape)}")
    if p_arr.dtype == np.uint8:
        p = resize_to(p_arr, g.shape).astype(np.float64) / 255.0
    else:
        # bilinear interpolation of values in [0, 1] stays in [0, 1]
        p = resize_to(check_prob_map(p_arr, name), g.shape).astype(np.float64)
    if normalize == "minmax":
        p = minmax_normalize(p)
    elif normalize is not None:
        raise ValueError(f"normalize must be 'minmax' or None, got {normalize!r}")
    return p, g


def mean_records(records: list[dict]) -> dict:
    """Average frame records (scalars and curves) over frames."""
    if not records:
        raise ValueError("cannot average an empty list of frame records")
    keys = ref.SUNSEG_SCALARS + ref.SUNSEG_CURVES
    return {k: np.mean(np.stack([np.asarray(r[k], dtype=np.float64) for r in records]), axis=0) for k in keys}


def summarize(averaged: dict) -> "OrderedDict[str, float]":
    """Toolbox columns from averaged records (curves -> mean and max)."""
    out: OrderedDict[str, float] = OrderedDict()
    for k in ("Smeasure", "wFmeasure", "MAE", "adpEm"):
        out[k] = float(averaged[k])
    out["meanEm"], out["maxEm"] = float(averaged["Em"].mean()), float(averaged["Em"].max())
    out["adpFm"] = float(averaged["adpFm"])
    out["meanFm"], out["maxFm"] = float(averaged["Fm"].mean()), float(averaged["Fm"].max())
    for curve in ("Sen", "Spe", "Dice", "IoU"):
        mean_col, max_col = _CURVE_COLUMNS[curve]
        out[mean_col], out[max_col] = float(averaged[curve].mean()), float(averaged[curve].max())
    return out


def check_case_decimals(case_decimals) -> None:
    if case_decimals is not None and (isinstance(case_decimals, bool) or not isinstance(case_decimals, int)
                                      or case_decimals < 0):
        raise ValueError(f"case_decimals must be None or a non-negative int, got {case_decimals!r}")


def per_case_protocol(cases: "dict[str, list[dict]]", drop_ends: bool = True,
                      case_decimals: int | None = None) -> tuple[dict, dict]:
    """Average per case (frames in order, optionally without first/last), then over cases.

    ``case_decimals``: round each case's scalar scores before the cross-case mean (the a718e53
    toolbox; see the module docstring). Returns ``(per_case_summaries, overall_summary)``; the
    per-case summaries are the rounded values when rounding is on, since those are what was averaged.
    """
    if not cases:
        raise ValueError("no videos to evaluate")
    check_case_decimals(case_decimals)
    per_case_avg = {}
    for case, frames in cases.items():
        kept = frames[1:-1] if drop_ends else frames
        if not kept:
            raise ValueError(f"video {case!r} has {len(frames)} frame(s); the SUN-SEG protocol drops the first "
                             "and last frame, so it needs at least 3 (pass drop_ends=False to keep them)")
        averaged = mean_records(kept)
        if case_decimals is not None:
            for key in ref.SUNSEG_SCALARS:
                averaged[key] = np.round(averaged[key], case_decimals)
        per_case_avg[case] = averaged
    overall = mean_records(list(per_case_avg.values()))
    if case_decimals is not None:
        # Rounded case scores often average to an exact tie (0.3405); the toolbox stores each scalar as
        # 256 copies and averages those, and that sum's last-bit error decides how the tie prints.
        for key in ref.SUNSEG_SCALARS:
            overall[key] = np.full(256, overall[key]).mean()
    return {c: summarize(a) for c, a in per_case_avg.items()}, summarize(overall)


def round_like_toolbox(summary: dict) -> "OrderedDict[str, str]":
    """The printed table cells: numpy's round(3) then '{:.3f}'."""
    return OrderedDict((k, "{:.3f}".format(np.round(v, 3))) for k, v in summary.items())


_NUM = re.compile(r"(\d+)")


def natural_key(name: str):
    """Sort key that orders embedded numbers numerically ('image2' < 'image10')."""
    return [int(t) if t.isdigit() else t for t in _NUM.split(name)]


def discover_pairs(pred_root: str | os.PathLike, gt_root: str | os.PathLike,
                   exts: tuple[str, ...] = (".png",)) -> "OrderedDict[str, list[tuple[str, Path, Path]]]":
    """Match ``<gt_root>/<case>/<frame>.png`` masks with ``<pred_root>/<case>/<frame>.png`` predictions.

    Frames of each case are sorted by natural order of the file name. A mask without a prediction is an
    error naming the missing file; extra predictions are ignored.
    """
    pred_root, gt_root = Path(pred_root), Path(gt_root)
    if not gt_root.is_dir():
        raise FileNotFoundError(f"mask folder {gt_root} does not exist")
    if not pred_root.is_dir():
        raise FileNotFoundError(f"prediction folder {pred_root} does not exist")
    cases: OrderedDict[str, list[tuple[str, Path, Path]]] = OrderedDict()
    for case_dir in sorted((d for d in gt_root.iterdir() if d.is_dir()), key=lambda d: natural_key(d.name)):
        frames = sorted((f for f in case_dir.iterdir() if f.suffix.lower() in exts), key=lambda f: natural_key(f.name))
        if not frames:
            continue
        pairs = []
        for f in frames:
            pred_file = pred_root / case_dir.name / f.name
            if not pred_file.is_file():
                raise FileNotFoundError(f"prediction {pred_file} is missing for mask {f}")
            pairs.append((f.stem, pred_file, f))
        cases[case_dir.name] = pairs
    if not cases:
        raise FileNotFoundError(f"no <case>/<frame>.png masks found under {gt_root}")
    return cases


def read_gray(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return img


def evaluate_folders(pred_root, gt_root, drop_ends: bool = True, backend: str = "auto",
                     progress: bool = True, case_decimals: int | None = None) -> tuple[dict, dict]:
    """Run the SUN-SEG toolbox protocol on a prediction tree; returns (per-case, overall) summaries.

    ``case_decimals=3`` reproduces the a718e53 toolbox's per-case rounding (see the module docstring).
    """
    from dtc.progress import progress_bar

    from dtc.metrics.functional import sunseg_frame

    cases = discover_pairs(pred_root, gt_root)
    records: dict[str, list[dict]] = {}
    total = sum(len(v) for v in cases.values())
    with progress_bar(total=total, desc="sunseg", enabled=progress, unit="frame") as bar:
        for case, pairs in cases.items():
            recs = []
            for i, (_, pred_file, gt_file) in enumerate(pairs):
                bar.update(1)
                if drop_ends and (i == 0 or i == len(pairs) - 1):
                    recs.append(None)  # placeholder: dropped by the protocol, not computed
                    continue
                p, g = prepare_frame(read_gray(pred_file), read_gray(gt_file), normalize="minmax", name=str(pred_file))
                recs.append(sunseg_frame(p, g, backend=backend))
            records[case] = recs
    return per_case_protocol(records, drop_ends=drop_ends, case_decimals=case_decimals)
