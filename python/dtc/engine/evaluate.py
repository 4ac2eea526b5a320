"""Evaluating a trained network on a dataset split: the metric suite, speed and pictures."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dtc.io import atomic_write_text

__all__ = ["evaluate_model", "evaluate_checkpoint", "measure_fps"]


@torch.no_grad()
def measure_fps(model, size: tuple[int, int], device, *, repeat: int = 20) -> float:
    """Frames per second at batch 1 (what a bedside stream sees): 1 / the median of ``repeat`` timed
    passes after 3 warm-up passes; the median, so passes preempted on a shared machine do not dominate."""
    device = torch.device(device)
    x = torch.rand(1, 3, *size, device=device)
    was_training = model.training
    model.eval()
    times = []
    try:
        for _ in range(3):
            model(x)
        for _ in range(repeat):
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return 1.0 / float(np.median(times))


def evaluate_model(model, dataset, out_dir, *, device, batch_size: int = 8, worst: int = 16,
                   progress: bool = True, amp_dtype: Optional[torch.dtype] = None) -> dict:
    """Predicts every frame of ``dataset`` (single frames, ``T=1``) and, unless ``out_dir`` is None,
    writes there the metric tables and plots of :func:`dtc.metrics.evaluate_predictions`,
    ``summary.json`` (overall metrics, FPS) and ``worst_frames.mp4`` (the ``worst`` frames by Dice,
    prediction green, truth yellow). Returns ``{"summary", "videos", "suite"}``; the summary holds the
    suite's overall columns plus ``Dice_per_video``/``TC_per_video`` (Dice at 0.5 and TC per video,
    then averaged) and ``FPS``.

    The dataset's per-frame ``event`` flags (simulated transient events) feed Dice on event and calm
    frames. When the dataset knows the exact flow between two frames (``flow_between``, the
    simulator), the flow-compensated metrics (TC_flow, warping IoU on binary masks, warping error) are
    computed with it through dtc's warp op; otherwise they are NaN."""
    from dtc.engine.inference import predict_videos, video_scores
    from dtc.metrics import evaluate_predictions
    from dtc.metrics.temporal import compiled_warp

    out_dir = Path(out_dir) if out_dir is not None else None
    videos = predict_videos(model, dataset, device=device, batch_size=batch_size, amp_dtype=amp_dtype,
                            progress=progress)
    if not videos:
        raise ValueError("the dataset split has no frames to evaluate")
    suite = evaluate_predictions(_scored_frames(videos, dataset), out_dir=out_dir, progress=progress,
                                 warp=compiled_warp)
    scores = {vid: video_scores(v) for vid, v in videos.items()}
    size = tuple(next(iter(videos.values()))["prob"].shape[-2:])
    summary = {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in suite.overall.items()}
    summary.update({
        "Dice_per_video": float(np.nanmean([s["dice"] for s in scores.values()])),
        "TC_per_video": float(np.nanmean([s["tc"] for s in scores.values()])),
        "FPS": measure_fps(model, size, torch.device(device)),
        "device": str(device), "size": list(size),
    })
    if out_dir is not None:
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=float))
        if worst > 0:
            write_worst_frames(videos, scores, out_dir / "worst_frames.mp4", worst, dataset=dataset)
    return {"summary": summary, "videos": videos, "suite": suite}


def _scored_frames(videos: dict, dataset):
    """``(video, frame, prob, gt, flow, event)`` for every labelled frame, ``flow`` from the previous
    labelled frame of the video when the dataset can give it exactly."""
    flow_between = getattr(dataset, "flow_between", None)
    for vid, v in videos.items():
        events = v.get("event")
        previous = None
        for k in range(len(v["frame"])):
            if not v["valid"][k]:
                continue
            frame = v["frame"][k]
            flow = flow_between(vid, previous, frame) if flow_between is not None and previous is not None else None
            event = bool(events[k]) if events is not None else None
            yield vid, frame, v["prob"][k].numpy(), v["mask"][k].numpy(), flow, event
            previous = frame


def write_worst_frames(videos: dict, scores: dict, path: Path, count: int, dataset=None) -> Optional[Path]:
    """The ``count`` lowest-Dice frames, prediction green and truth yellow, drawn on the source frames
    when ``dataset`` can give them (see :func:`dtc.engine.infer.source_frames`), else on the network's
    input enlarged twice; frames of different sizes are padded (black, bottom and right) to the largest.
    Nothing is written (None) when no frame is labelled."""
    import cv2

    from dtc.engine.infer import overlay_frame, source_frames, write_overlay_video

    ranked = sorted(((d, vid, k) for vid, s in scores.items() for k, d in enumerate(s["dice_per_frame"])
                     if videos[vid]["valid"][k]), key=lambda r: (r[0], r[1], r[2]))[:count]
    if not ranked:
        return None
    sources = {vid: source_frames(dataset, vid) for vid in {r[1] for r in ranked}} if dataset is not None else {}
    frames = []
    for dice, vid, k in ranked:
        v = videos[vid]
        source = sources.get(vid)
        image = source[v["frame"][k]] if source else v["image"][k].numpy()
        f = overlay_frame(image, v["prob"][k].numpy(), truth=v["mask"][k].numpy(), scale=1 if source else 2)
        cv2.putText(f, f"{vid} #{v['frame'][k]} Dice {dice:.3f}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 255), 1, cv2.LINE_AA)
        frames.append(f)
    h = max(f.shape[0] for f in frames)
    w = max(f.shape[1] for f in frames)
    frames = [np.pad(f, ((0, h - f.shape[0]), (0, w - f.shape[1]), (0, 0))) for f in frames]
    return write_overlay_video(path, frames, fps=2)


def evaluate_checkpoint(checkpoint, out_dir, *, split: str = "test", device: str = "auto",
                        data_overrides: Optional[list[str]] = None, batch_size: Optional[int] = None,
                        progress: bool = True) -> dict:
    """Evaluates a checkpoint on ``split`` of the dataset it was trained on (its saved ``data``
    section, optionally overridden, e.g. ``["data.source=sunseg", "data.root=/data/SUN"]``)."""
    from dtc.engine.checkpoint import model_from_checkpoint
    from dtc.engine.config import TrainConfig, apply_overrides
    from dtc.engine.data import build_dataset
    from dtc.engine.inference import resolve_device

    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    model, ckpt = model_from_checkpoint(checkpoint, map_location="cpu")
    device = resolve_device(device)
    model = model.to(device)
    saved = dict(ckpt.get("config") or {})
    cfg = TrainConfig.from_dict(apply_overrides(saved, list(data_overrides or [])))
    dataset = build_dataset(cfg, split, T=1, stride=1)
    result = evaluate_model(model, dataset, out_dir, device=device,
                            batch_size=batch_size or cfg.data.batch_size, progress=progress)
    result["checkpoint"] = {"stage": ckpt["stage"], "model": ckpt["model"]["name"], "epoch": ckpt["epoch"],
                            "best_val_dice": ckpt["best"] if math.isfinite(ckpt["best"]) else None}
    return result
