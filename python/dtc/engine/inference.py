"""Running a trained network over videos: every frame once, in order, grouped per video."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from dtc.engine.data import IMAGE_MEAN, IMAGE_STD

__all__ = ["collate_windows", "normalise_images", "predict_videos", "resolve_device", "video_scores"]


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` is the first CUDA device when there is one, else the CPU; asking for CUDA without
    one is an error rather than a silent fallback."""
    import re

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(name, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but no CUDA device is available: use --device cpu "
                             "(or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} was asked for but only {torch.cuda.device_count()} CUDA device(s) "
                             "are visible")
    return device


def collate_windows(items: list[dict]) -> dict:
    """Stacks the tensors of window dicts; other values (video ids) become lists."""
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def normalise_images(images: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of ``(..., 3, H, W)`` images in [0, 1]: what the networks see."""
    mean = torch.tensor(IMAGE_MEAN, device=images.device, dtype=images.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=images.device, dtype=images.dtype).view(3, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def predict_videos(model, dataset, *, device, batch_size: int = 8, amp_dtype: Optional[torch.dtype] = None,
                   rank: int = 0, world_size: int = 1, progress: bool = False) -> dict[str, dict]:
    """Per video id: ``frame`` (sorted frame numbers), ``prob`` (F, H, W) float32 on the CPU, ``mask``
    (F, H, W), ``valid`` (F,) bool, ``event`` (F,) bool (a simulated transient event touched the frame)
    and ``image`` (F, H, W) grey, from a dataset of single-frame
    windows (``T=1``). With ``world_size > 1`` this rank handles every ``world_size``-th video.
    """
    from dtc.engine.trainer import logits_of

    device = torch.device(device)
    if getattr(dataset, "T", 1) != 1:
        raise ValueError(f"predict_videos needs a dataset of single frames (T=1), got T={dataset.T}")
    indices = list(range(len(dataset)))
    if world_size > 1:
        video_of = [dataset.windows[i][0] for i in indices]
        indices = [i for i, v in zip(indices, video_of) if v % world_size == rank]
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, collate_fn=collate_windows)
    if progress:
        from dtc.progress import progress_bar

        loader = progress_bar(loader, desc="predict", leave=False)
    was_training = model.training
    model.eval()
    videos: dict[str, dict] = {}
    try:
        for batch in loader:
            images = batch["image"].flatten(0, 1)
            x = normalise_images(images.to(device))
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                probs = torch.sigmoid(logits_of(model(x)).float())[:, 0].cpu()
            masks = batch["mask"].flatten(0, 1)[:, 0]
            valid = batch["mask_valid"].flatten()
            frames = batch["frame_index"].flatten()
            # Frames a simulated transient event touched (absent for real data: every frame counts as calm).
            events = batch["event"].flatten() if "event" in batch else torch.zeros(len(frames), dtype=torch.bool)
            for j, vid in enumerate(batch["video_id"]):
                v = videos.setdefault(vid, {"frame": [], "prob": [], "mask": [], "valid": [], "image": [], "event": []})
                v["frame"].append(int(frames[j]))
                v["prob"].append(probs[j])
                v["mask"].append(masks[j])
                v["valid"].append(bool(valid[j]))
                v["event"].append(bool(events[j]))
                v["image"].append(images[j].mean(0))
    finally:
        model.train(was_training)
    for v in videos.values():
        order = np.argsort(v["frame"])
        v["frame"] = [v["frame"][i] for i in order]
        for key in ("prob", "mask", "image"):
            v[key] = torch.stack([v[key][i] for i in order])
        v["valid"] = torch.tensor([v["valid"][i] for i in order])
        v["event"] = torch.tensor([v["event"][i] for i in order])
    return videos


def video_scores(video: dict) -> dict:
    """Per video, through :mod:`dtc.metrics`: mean Dice at 0.5 over labelled frames (empty GT with empty
    prediction scores 1), TC ``1 − mean|P_t − P_{t−1}|`` and the area flicker."""
    from dtc.metrics import area_flicker, binary_metrics, temporal_consistency

    probs, masks, valid = video["prob"].numpy(), video["mask"].numpy(), video["valid"].numpy()
    dice = [binary_metrics(probs[t], masks[t])["Dice"] for t in range(len(probs))]
    labelled = [d for d, ok in zip(dice, valid) if ok]
    tc = [temporal_consistency(probs[t], probs[t - 1]) for t in range(1, len(probs))]
    return {
        "dice": float(np.mean(labelled)) if labelled else math.nan,
        "tc": float(np.mean(tc)) if tc else math.nan,
        "area_flicker": area_flicker(probs) if len(probs) > 1 else math.nan,
        "dice_per_frame": dice,
    }
