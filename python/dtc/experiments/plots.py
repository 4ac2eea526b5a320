"""Figures of experiments and notebooks: the ablation bars, flicker over time, the training signals.

Each function returns a matplotlib Figure (notebooks display it; :func:`figure_png` turns it into PNG
bytes for files) and takes ``settings``, a line written under the figure naming what produced it (the
notebooks pass their preset and, in tiny mode, say so). Nothing here trains or evaluates.
"""
from __future__ import annotations

import math
from io import BytesIO
from typing import Optional

import numpy as np

__all__ = ["figure_png", "ablation_figure", "ablation_axis_limits", "flicker_figure", "flicker_series", "flicker_comparison_figure",
           "signal_maps_figure", "video_strip_figure"]

_NAMES = {"Dice_sunseg": "Dice ↑", "S_alpha": "Sα ↑", "E_mean": "E^mn_φ ↑", "F_w": "F^w_β ↑", "Sen": "Sen ↑",
          "Dice": "Dice@0.5 ↑", "TC": "TC ↑", "area_flicker": "area flicker ↓", "dice_flicker": "Dice flicker ↓",
          "FPS": "FPS"}


def _plt():
    # The backend is left alone: notebooks use their inline one, headless sessions fall back to Agg.
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    plt = _plt()
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


# Scores bounded by [0, 1] (everything not listed in _FROM_ZERO): their axis spans at least this much, so
# one seed's worth of difference between arms never fills the plot.
MIN_SCORE_SPAN = 0.05
# How many of the largest seed standard deviations the axis spans at least: differences within the noise
# then look as small as they are.
NOISE_SPANS = 6.0
# Magnitudes (lower is better, or rates): their axis starts at zero, where the eye reads them from.
_FROM_ZERO = ("flicker", "HD95", "FPS", "error", "MAE")


def ablation_axis_limits(metric: str, means, stds, seeds=()) -> tuple[float, float]:
    """The y-range of one ablation panel: holds every mean ± std and every seed, spans at least
    ``NOISE_SPANS`` times the largest std and, for scores in [0, 1], at least ``MIN_SCORE_SPAN`` (clipped to
    [0, 1] by shifting, not shrinking); magnitudes (flicker, HD95, FPS, errors) start at zero."""
    means, stds = np.asarray(means, float), np.nan_to_num(np.asarray(stds, float))
    values = np.concatenate([means - stds, means + stds, np.asarray(list(seeds), float)])
    values = values[np.isfinite(values)]
    if not len(values):
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    noise = NOISE_SPANS * float(stds.max()) if len(stds) else 0.0
    if any(tag in metric for tag in _FROM_ZERO):
        top = max(hi, noise, 1e-12)
        return 0.0, top * 1.08
    bounded = lo >= 0.0 and hi <= 1.0
    span = max(hi - lo, noise, MIN_SCORE_SPAN if bounded else 0.0) * 1.15 or max(abs(hi) * 0.1, 1e-6)
    centre = (lo + hi) / 2
    bottom, top = centre - span / 2, centre + span / 2
    if bounded:  # keep the span, move it inside [0, 1] (a little headroom above 1 for the markers)
        if bottom < 0.0:
            bottom, top = 0.0, min(span, 1.02)
        elif top > 1.02:
            bottom, top = max(1.02 - span, 0.0), 1.02
    return bottom, top


def _state_settings(fig, settings: Optional[str]) -> None:
    """Writes the run settings under the figure, so a saved or pasted figure says what produced it."""
    if settings:
        fig.text(0.005, 0.005, settings, fontsize=7, color="0.35", ha="left", va="bottom", wrap=True)
        fig.tight_layout(rect=(0, 0.05, 1, 1))


def ablation_figure(table: list[dict], *, metrics=("Dice_sunseg", "S_alpha", "TC", "area_flicker"),
                    title: Optional[str] = None, runs: Optional[list[dict]] = None, settings: Optional[str] = None):
    """Per arm, the mean over seeds as a marker with ``± std`` error bars (rows of
    :func:`dtc.experiments.results.aggregate` or :func:`~dtc.experiments.results.load_results`); with
    ``runs`` (the per-run rows) every seed is drawn as a dot beside it. Markers, not bars, because the
    axes do not start at zero: each spans at least the noise (:func:`ablation_axis_limits`), so
    differences within it are not blown up. ``settings`` is written under the figure."""
    if not table:
        raise ValueError("table is empty: no evaluated run to plot")
    missing = [m for m in metrics if f"{m}_mean" not in table[0]]
    if missing:
        raise ValueError(f"metrics {missing} are not in the table (columns like 'Dice_sunseg_mean')")
    plt = _plt()
    labels = [r["label"] for r in table]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.8), squeeze=False)
    colours = ["0.5" if r["arm"] == "teacher" else f"C{i}" for i, r in enumerate(table)]
    for ax, metric in zip(axes[0], metrics):
        means = np.array([r[f"{metric}_mean"] for r in table], float)
        stds = np.nan_to_num(np.array([r.get(f"{metric}_std", math.nan) for r in table], float))
        seeds = []
        for i, r in enumerate(table):
            ax.errorbar([i], [means[i]], yerr=[stds[i]], fmt="o", color=colours[i], ms=6, capsize=4, lw=1.5)
            if runs:
                values = [float(run[metric]) for run in runs if run["arm"] == r["arm"] and run.get(metric) is not None]
                seeds += values
                ax.plot([i + 0.18] * len(values), values, ".", color="k", ms=4, alpha=0.6)
        ax.set_ylim(*ablation_axis_limits(metric, means, stds, seeds))
        ax.set_xlim(-0.5, len(table) - 0.5)
        ax.set_xticks(range(len(table)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(_NAMES.get(metric, metric))
        ax.grid(axis="y", alpha=0.3)
    counts = sorted({int(r["seeds"]) for r in table if r.get("seeds") is not None})
    over = f"mean ± std over {'/'.join(map(str, counts))} seed(s)" if counts else "mean ± std over seeds"
    fig.suptitle(f"{title} — {over}" if title else over, fontsize=10)
    fig.tight_layout()
    _state_settings(fig, settings)
    return fig


def flicker_series(video: dict) -> dict:
    """Per-frame series of one predicted video (a value of ``predict_videos``): ``frame``, predicted and
    ground-truth ``area`` (fraction of the frame at 0.5), ``dice`` at 0.5 and ``change``
    ``mean|P_t - P_{t-1}|`` (NaN at the first frame)."""
    from dtc.engine.inference import video_scores

    prob, mask = video["prob"].numpy(), video["mask"].numpy()
    change = np.abs(np.diff(prob, axis=0)).reshape(len(prob) - 1, -1).mean(1) if len(prob) > 1 else np.zeros(0)
    return {"frame": np.asarray(video["frame"]), "area": (prob > 0.5).reshape(len(prob), -1).mean(1),
            "gt_area": (mask > 0.5).reshape(len(mask), -1).mean(1),
            "dice": np.asarray(video_scores(video)["dice_per_frame"], float),
            "change": np.concatenate([[math.nan], change])}


def flicker_figure(predictions: dict, video_id: Optional[str] = None, *, title: Optional[str] = None,
                   settings: Optional[str] = None):
    """Flicker over time of several models on one video: predicted area against the ground truth, Dice
    per frame and the frame-to-frame change ``mean|P_t - P_{t-1}|``.

    ``predictions`` maps a model name to ``predict_videos`` output; ``video_id`` defaults to the first
    video (sorted) they share."""
    if not predictions:
        raise ValueError("predictions is empty: pass {model name: predict_videos(...)}")
    shared = sorted(set.intersection(*(set(v) for v in predictions.values())))
    if not shared:
        raise ValueError("the models' predictions share no video id")
    if video_id is None:
        video_id = shared[0]
    if video_id not in shared:
        raise ValueError(f"video_id {video_id!r} is not predicted by every model; shared ids: {shared}")
    plt = _plt()
    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    for i, (name, videos) in enumerate(predictions.items()):
        s = flicker_series(videos[video_id])
        if i == 0:
            axes[0].plot(s["frame"], s["gt_area"], color="k", lw=2, alpha=0.5, label="ground truth")
        style = dict(color=f"C{i}", label=f"{name} (area std {np.std(s['area']):.4f})")
        axes[0].plot(s["frame"], s["area"], **style)
        axes[1].plot(s["frame"], s["dice"], color=f"C{i}", label=f"{name} (Dice std {np.std(s['dice']):.3f})")
        axes[2].plot(s["frame"], s["change"], color=f"C{i}", label=f"{name} (mean {np.nanmean(s['change']):.4f})")
    axes[0].set(ylabel="area (fraction)", title=title or f"flicker over time, video {video_id}")
    axes[1].set(ylabel="Dice@0.5")
    axes[2].set(ylabel="mean|P_t − P_t−1|", xlabel="frame")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _state_settings(fig, settings)
    return fig


def signal_maps_figure(maps: dict, pair: int = 0, *, settings: Optional[str] = None):
    """One pair ``(t-1, t)`` of :func:`dtc.experiments.inspect.training_signal_maps`: the frames, flow,
    prediction, pseudo-label, warped target, confidence M and the prototypes' masks."""
    from dtc.flow import flow_to_rgb

    T = maps["prob"].shape[0]
    if not 0 <= pair < T - 1:
        raise ValueError(f"pair must be in [0, {T - 2}], got {pair}")
    t = pair + 1
    plt = _plt()
    panels = [
        (maps["image"][t - 1], f"frame t-1={t - 1}", "gray", None),
        (maps["image"][t], f"frame t={t} (GT contour)", "gray", maps["mask"][t]),
        (flow_to_rgb(maps["flow"][pair]), "flow (t-1 → t), colour wheel", None, None),
        (maps["prob"][t], "prediction P_t", "magma", None),
        (maps["pseudo"][t], "flip pseudo-label Ŷ_t", "magma", None),
        (maps["warped_target"][pair], "warped target W(P_t-1)", "magma", None),
        (maps["confidence"][pair], "confidence M", "viridis", None),
        (maps["local_mask"][pair], "local prototype mask", "gray", None),
    ]
    if "global_bg_cur" in maps:
        panels.append((maps["global_bg_cur"][pair], "global (background) mask, bottleneck", "gray", None))
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows))
    for ax, (img, name, cmap, contour) in zip(axes.flat, panels):
        kwargs = {"cmap": cmap} if cmap else {}
        if cmap in ("magma", "viridis") or name.endswith("mask"):
            kwargs.update(vmin=0, vmax=1)
        im = ax.imshow(img, **kwargs)
        if contour is not None:
            ax.contour(contour, levels=[0.5], colors="yellow", linewidths=1)
        if cmap in ("magma", "viridis"):
            fig.colorbar(im, ax=ax, fraction=0.035)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"training signals, pair ({t - 1}, {t}); L_con = {maps['loss_con']:.4f}")
    fig.tight_layout()
    _state_settings(fig, settings)
    return fig


def flicker_comparison_figure(predictions: dict, *, settings: Optional[str] = None):
    """Per test video, each model's area flicker and TC side by side (``predictions``: model name ->
    ``predict_videos`` output)."""
    from dtc.engine.inference import video_scores

    if not predictions:
        raise ValueError("predictions is empty: pass {model name: predict_videos(...)}")
    videos = sorted(set.intersection(*(set(v) for v in predictions.values())))
    if not videos:
        raise ValueError("the models' predictions share no video id")
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    width = 0.8 / len(predictions)
    for i, (name, preds) in enumerate(predictions.items()):
        scores = [video_scores(preds[v]) for v in videos]
        x = np.arange(len(videos)) + (i - (len(predictions) - 1) / 2) * width
        axes[0].bar(x, [s["area_flicker"] for s in scores], width, color=f"C{i}", label=name)
        axes[1].bar(x, [s["tc"] for s in scores], width, color=f"C{i}", label=name)
    axes[0].set(title="area flicker per video ↓", ylabel="std of area over time")
    axes[1].set(title="TC per video ↑", ylabel="1 − mean|P_t − P_t−1|")
    tc = [video_scores(p[v])["tc"] for p in predictions.values() for v in videos]
    lo = min(tc)
    axes[1].set_ylim(max(0.0, lo - 0.2 * (1 - lo) - 1e-4), 1.0)
    for ax in axes:
        ax.set_xticks(range(len(videos)), videos, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _state_settings(fig, settings)
    return fig


def _grey(images) -> np.ndarray:
    a = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    return a.mean(1) if a.ndim == 4 else a


def video_strip_figure(video: dict, frames=None, *, predictions: Optional[dict] = None, title: Optional[str] = None,
                       settings: Optional[str] = None):
    """Frames of one video with the ground-truth contour (yellow) and each prediction's contour.

    ``video`` has ``image`` ``(F, H, W)`` or ``(F, 3, H, W)`` and ``mask`` ``(F, H, W)`` or ``(F, 1, H, W)``
    (a dataset window or a ``predict_videos`` value, whose own ``prob`` is drawn unless ``predictions``
    (name -> ``(F, H, W)`` probabilities) is given). ``frames``: indices to show (default up to 4, spread)."""
    images, masks = _grey(video["image"]), _grey(video["mask"])
    if images.ndim != 3 or masks.shape != images.shape:
        raise ValueError(f"video needs image (F, H, W) and a mask of the same shape, got {images.shape} and {masks.shape}")
    n = len(images)
    if frames is None:
        frames = sorted(set(np.linspace(0, n - 1, min(4, n)).round().astype(int).tolist()))
    if not frames or any(not 0 <= f < n for f in frames):
        raise ValueError(f"frames must be indices in [0, {n - 1}], got {frames}")
    if predictions is None and "prob" in video:
        predictions = {"prediction": video["prob"]}
    predictions = {k: _grey(v) for k, v in (predictions or {}).items()}
    numbers = video.get("frame", list(range(n)))
    plt = _plt()
    fig, axes = plt.subplots(1, len(frames), figsize=(3.2 * len(frames), 2.6), squeeze=False)
    for ax, f in zip(axes[0], frames):
        ax.imshow(images[f], cmap="gray", vmin=0, vmax=1)
        if masks[f].any():
            ax.contour(masks[f], levels=[0.5], colors="yellow", linewidths=1.2)
        for i, (name, prob) in enumerate(predictions.items()):
            if (prob[f] > 0.5).any():
                ax.contour(prob[f], levels=[0.5], colors=[f"C{i}"], linewidths=1.2)
        ax.set_title(f"frame {int(numbers[f])}", fontsize=9)
        ax.axis("off")
    legend = ["yellow: ground truth"] + [f"C{i}: {name}" for i, name in enumerate(predictions)]
    fig.suptitle((title + " — " if title else "") + ", ".join(legend), fontsize=9)
    fig.tight_layout()
    _state_settings(fig, settings)
    return fig
