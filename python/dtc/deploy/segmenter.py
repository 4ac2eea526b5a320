"""A self-contained predictor: raw frames in, probabilities and masks at the frames' own size out."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from dtc.deploy.preprocess import Preprocessing, normalise, preprocessing_of

__all__ = ["Prediction", "Segmenter", "frames_to_tensor"]

# ITU-R BT.601 luma: how an RGB frame becomes grey for a one-channel network (the C++ runtime uses the same).
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class Prediction:
    """``prob`` float32 in [0, 1] and ``mask`` bool (``prob > threshold``), shaped like the input frames
    without their channel axis: ``(N, H, W)`` from :meth:`Segmenter.predict`, ``(H, W)`` from ``push``."""

    prob: np.ndarray
    mask: np.ndarray


def frames_to_tensor(frames, in_channels: int, *, batched: bool) -> torch.Tensor:
    """Raw frames as float32 ``(N, in_channels, H, W)`` in [0, 1].

    ``frames``: a numpy array or tensor, uint8 (0..255) or floating point in [0, 1]; channels last like
    decoded images: ``(H, W)`` grey or ``(H, W, C)`` with C in {1, 3} (RGB) for one frame
    (``batched=False``), ``(N, H, W)`` or ``(N, H, W, C)`` for a batch. Grey frames are repeated to
    three channels for an RGB network; RGB frames become luma for a one-channel network.
    """
    what = "a frame" if not batched else "frames"
    t = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames.detach().cpu()
    base_dim = 2 if not batched else 3
    if t.dim() == base_dim:
        t = t.unsqueeze(-1)
    if t.dim() != base_dim + 1 or t.shape[-1] not in (1, 3):
        shape = "(H, W) or (H, W, C)" if not batched else "(N, H, W) or (N, H, W, C)"
        raise ValueError(f"Segmenter: {what} must be shaped {shape} with C = 1 (grey) or 3 (RGB), "
                         f"got shape {tuple(t.shape)}")
    if not batched:
        t = t.unsqueeze(0)
    if t.shape[0] == 0 or t.shape[1] == 0 or t.shape[2] == 0:
        raise ValueError(f"Segmenter: {what} must not be empty, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        t = t.to(torch.float32) / 255.0
    elif t.is_floating_point():
        t = t.to(torch.float32)
        if not bool(torch.isfinite(t).all()) or float(t.min()) < 0.0 or float(t.max()) > 1.0:
            raise ValueError(f"Segmenter: floating-point {what} must be finite and in [0, 1] "
                             f"(got values in [{float(t.min()):g}, {float(t.max()):g}]); pass uint8 for 0..255")
    else:
        raise ValueError(f"Segmenter: {what} must be uint8 (0..255) or floating point in [0, 1], got {t.dtype}")
    t = t.permute(0, 3, 1, 2)
    c = t.shape[1]
    if c == in_channels:
        pass
    elif c == 1:
        t = t.expand(-1, in_channels, -1, -1)
    elif c == 3 and in_channels == 1:
        luma = torch.tensor(_LUMA, dtype=t.dtype).view(1, 3, 1, 1)
        t = (t * luma).sum(1, keepdim=True)
    else:
        raise ValueError(f"Segmenter: the network takes {in_channels} channel(s), cannot feed {c}-channel frames")
    return t.contiguous()


class Segmenter:
    """A trained network with its preprocessing: ``segmenter(frames)`` or ``segmenter.push(frame)``.

    Frames of any size are padded (edge replication, bottom and right) to the network's size multiple and
    the result is cropped back, so probabilities and masks come at each frame's own resolution. The
    normalisation recorded with the checkpoint is applied here: callers pass raw frames.

    >>> seg = Segmenter.from_checkpoint("runs/student/best.pt")          # doctest: +SKIP
    >>> out = seg(video_uint8)            # (N, H, W) or (N, H, W, 3)   # doctest: +SKIP
    >>> out.prob.shape, out.mask.dtype                                 # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module, preprocess: Preprocessing, *, device: Union[str, torch.device] = "cpu"):
        if not isinstance(preprocess, Preprocessing):
            raise TypeError(f"Segmenter: preprocess must be a Preprocessing, got {type(preprocess).__name__}")
        from dtc.engine.inference import resolve_device

        self.device = resolve_device(str(device))
        # Channels-last runs the student about twice as fast on the CPU (oneDNN); the C++ runtime does the
        # same, so both compute alike.
        self.model = model.to(self.device).to(memory_format=torch.channels_last).eval()
        self.preprocess = preprocess
        self.frames_seen = 0

    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], *, device: str = "auto") -> "Segmenter":
        """Loads a checkpoint written by dtc's trainer (``best.pt`` / ``last.pt``)."""
        from dtc.engine.checkpoint import model_from_checkpoint

        model, ckpt = model_from_checkpoint(path, map_location="cpu")
        return cls(model, preprocessing_of(model, ckpt), device=device)

    @property
    def threshold(self) -> float:
        return self.preprocess.threshold

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, H, W)`` probabilities of float32 frames ``(N, C_in, H, W)`` in [0, 1] whose H and W
        are multiples of the size multiple: the exact contract of the exported models."""
        from dtc.engine.trainer import logits_of

        m = self.preprocess.multiple
        if x.dim() != 4 or x.shape[1] != self.preprocess.in_channels or x.shape[2] % m or x.shape[3] % m:
            raise ValueError(f"Segmenter.probabilities: x must be (N, {self.preprocess.in_channels}, H, W) with H and W "
                             f"multiples of {m}, got {tuple(x.shape)}")
        x = normalise(x.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last), self.preprocess)
        return torch.sigmoid(logits_of(self.model(x)).float())

    def _run(self, x: torch.Tensor) -> Prediction:
        m = self.preprocess.multiple
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % m, -w % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        prob = self.probabilities(x)[:, 0, :h, :w].cpu().numpy()
        return Prediction(prob=prob, mask=prob > self.threshold)

    def predict(self, frames, batch_size: int = 8) -> Prediction:
        """Segments a batch ``(N, H, W)`` or ``(N, H, W, C)`` (uint8, or float in [0, 1]); returns
        ``Prediction`` with ``prob``/``mask`` shaped ``(N, H, W)``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"Segmenter.predict: batch_size must be a positive int, got {batch_size!r}")
        x = frames_to_tensor(frames, self.preprocess.in_channels, batched=True)
        parts = [self._run(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        return Prediction(prob=np.concatenate([p.prob for p in parts]), mask=np.concatenate([p.mask for p in parts]))

    __call__ = predict

    def push(self, frame) -> Prediction:
        """Segments the next frame of a live stream, ``(H, W)`` or ``(H, W, C)``; returns ``(H, W)`` maps.
        Equal to :meth:`predict` on the stacked frames (each frame is independent: the student needs no
        history, which is the point of distilling the temporal coherence into it)."""
        out = self._run(frames_to_tensor(frame, self.preprocess.in_channels, batched=False))
        self.frames_seen += 1
        return Prediction(prob=out.prob[0], mask=out.mask[0])
