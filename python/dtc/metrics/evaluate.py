"""Whole-video evaluation: every frame metric, per-video and overall tables, plots, written atomically.

:func:`evaluate_predictions` is the entry point shared by ``dtc evaluate`` (PNG folders) and the
trainer (checkpoint evaluation): it takes any iterable of frames.
"""
from __future__ import annotations

import csv
import io
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from dtc.io import atomic_write_bytes, atomic_write_figure

from dtc.metrics import sunseg as sunseg_mod
from dtc.metrics.objects import BinaryMetric, SUNSegMetric, TemporalMetric

# Display name -> (source, key). Sources: "sun" (SUN-SEG columns), "bin" (at the threshold; written tables rename
# "@0.5" to the threshold used, see EvaluationResult.labelled), "tmp" (temporal).
TABLE_COLUMNS = OrderedDict([
    ("Sα", ("sun", "Smeasure")),
    ("E^mn_φ", ("sun", "meanEm")),
    ("F^w_β", ("sun", "wFmeasure")),
    ("Dice", ("sun", "meanDic")),
    ("Sen", ("sun", "meanSen")),
    ("MAE", ("sun", "MAE")),
    ("maxDice", ("sun", "maxDic")),
    ("Dice@0.5", ("bin", "Dice")),
    ("IoU@0.5", ("bin", "IoU")),
    ("Sen@0.5", ("bin", "sensitivity")),
    ("Prec@0.5", ("bin", "precision")),
    ("HD95", ("bin", "HD95")),
    ("ASSD", ("bin", "ASSD")),
    ("TC", ("tmp", "TC")),
    ("TC_flow", ("tmp", "TC_flow")),
    ("warp_IoU", ("tmp", "warp_IoU")),
    ("warp_error", ("tmp", "warp_error")),
    ("area_flicker", ("tmp", "area_flicker")),
    ("dice_flicker", ("tmp", "dice_flicker")),
    ("worst_Dice", ("tmp", "worst_Dice")),
    ("Dice_event", ("tmp", "Dice_event")),
    ("Dice_calm", ("tmp", "Dice_calm")),
])

FRAME_COLUMNS = ("video", "frame", "Smeasure", "meanEm", "wFmeasure", "meanFm", "MAE", "meanDice", "meanSen",
                 "Dice@0.5", "IoU@0.5", "Sen@0.5", "Prec@0.5", "Spec@0.5", "HD95", "ASSD", "area", "TC", "TC_flow",
                 "warp_IoU", "warp_error", "event")


@dataclass
class EvaluationResult:
    """Per-frame rows, per-video rows and the overall row (dicts keyed by column name)."""

    per_frame: list = field(default_factory=list)
    per_video: "OrderedDict[str, OrderedDict]" = field(default_factory=OrderedDict)
    overall: "OrderedDict[str, float]" = field(default_factory=OrderedDict)
    sunseg_overall: "OrderedDict[str, float]" = field(default_factory=OrderedDict)
    threshold: float = 0.5

    def labelled(self, rows: list[dict]) -> list[dict]:
        """``rows`` with the binary metrics' columns named after the threshold actually used (``Dice@0.3``).

        In memory the columns keep their fixed ``@0.5`` keys, which plots and experiment tables read; what a
        person reads (the written tables, the CLI's summary) must not claim a threshold that was not used."""
        if self.threshold == 0.5:
            return rows
        suffix = f"@{self.threshold:g}"
        return [OrderedDict((k.replace("@0.5", suffix), v) for k, v in r.items()) for r in rows]


def evaluate_predictions(pred_iter: Iterable, *, preset: str = "sunseg", normalize: str | None = "minmax",
                         drop_ends: bool | None = None, case_decimals: int | None = None, threshold: float = 0.5,
                         spacing=None, backend: str = "auto", warp=None, out_dir: str | os.PathLike | None = None,
                         plots: bool = True, progress: bool = True, total: int | None = None) -> EvaluationResult:
    """Evaluate a stream of frames.

    ``pred_iter`` yields ``(video_id, frame_index, prob, gt)``, ``(..., flow)`` or ``(..., flow, event)``:
    ``prob`` an (H, W) float array in [0, 1], ``gt`` an (H, W) binary mask of the same size, ``flow``
    None or the (2, H, W) flow from the previous frame of the video to this one (pixels, dx then dy;
    enables TC_flow, warping IoU and warping error), ``event`` None or a bool: a transient event touched
    the frame (enables Dice on event frames; unflagged frames count as calm). Frames of one video must
    come in increasing ``frame_index`` order; videos may interleave. ``warp`` is the warp of the
    flow-compensated metrics (default grid_sample; :func:`dtc.metrics.temporal.compiled_warp` is dtc's
    op).

    ``preset``/``normalize``/``drop_ends``/``case_decimals`` configure the SUN-SEG suite (see
    :class:`dtc.metrics.objects.SUNSegMetric`); threshold metrics and temporal metrics use every frame.
    When ``out_dir`` is given, writes per_frame.csv, per_video.{csv,md}, overall.{csv,md} and plots
    (metrics_over_time.png, distribution.png), each file atomically.
    """
    from dtc.progress import progress_bar

    sun = SUNSegMetric(preset=preset, normalize=normalize, drop_ends=drop_ends, backend=backend,
                       case_decimals=case_decimals)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        # A threshold of 2 (or nan) binarises every prediction to empty without a word.
        raise ValueError(f"threshold (dtc evaluate --threshold) must be a probability strictly between 0 and 1, "
                         f"got {threshold!r}")
    binm = BinaryMetric(preset=preset, threshold=threshold, spacing=spacing)
    tmp = TemporalMetric(preset=preset, threshold=threshold, warp=warp)
    result = EvaluationResult(threshold=float(threshold))
    n = 0
    for item in progress_bar(pred_iter, total=total, desc="evaluate", unit="frame", enabled=progress):
        if not isinstance(item, (tuple, list)) or len(item) not in (4, 5, 6):
            raise ValueError("pred_iter must yield (video_id, frame_index, prob, gt), (..., flow) or (..., flow, "
                             f"event) tuples, got {type(item).__name__} of length "
                             f"{len(item) if hasattr(item, '__len__') else '?'}")
        video, frame, prob, gt = item[:4]
        flow = item[4] if len(item) >= 5 else None
        event = item[5] if len(item) == 6 else None
        s = sun(prob, gt, video_id=video, frame_index=frame)[0]
        b = binm(prob, gt, video_id=video, frame_index=frame)[0]
        t = tmp(prob, gt, video_id=video, frame_index=frame, flow=flow, event=event)[0]
        result.per_frame.append(OrderedDict([
            ("video", video), ("frame", frame), ("Smeasure", s["Smeasure"]), ("meanEm", float(s["Em"].mean())),
            ("wFmeasure", s["wFmeasure"]), ("meanFm", float(s["Fm"].mean())), ("MAE", s["MAE"]),
            ("meanDice", float(s["Dice"].mean())), ("meanSen", float(s["Sen"].mean())),
            ("Dice@0.5", b["Dice"]), ("IoU@0.5", b["IoU"]), ("Sen@0.5", b["sensitivity"]),
            ("Prec@0.5", b["precision"]), ("Spec@0.5", b["specificity"]), ("HD95", b["HD95"]), ("ASSD", b["ASSD"]),
            ("area", t["area"]), ("TC", t.get("TC", math.nan)), ("TC_flow", t.get("TC_flow", math.nan)),
            ("warp_IoU", t.get("warp_IoU", math.nan)), ("warp_error", t.get("warp_error", math.nan)),
            ("event", int(t["event"]) if "event" in t else ""),
        ]))
        n += 1
    if n == 0:
        raise ValueError("pred_iter yielded no frames; nothing to evaluate")
    sun_agg, bin_agg, tmp_agg = sun.aggregate(), binm.aggregate(), tmp.aggregate()
    sources = {"sun": sun_agg, "bin": bin_agg, "tmp": tmp_agg}
    for video in bin_agg["per_video"]:
        row = OrderedDict([("video", video), ("frames", sum(1 for r in result.per_frame if r["video"] == video))])
        for name, (src, key) in TABLE_COLUMNS.items():
            row[name] = sources[src]["per_video"].get(video, {}).get(key, math.nan)
        result.per_video[video] = row
    result.overall = OrderedDict([("videos", len(result.per_video)), ("frames", n)])
    for name, (src, key) in TABLE_COLUMNS.items():
        result.overall[name] = sources[src]["overall"].get(key, math.nan)
    result.sunseg_overall = sun_agg["overall"]
    if out_dir is not None:
        write_outputs(result, out_dir, plots=plots)
    return result


# ----------------------------------------------------------------------------------------------- writing
def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "nan" if not np.isfinite(v) else f"{v:.6g}"
    return str(v)


def rows_to_csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(rows[0].keys()))
    for r in rows:
        writer.writerow([_fmt(v) for v in r.values()])
    return buf.getvalue().encode()


def rows_to_markdown(rows: list[dict], digits: int = 3) -> bytes:
    keys = list(rows[0].keys())
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    for r in rows:
        cells = [("—" if not np.isfinite(v) else f"{v:.{digits}f}") if isinstance(v, (float, np.floating)) else str(v)
                 for v in r.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return ("\n".join(lines) + "\n").encode()


def write_outputs(result: EvaluationResult, out_dir, plots: bool = True) -> list[Path]:
    out = Path(out_dir)
    written = []
    per_video, overall = result.labelled(list(result.per_video.values())), result.labelled([result.overall])
    for name, data in (
        ("per_frame.csv", rows_to_csv(result.labelled(result.per_frame))),
        ("per_video.csv", rows_to_csv(per_video)),
        ("per_video.md", rows_to_markdown(per_video)),
        ("overall.csv", rows_to_csv(overall)),
        ("overall.md", rows_to_markdown(overall)),
        ("sunseg_overall.csv", rows_to_csv([result.sunseg_overall])),
    ):
        atomic_write_bytes(out / name, data)
        written.append(out / name)
    if plots:
        written += _write_plots(result, out)
    return written


def _write_plots(result: EvaluationResult, out: Path) -> list[Path]:
    from matplotlib.figure import Figure

    by_video: dict = OrderedDict()
    for r in result.per_frame:
        by_video.setdefault(r["video"], []).append(r)
    series = ("Smeasure", "Dice@0.5", "TC")
    shown = {"Dice@0.5": f"Dice@{result.threshold:g}"}
    fig = Figure(figsize=(9, 2.6 * len(series)))
    axes = fig.subplots(len(series), 1, sharex=False, squeeze=False)
    for ax, key in zip(axes[:, 0], series):
        for video, rows in by_video.items():
            rows = sorted(rows, key=lambda r: r["frame"])
            ax.plot([r["frame"] for r in rows], [r[key] for r in rows], marker=".", lw=1, label=str(video))
        ax.set_ylabel(shown.get(key, key))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("frame index")
    if len(by_video) <= 12:
        axes[0, 0].legend(fontsize=7, ncol=4, loc="lower right")
    fig.suptitle("metrics over time, per video")
    fig.tight_layout()
    paths = [out / "metrics_over_time.png"]
    atomic_write_figure(paths[0], fig)

    dist_cols = [c for c in ("Sα", "E^mn_φ", "F^w_β", "Dice", "Sen", "Dice@0.5", "TC")]
    data = [[row[c] for row in result.per_video.values() if np.isfinite(row[c])] for c in dist_cols]
    fig = Figure(figsize=(9, 4))
    ax = fig.subplots()
    ax.boxplot([d if d else [np.nan] for d in data], showfliers=False)
    for i, d in enumerate(data, start=1):
        jitter = np.random.default_rng(i).uniform(-0.12, 0.12, len(d))
        ax.scatter(np.full(len(d), i) + jitter, d, s=12, alpha=0.7)
    ax.set_xticks(range(1, len(dist_cols) + 1), [shown.get(c, c) for c in dist_cols])
    ax.set_ylabel("per-video value")
    ax.set_title(f"distribution across {len(result.per_video)} videos")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    paths.append(out / "distribution.png")
    atomic_write_figure(paths[1], fig)
    return paths


def iter_prediction_folders(pred_root, gt_root) -> tuple[int, Iterable]:
    """(number of frames, iterator of (video, frame_index, prob, gt)) for SUN-SEG style PNG trees.

    Predictions are 8-bit probability PNGs (0..255 -> 0..1), resized bilinearly to their mask when the
    sizes differ (as the SUN-SEG toolbox does); masks are binarised at > 128, or > 0 when stored as 0/1.
    """
    cases = sunseg_mod.discover_pairs(pred_root, gt_root)
    total = sum(len(v) for v in cases.values())

    def gen():
        for case, pairs in cases.items():
            for index, (_, pred_file, gt_file) in enumerate(pairs):
                gt = sunseg_mod.read_gray(gt_file)
                prob, mask = sunseg_mod.prepare_frame(sunseg_mod.read_gray(pred_file), gt, normalize=None,
                                                      name=str(pred_file))
                yield case, index, prob, mask

    return total, gen()
