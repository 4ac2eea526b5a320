"""The 2-D teacher of XDim-KD (docs/xdim.md, "The 2-D teacher"): a frozen 2-D encoder on a stride-8 grid
plus a light head trained on the labelled slices.

An encoder is any module mapping normalised 3-channel slices [N, 3, H, W] to features [N, C, H/8, W/8].
`FrozenEncoder` wraps it: it tiles grey slices to 3 channels, applies the ImageNet normalisation dtc's
2-D nets are trained with, freezes the weights and runs without gradient. `SegmenterEncoder` makes one
from a dtc 2-D segmenter (the stage-1 teacher or a student): its encoder level at stride 8. A user's own frozen encoder (e.g. a ViT-S/8 with
their weights) goes through `FrozenEncoder(module, channels)` unchanged.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dtc.engine.data import IMAGE_MEAN, IMAGE_STD

STRIDE = 8
TEACHER_FORMAT = "dtc-xdim-teacher-1"


class FrozenEncoder(nn.Module):
    """forward(slices [N, 1, H, W] in [0, 1]) -> sg(features) [N, channels, H/stride, W/stride].

    The wrapped module receives the grey slice tiled to 3 channels and ImageNet-normalised. Its weights
    are frozen and it always runs in eval mode (train() does not switch it), so batch statistics never
    change. H and W must be multiples of `multiple` (at least the stride).
    """

    def __init__(self, module: nn.Module, channels: int, stride: int = STRIDE, multiple: int | None = None):
        super().__init__()
        if not isinstance(channels, int) or channels < 1 or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"FrozenEncoder: channels and stride must be positive ints, got {channels!r}, {stride!r}")
        self.module = module
        self.channels, self.stride = channels, stride
        self.multiple = max(stride, int(multiple or stride))
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.module.eval()
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.module.eval()  # frozen: never batch statistics
        return self

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        if slices.dim() != 4 or slices.shape[1] != 1:
            raise ValueError(f"FrozenEncoder: slices must be grey [N, 1, H, W], got {tuple(slices.shape)}")
        H, W = slices.shape[-2:]
        if H % self.multiple or W % self.multiple:
            raise ValueError(f"FrozenEncoder: H and W must be multiples of {self.multiple}, got {H}x{W}")
        x = (slices.expand(-1, 3, -1, -1) - self.mean.to(slices)) / self.std.to(slices)
        with torch.no_grad():
            f = self.module(x)
        expected = (slices.shape[0], self.channels, H // self.stride, W // self.stride)
        if tuple(f.shape) != expected:
            raise ValueError(f"FrozenEncoder: the encoder returned {tuple(f.shape)}, expected {expected} "
                             f"(channels={self.channels} on a stride-{self.stride} grid)")
        return f.detach()


class _SegmenterGrid(nn.Module):
    """A dtc 2-D segmenter as one stride-8 map: its encoder level at stride 8 when it exposes the feature
    pyramid (`features`, `feature_strides`), else its (logits, local, global) taps pooled to that grid."""

    def __init__(self, segmenter: nn.Module):
        super().__init__()
        strides = list(getattr(segmenter, "feature_strides", []) or [])
        self.level = strides.index(STRIDE) if STRIDE in strides and hasattr(segmenter, "features") else None
        if self.level is not None:
            self.segmenter = segmenter
        else:
            from dtc.models.protocol import as_triple

            self.segmenter = as_triple(segmenter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.level is not None:
            return self.segmenter.features(x)[self.level]
        _, local, global_ = self.segmenter(x)
        size = (x.shape[-2] // STRIDE, x.shape[-1] // STRIDE)
        fine = F.adaptive_avg_pool2d(local, size)
        coarse = F.interpolate(global_, size=size, mode="bilinear", align_corners=False)
        return torch.cat([fine, coarse], dim=1)


class SegmenterEncoder(FrozenEncoder):
    """A frozen dtc 2-D segmenter as the teacher's encoder: its stride-8 encoder level (C_T = that level's
    channels), or, for a net without a feature pyramid, [avg-pool_8(local), resize(global)]."""

    def __init__(self, segmenter: nn.Module):
        grid = _SegmenterGrid(segmenter)
        if grid.level is not None:
            channels = int(segmenter.feature_channels[grid.level])
        else:
            taps = getattr(segmenter, "tap_channels", None)
            if taps is None:
                raise ValueError("SegmenterEncoder: the segmenter needs a stride-8 level in feature_strides or "
                                 "tap_channels ({'local': C_l, 'global': C_g})")
            channels = int(taps["local"]) + int(taps["global"])
        super().__init__(grid, channels, STRIDE, int(getattr(segmenter, "multiple", STRIDE)))


class SliceTeacher(nn.Module):
    """Frozen encoder + head: Conv1x1 C->hidden, ReLU, Conv1x1 hidden->1, nearest up-sampling by the stride.

    forward(slices [N, 1, H, W] in [0, 1]) -> logits [N, 1, H, W]; features(slices) -> the encoder's frozen
    features (the correlation distillation's teacher side). Only the head trains.
    """

    def __init__(self, encoder: FrozenEncoder, hidden: int = 64):
        super().__init__()
        if not isinstance(encoder, FrozenEncoder):
            raise TypeError(f"SliceTeacher: encoder must be a FrozenEncoder, got {type(encoder).__name__}")
        self.encoder = encoder
        self.head = nn.Sequential(nn.Conv2d(encoder.channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1))

    @property
    def multiple(self) -> int:
        return self.encoder.multiple

    def features(self, slices: torch.Tensor) -> torch.Tensor:
        return self.encoder(slices)

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.head(self.encoder(slices)), scale_factor=self.encoder.stride, mode="nearest")

    def probabilities(self, slices: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(self(slices))


def resize_slices(x: torch.Tensor, size, mode: str = "bicubic") -> torch.Tensor:
    """[N, C, H, W] -> [N, C, *size] (bicubic with align_corners=True as the original code; clamped to [0, 1])."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=True).clamp_(0, 1)


def _epoch_batches(n: int, batch: int, steps: int | None, generator) -> list[torch.Tensor]:
    """Index batches of one epoch over n labelled slices: one pass (shuffled) when steps is None, else
    `steps` batches drawn with replacement. The original code's epoch runs over every slice of the
    training volumes with half of each batch forced onto labelled slices; unlabelled samples carry no
    loss, so an epoch of ceil(N_slices / batch) steps on labelled slices keeps its number of updates."""
    if steps is None:
        order = torch.randperm(n, generator=generator)
        return [order[i:i + batch] for i in range(0, n, batch)]
    return [torch.randint(n, (batch,), generator=generator) for _ in range(steps)]


def train_teacher_head(teacher: SliceTeacher, slices: torch.Tensor, labels: torch.Tensor, *, epochs: int = 100,
                       batch: int = 32, lr: float = 1e-4, weight_decay: float = 1e-4, size=(256, 256),
                       generator: torch.Generator | None = None, augment: bool = True, log=None,
                       steps_per_epoch: int | None = None) -> list[float]:
    """Stage A: BCE of the head on the labelled slices ([N, H, W] images in [0, 1] and 0/1 labels), Adam with
    MultiStep x0.1 at 70 % and 90 % of the epochs; `steps_per_epoch` batches per epoch (default one pass).
    Returns the mean loss per epoch."""
    from dtc.volume.augment import random_affine

    if slices.dim() != 3 or labels.shape != slices.shape or slices.shape[0] < 1:
        raise ValueError(f"slices and labels must be [N >= 1, H, W] of one shape, got {tuple(slices.shape)} and "
                         f"{tuple(labels.shape)}")
    x_all = resize_slices(slices[:, None].float(), size)
    y_all = (resize_slices(labels[:, None].float(), size) >= 0.5).float()
    opt = torch.optim.Adam(teacher.head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [math.ceil(0.7 * epochs), math.ceil(0.9 * epochs)], 0.1)
    teacher.train()
    history = []
    n = x_all.shape[0]
    for epoch in range(epochs):
        total, count = 0.0, 0
        for idx in _epoch_batches(n, batch, steps_per_epoch, generator):
            x, y = x_all[idx], y_all[idx]
            if augment:
                x, y = random_affine(x, y, generator)
                y = (y >= 0.5).float()
            loss = F.binary_cross_entropy_with_logits(teacher(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        sched.step()
        history.append(total / count)
        if log is not None:
            log(f"teacher epoch {epoch + 1}/{epochs}: BCE {history[-1]:.4f}")
    teacher.eval()
    return history


def pseudo_label_volume(teacher: SliceTeacher, image: torch.Tensor, *, draws: int = 20, size=(256, 256),
                        generator: torch.Generator | None = None, clean_mean: float = 0.1, clean_std: float = 0.01,
                        solver: str = "pcg", chunk: int | None = None, lambda_tv_z: float | None = None,
                        batch: int = 32) -> dict:
    """Stage B for one volume [D, H, W] in [0, 1] (docs/xdim.md, "Pseudo-labels"), without gradient:
    TTA (draws random rotations/translations per slice, `tta_accumulate`), cleaning (mean < clean_mean -> 0,
    std < clean_std -> 0), the 3-D smoother, clip and < 0.1 -> 0. Returns float16 "prob", "sigma",
    "confidence" (1 - 2 sigma) and float32 "mean" (before smoothing)."""
    from dtc.volume.pseudo import smooth3d
    from dtc.volume.tta import tta_predict

    if image.dim() != 3:
        raise ValueError(f"image must be a [D, H, W] volume, got {tuple(image.shape)}")
    teacher.eval()
    means, stds = [], []
    for z0 in range(0, image.shape[0], batch):
        m, s, _ = tta_predict(teacher.probabilities, image[z0:z0 + batch].float(), draws=draws, size=size,
                              generator=generator, batch=batch)
        means.append(m)
        stds.append(s)
    mean, std = torch.cat(means), torch.cat(stds)
    mean = torch.where(mean < clean_mean, torch.zeros_like(mean), mean)
    std = torch.where(std < clean_std, torch.zeros_like(std), std)
    prob = smooth3d(mean, std.clamp(0, 0.5), solver=solver, chunk=chunk, lambda_tv_z=lambda_tv_z)
    prob = torch.where(prob < 0.1, torch.zeros_like(prob), prob)
    return {"prob": prob.half(), "sigma": std.half(), "confidence": (1 - 2 * std).clamp(0, 1).half(), "mean": mean}


def train_slice_segmenter(slices: torch.Tensor, labels: torch.Tensor, *, name: str = "student", kwargs: dict | None = None,
                          epochs: int = 100, batch: int = 16, lr: float = 1e-3, size=(256, 256),
                          generator: torch.Generator | None = None, log=None,
                          steps_per_epoch: int | None = None) -> nn.Module:
    """The encoder dtc trains itself when none is given: a 2-D segmenter (dtc.models `name`) trained with
    BCE + soft Dice on the labelled slices (augmented), to be frozen as `SegmenterEncoder`."""
    from dtc.engine.inference import normalise_images
    from dtc.models import create
    from dtc.ops import bce_dice
    from dtc.volume.augment import random_affine

    if slices.dim() != 3 or labels.shape != slices.shape or slices.shape[0] < 1:
        raise ValueError(f"slices and labels must be [N >= 1, H, W] of one shape, got {tuple(slices.shape)} and "
                         f"{tuple(labels.shape)}")
    model = create(name, **(kwargs or {}))
    x_all = resize_slices(slices[:, None].float(), size)
    y_all = (resize_slices(labels[:, None].float(), size) >= 0.5).float()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [math.ceil(0.7 * epochs), math.ceil(0.9 * epochs)], 0.1)
    model.train()
    n = x_all.shape[0]
    for epoch in range(epochs):
        total, count = 0.0, 0
        for idx in _epoch_batches(n, batch, steps_per_epoch, generator):
            x, y = random_affine(x_all[idx], y_all[idx], generator)
            logits = model(normalise_images(x.expand(-1, 3, -1, -1)))[0]
            loss, _ = bce_dice(logits, (y >= 0.5).float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        sched.step()
        if log is not None:
            log(f"encoder epoch {epoch + 1}/{epochs}: BCE+Dice {total / count:.4f}")
    return model.eval()


def save_teacher(path, teacher: SliceTeacher, encoder_spec: dict, meta: dict | None = None) -> Path:
    """The head's weights plus how to rebuild the encoder (a dtc checkpoint path), atomically."""
    from dtc.io import atomic_torch_save

    state = {"format": TEACHER_FORMAT, "head": {k: v.detach().cpu() for k, v in teacher.head.state_dict().items()},
             "hidden": int(teacher.head[0].out_channels), "encoder": dict(encoder_spec), "meta": dict(meta or {})}
    return atomic_torch_save(state, path)


def load_teacher(path, map_location="cpu") -> tuple[SliceTeacher, dict]:
    """Rebuild a teacher written by `save_teacher` (its encoder from the dtc checkpoint it names)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher file not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unreadable file gets one clear message)
        raise ValueError(f"{path}: not a readable XDim-KD teacher file ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != TEACHER_FORMAT:
        raise ValueError(f"{path}: not an XDim-KD teacher file (expected format {TEACHER_FORMAT!r})")
    encoder = encoder_from_spec(state["encoder"], map_location)
    teacher = SliceTeacher(encoder, hidden=int(state["hidden"]))
    teacher.head.load_state_dict(state["head"])
    return teacher.eval(), state


def encoder_from_spec(spec: dict, map_location="cpu") -> FrozenEncoder:
    """{"checkpoint": path}: a dtc 2-D model or run checkpoint, frozen as a `SegmenterEncoder`."""
    path = spec.get("checkpoint") if isinstance(spec, dict) else None
    if not path:
        raise ValueError(f"encoder spec must name a dtc 2-D checkpoint as {{'checkpoint': path}}, got {spec!r}")
    from dtc.engine.checkpoint import model_from_checkpoint

    model, _ = model_from_checkpoint(path, map_location)
    return SegmenterEncoder(model)
