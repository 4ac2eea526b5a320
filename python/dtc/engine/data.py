"""Datasets of a run: training windows and validation/test frames, from the simulator or real files."""
from __future__ import annotations

from dtc.engine.config import ConfigError, TrainConfig

__all__ = ["build_dataset", "IMAGE_MEAN", "IMAGE_STD"]

# The networks see ImageNet-normalised input, as in the authors' code; images stay in [0, 1] elsewhere.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def build_dataset(cfg: TrainConfig, split: str, *, T: int | None = None, stride: int | None = None):
    """Windows of ``T`` frames (default: 1 for the teacher, ``data.T`` for the student) of ``split``.

    Validation and test use ``T=1, stride=1`` so every frame is seen exactly once, in order.
    """
    d = cfg.data
    if T is None:
        T = 1 if cfg.stage == "teacher" else d.T
    stride = d.stride if stride is None else stride
    augment = None
    if split == "train" and d.augment:
        from dtc.data import SequenceAugment

        augment = SequenceAugment()
    if d.source == "synthetic":
        from dtc.data import SyntheticTRUSDataset

        dataset = SyntheticTRUSDataset(num_videos=d.num_videos, frames=d.frames, size=(d.height, d.width), T=T,
                                       seed=d.seed, split=split, stride=stride, frame_gap=d.frame_gap if T > 1 else 1,
                                       augment=augment, config=cfg.synth_config(split),
                                       folds=(d.folds, d.fold) if d.folds else None)
        if not dataset.videos:
            # An empty validation split would make val_dice NaN every epoch and never write best.pt.
            raise ConfigError(f"data.num_videos={d.num_videos} leaves no synthetic video for the {split!r} split "
                              "(videos are split by patient into train/val/test); use data.num_videos >= 5")
        return dataset
    from dtc.data import VideoSegmentationDataset, index, patient_folds, patient_split

    records = index.read_source(d.source, d.root, masks=d.masks, spacing_csv=d.spacing_csv)
    patients = sorted({r.patient_id for r in records})
    try:
        assign = patient_folds(patients, d.seed, d.folds, d.fold) if d.folds else patient_split(patients, d.seed)
    except ValueError as exc:
        raise ConfigError(f"data.folds: {exc}") from exc
    chosen = [r for r in records if assign[r.patient_id] == split]
    if not chosen:
        raise ConfigError(f"data.root {d.root}: the patient-level split leaves no video for {split!r}")
    return VideoSegmentationDataset(chosen, T=T, stride=stride, frame_gap=d.frame_gap if T > 1 else 1,
                                    size=(d.height, d.width), augment=augment,
                                    require_labels=cfg.stage == "teacher")
