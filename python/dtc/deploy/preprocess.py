"""What a network expects of its input, recorded with it so a deployed model needs no training code."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["Preprocessing", "preprocessing_of", "normalise"]


@dataclass(frozen=True)
class Preprocessing:
    """The input contract of a trained network (JSON-able: :meth:`to_dict` / :meth:`from_dict`).

    Frames in [0, 1] with ``in_channels`` channels are normalised per channel as ``(x - mean) / std``;
    H and W must be multiples of ``multiple``; ``train_size`` (H, W) is the size it was trained at
    (None when unknown) and ``threshold`` turns probabilities into masks.
    """

    in_channels: int
    mean: tuple
    std: tuple
    multiple: int
    train_size: Optional[tuple] = None
    threshold: float = 0.5

    def __post_init__(self):
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(f"Preprocessing: mean and std need {self.in_channels} values (one per input channel), "
                             f"got {len(self.mean)} and {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Preprocessing: std must be positive, got {self.std}")
        if self.multiple <= 0:
            raise ValueError(f"Preprocessing: multiple must be positive, got {self.multiple}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = [float(v) for v in self.mean], [float(v) for v in self.std]
        d["train_size"] = list(self.train_size) if self.train_size is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Preprocessing: unknown keys {unknown}; expected some of {sorted(known)}")
        d = dict(d)
        d["mean"], d["std"] = tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"])
        if d.get("train_size") is not None:
            d["train_size"] = tuple(int(v) for v in d["train_size"])
        return cls(**d)


def preprocessing_of(model, ckpt: Optional[dict] = None) -> Preprocessing:
    """The checkpoint's recorded preprocessing, or, for checkpoints written before it was recorded, the
    one dtc's trainer has always applied (ImageNet mean/std of the dataset's RGB frames)."""
    if ckpt is not None and ckpt.get("preprocess") is not None:
        return Preprocessing.from_dict(ckpt["preprocess"])
    from dtc.engine.data import IMAGE_MEAN, IMAGE_STD

    c = _input_channels(model)
    if c == 3:
        mean, std = tuple(IMAGE_MEAN), tuple(IMAGE_STD)
    else:  # grey (or other) inputs: the channel average of the RGB statistics
        mean, std = (sum(IMAGE_MEAN) / 3,) * c, (sum(IMAGE_STD) / 3,) * c
    size = None
    data = (ckpt or {}).get("config", {}).get("data", {}) if ckpt else {}
    if "height" in data and "width" in data:
        size = (int(data["height"]), int(data["width"]))
    # A user's network has no declared multiple: the frame sizes the config allows (multiples of 16) are
    # the ones it was trained on.
    return Preprocessing(in_channels=c, mean=mean, std=std, multiple=int(getattr(model, "multiple", 16)),
                         train_size=size)


def _input_channels(model) -> int:
    """dtc's nets declare ``in_channels``; for any other module (a FeatureTaps wrapper included) it is the
    first convolution's, else 3 (RGB frames)."""
    kwargs = getattr(model, "init_kwargs", None)
    if isinstance(kwargs, dict):
        return int(kwargs.get("in_channels", 3))
    for module in model.modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            return int(module.in_channels)
    return 3


def normalise(x: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """``(x - mean) / std`` per channel of ``(N, C, H, W)`` frames in [0, 1]."""
    mean = torch.tensor(pre.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std
