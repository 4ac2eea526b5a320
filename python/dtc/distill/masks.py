"""Soft foreground masks on the encoder levels (docs/v2i.md, "Soft foreground masks").

The feature distillation weighs each level-l cell by how much it belongs to the target. The builders
turn a key-frame mask (or boxes, for box-only data) into ``M_l in [0, 1]`` per level:

* ``"box"``: an axis-aligned Gaussian per component box, evaluated at the level's cell centres;
* ``"edt"`` (default): 1 on the lesion with a Gaussian halo in its exact Euclidean distance, then an
  exact area average down to the level;
* ``"moment"``: a Gaussian with the component's centroid and pixel covariance;
* ``"hard"``: the area average of the mask itself (or of the box indicator).

Convention:
    Image pixel (x, y) has its centre at integer coordinates; level cell (i, j) of stride s sits at
    ((j + 0.5) s - 0.5, (i + 0.5) s - 0.5), ``align_corners=False`` placement. Boxes are
    ``(x1, y1, x2, y2)`` in pixel-extent form: a component spanning pixel columns a..b has x1 = a - 0.5
    and x2 = b + 0.5, so the width is the pixel count. Components are 8-connected and sorted by area,
    largest first (ties in scan order). Masks carry no gradient; an empty frame gives M = 0.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["MODES", "components", "component_boxes", "box_gaussian", "edt_gaussian", "moment_gaussian",
           "hard_mask", "soft_foreground"]

MODES = ("box", "edt", "moment", "hard")
_EIGHT = np.ones((3, 3), dtype=bool)


def _check_mask(mask: torch.Tensor, where: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise ValueError(f"{where}: mask must be one frame's (H, W) tensor, got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    return mask.detach().cpu() != 0


def _check_stride(stride, size, where: str) -> int:
    if isinstance(stride, bool) or not isinstance(stride, int) or stride <= 0:
        raise ValueError(f"{where}: stride must be a positive int, got {stride!r}")
    if size is not None and (size[0] % stride or size[1] % stride):
        raise ValueError(f"{where}: the frame size {tuple(size)} must be a multiple of the stride {stride}")
    return stride


def components(mask: torch.Tensor, max_components: Optional[int] = 3) -> list[torch.Tensor]:
    """The 8-connected components of ``mask (H, W)`` as boolean masks, largest first, at most
    ``max_components`` of them (all with ``None``)."""
    from scipy import ndimage

    binary = _check_mask(mask, "components").numpy()
    labels, count = ndimage.label(binary, structure=_EIGHT)
    if count == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = sorted(range(count), key=lambda j: (-areas[j], j))
    if max_components is not None:
        order = order[:max_components]
    return [torch.from_numpy(labels == j + 1) for j in order]


def component_boxes(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Pixel-extent boxes ``(J, 4)`` = (x1, y1, x2, y2) of boolean component masks (float64)."""
    boxes = []
    for part in parts:
        ys, xs = torch.nonzero(part, as_tuple=True)
        boxes.append([xs.min().item() - 0.5, ys.min().item() - 0.5, xs.max().item() + 0.5, ys.max().item() + 0.5])
    return torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)


def _cell_centres(level_size, stride):
    h, w = level_size
    y = (torch.arange(h, dtype=torch.float64) + 0.5) * stride - 0.5
    x = (torch.arange(w, dtype=torch.float64) + 0.5) * stride - 0.5
    return y[:, None], x[None, :]


def _combine(maps: list[torch.Tensor], level_size, combine: str) -> torch.Tensor:
    if combine not in ("max", "sum"):
        raise ValueError(f"soft masks: combine must be 'max' or 'sum', got {combine!r}")
    if not maps:
        return torch.zeros(tuple(level_size), dtype=torch.float64)
    stacked = torch.stack(maps)
    return stacked.amax(0) if combine == "max" else stacked.sum(0).clamp(max=1.0)


def box_gaussian(boxes: torch.Tensor, level_size, stride: int, beta: float = 0.25, combine: str = "max") -> torch.Tensor:
    """``M (h, w)`` = max_j (or min(1, sum_j)) of ``exp(-(x - c_x)^2 / 2 s_x^2 - (y - c_y)^2 / 2 s_y^2)`` at
    the cell centres of a level of ``level_size = (h, w)`` and ``stride``, with ``s_x = max(beta w_j,
    stride / 2)`` (the floor keeps a small box from falling between cells) and likewise for y."""
    _check_stride(stride, None, "box_gaussian")
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    if beta <= 0:
        raise ValueError(f"box_gaussian: beta must be > 0, got {beta}")
    if len(boxes) and not bool(((boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])).all()):
        raise ValueError("box_gaussian: every box must have x2 >= x1 and y2 >= y1 (x1, y1, x2, y2)")
    y, x = _cell_centres(level_size, stride)
    maps = []
    for x1, y1, x2, y2 in boxes.tolist():
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        sx = max(beta * max(x2 - x1, 1.0), stride / 2)
        sy = max(beta * max(y2 - y1, 1.0), stride / 2)
        maps.append(torch.exp(-(x - cx) ** 2 / (2 * sx * sx) - (y - cy) ** 2 / (2 * sy * sy)))
    return _combine(maps, level_size, combine)


def _area_average(full: torch.Tensor, stride: int) -> torch.Tensor:
    return F.avg_pool2d(full[None, None], stride)[0, 0] if stride > 1 else full


def edt_gaussian(mask: torch.Tensor, stride: int, gamma: float = 0.5, floor: float = 2.0, edt_mode: str = "components",
                 max_components: Optional[int] = 3, combine: str = "max") -> torch.Tensor:
    """``M (H/stride, W/stride)``: per component, ``exp(-d^2 / 2 s^2)`` with d the exact Euclidean distance
    (pixels) to the component and ``s = max(gamma sqrt(area / pi), floor)``; combined over components
    and area-averaged to the level. ``edt_mode="union"`` takes one distance to the union of all
    foreground, with s from the total area (one transform instead of one per component)."""
    from dtc.ops import edt

    binary = _check_mask(mask, "edt_gaussian")
    _check_stride(stride, binary.shape, "edt_gaussian")
    if edt_mode not in ("components", "union"):
        raise ValueError(f"edt_gaussian: edt_mode must be 'components' or 'union', got {edt_mode!r}")
    if gamma <= 0 or floor <= 0:
        raise ValueError(f"edt_gaussian: gamma and floor must be > 0, got {gamma}, {floor}")
    parts = [binary] if edt_mode == "union" and bool(binary.any()) else \
        ([] if edt_mode == "union" else components(binary, max_components))
    maps = []
    for part in parts:
        sigma = max(gamma * math.sqrt(float(part.sum()) / math.pi), floor)
        d = edt(part, (1.0, 1.0))
        maps.append(torch.exp(-d * d / (2 * sigma * sigma)))
    return _area_average(_combine(maps, binary.shape, combine), stride)


def moment_gaussian(mask: torch.Tensor, stride: int, kappa: float = 1.0, beta: float = 0.25,
                    max_components: Optional[int] = 3, combine: str = "max") -> torch.Tensor:
    """``M (H/stride, W/stride)``: per component, ``exp(-1/2 (p - mu)^T (kappa Sigma)^-1 (p - mu))`` at the cell
    centres, mu the centroid and Sigma the pixel-coordinate covariance; the covariance's eigenvalues are
    floored at ``(stride / 2)^2`` like the box Gaussian's sigmas. A component under 3 pixels falls back to
    the box Gaussian of its box. For a filled ellipse this is the box Gaussian of its bounding box with
    beta = 1/4 (a uniform ellipse's variance along a semi-axis a is a^2 / 4)."""
    binary = _check_mask(mask, "moment_gaussian")
    _check_stride(stride, binary.shape, "moment_gaussian")
    if kappa <= 0:
        raise ValueError(f"moment_gaussian: kappa must be > 0, got {kappa}")
    level = (binary.shape[0] // stride, binary.shape[1] // stride)
    y, x = _cell_centres(level, stride)
    maps = []
    for part in components(binary, max_components):
        if int(part.sum()) < 3:
            maps.append(box_gaussian(component_boxes([part]), level, stride, beta))
            continue
        ys, xs = torch.nonzero(part, as_tuple=True)
        pts = torch.stack([xs, ys], 1).to(torch.float64)
        mu = pts.mean(0)
        centred = pts - mu
        cov = kappa * centred.T @ centred / len(pts)
        values, vectors = torch.linalg.eigh(cov)
        values = values.clamp(min=(stride / 2) ** 2)
        precision = vectors @ torch.diag(1.0 / values) @ vectors.T
        dx, dy = x - mu[0], y - mu[1]
        q = precision[0, 0] * dx * dx + 2 * precision[0, 1] * dx * dy + precision[1, 1] * dy * dy
        maps.append(torch.exp(-0.5 * q))
    return _combine(maps, level, combine)


def hard_mask(mask: torch.Tensor, stride: int) -> torch.Tensor:
    """The area average of the mask down to the level."""
    binary = _check_mask(mask, "hard_mask")
    _check_stride(stride, binary.shape, "hard_mask")
    return _area_average(binary.to(torch.float64), stride)


def _box_indicator(boxes: torch.Tensor, size) -> torch.Tensor:
    h, w = size
    y = torch.arange(h, dtype=torch.float64)[:, None]
    x = torch.arange(w, dtype=torch.float64)[None, :]
    full = torch.zeros(h, w, dtype=torch.bool)
    for x1, y1, x2, y2 in torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4).tolist():
        full |= (x >= x1) & (x <= x2) & (y >= y1) & (y <= y2)
    return full


def soft_foreground(mask: Optional[torch.Tensor] = None, boxes: Optional[Sequence] = None, *, strides: Sequence[int],
                    image_size=None, mode: str = "edt", beta: float = 0.25, gamma: float = 0.5, kappa: float = 1.0,
                    edt_floor: float = 2.0, edt_mode: str = "components", combine: str = "max",
                    max_components: Optional[int] = 3) -> list[torch.Tensor]:
    """Soft foreground masks ``[M_l (B, 1, H/s_l, W/s_l) for s_l in strides]`` (float32, on the mask's device).

    Args:
        mask: key-frame masks ``(B, 1, H, W)`` or ``(B, H, W)``, nonzero = foreground.
        boxes: for box-only data instead of ``mask``: per sample a ``(J, 4)`` tensor of pixel-extent
            boxes; needs ``image_size = (H, W)`` and ``mode`` ``"box"`` or ``"hard"``.
        strides: the levels' strides (the three deepest encoder levels).
        mode: ``"box"``, ``"edt"``, ``"moment"`` or ``"hard"``; beta, gamma, kappa, edt_floor, edt_mode,
            combine and max_components as in the single-frame builders.
    """
    if mode not in MODES:
        raise ValueError(f"soft_foreground: mode must be one of {MODES}, got {mode!r}")
    if (mask is None) == (boxes is None):
        raise ValueError("soft_foreground: give exactly one of mask (B, 1, H, W) and boxes (per sample (J, 4))")
    strides = list(strides)
    if boxes is not None:
        if mode not in ("box", "hard"):
            raise ValueError(f"soft_foreground: boxes support mode 'box' or 'hard', got {mode!r}")
        if image_size is None or len(image_size) != 2:
            raise ValueError("soft_foreground: boxes need image_size=(H, W)")
        size = tuple(int(v) for v in image_size)
        out = []
        for s in strides:
            _check_stride(s, size, "soft_foreground")
            level = (size[0] // s, size[1] // s)
            maps = [box_gaussian(b, level, s, beta, combine) if mode == "box"
                    else _area_average(_box_indicator(b, size).to(torch.float64), s) for b in boxes]
            out.append(torch.stack(maps)[:, None].to(torch.float32) if maps else torch.zeros(0, 1, *level))
        return out
    if not isinstance(mask, torch.Tensor) or mask.dim() not in (3, 4) or (mask.dim() == 4 and mask.shape[1] != 1):
        raise ValueError(f"soft_foreground: mask must be (B, 1, H, W) or (B, H, W), got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    frames = mask.reshape(mask.shape[0], *mask.shape[-2:])
    out = []
    for s in strides:
        _check_stride(s, frames.shape[-2:], "soft_foreground")
        maps = []
        for frame in frames:
            if mode == "edt":
                maps.append(edt_gaussian(frame, s, gamma, edt_floor, edt_mode, max_components, combine))
            elif mode == "moment":
                maps.append(moment_gaussian(frame, s, kappa, beta, max_components, combine))
            elif mode == "hard":
                maps.append(hard_mask(frame, s))
            else:
                level = (frames.shape[-2] // s, frames.shape[-1] // s)
                maps.append(box_gaussian(component_boxes(components(frame, max_components)), level, s, beta, combine))
        level = (frames.shape[-2] // s, frames.shape[-1] // s)
        stacked = torch.stack(maps)[:, None] if maps else torch.zeros(0, 1, *level, dtype=torch.float64)
        out.append(stacked.to(device=mask.device, dtype=torch.float32))
    return out
