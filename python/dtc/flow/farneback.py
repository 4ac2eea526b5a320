"""Farnebäck dense optical flow on batched tensors, and the two flow preprocessing presets.

The op (``torch.ops.dtc.farneback``) runs the algorithm of Farnebäck (2003) exactly as OpenCV's
``calcOpticalFlowFarneback`` computes it (same pyramid, smoothing, polynomial expansion, border
weights and window), on the CPU with threads or on CUDA, for a whole batch of pairs in one call.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "farneback",
    "farneback_opencv",
    "opencv_cpp_available",
    "to_grey",
    "preprocess",
    "reference_preprocess_frame",
    "PRESETS",
    "FARNEBACK_DEFAULTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

#: The authors' Farnebäck parameters (docs/method.md §2.5), also dtc's defaults.
FARNEBACK_DEFAULTS = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2,
                          gaussian_window=False, median=3)
PRESETS = ("dtc", "reference")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R BT.601 luma, the weights of OpenCV's RGB2GRAY.
_GREY_WEIGHTS = (0.299, 0.587, 0.114)

# The authors' preprocessing chain before Farnebäck, in their order. The chain (ImageNet
# normalisation, clipping to [0, 1], bilateral filter, CLAHE, Gaussian blur) is as documented for
# the released code; the filter parameters below are OpenCV's customary values and are an
# assumption of dtc, not read from the authors' code.
REFERENCE_CHAIN = dict(bilateral_d=5, bilateral_sigma_color=75.0, bilateral_sigma_space=75.0,
                       clahe_clip_limit=2.0, clahe_tile_grid=(8, 8), blur_ksize=5)


def _load_core():
    from dtc._extension import load

    load()


def to_grey(images: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` RGB or ``(N, 1, H, W)`` grey -> ``(N, 1, H, W)`` grey (OpenCV's RGB2GRAY weights)."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1, H, W) or (N, 3, H, W), got {tuple(images.shape)}")
    if images.shape[1] == 1:
        return images
    w = torch.tensor(_GREY_WEIGHTS, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.to(torch.float32) * w).sum(1, keepdim=True)


def _to_opencv_scale(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have shape (N, 1, H, W) or (N, 3, H, W), got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return to_grey(x) if x.shape[1] == 3 else x
    if not x.is_floating_point():
        raise TypeError(f"{name} must be float (values in [0, 1]) or uint8 (0..255), got {x.dtype}")
    # OpenCV's regulariser (1e-3 on the determinant of each 2x2 system) is an absolute constant
    # tuned for 0..255 grey levels, so [0, 1] images are brought to that scale for parity.
    return to_grey(x).to(torch.float32) * 255.0


def farneback(
    prev: torch.Tensor,
    next: torch.Tensor,
    *,
    pyr_scale: float = 0.5,
    levels: int = 3,
    winsize: int = 15,
    iterations: int = 3,
    poly_n: int = 5,
    poly_sigma: float = 1.2,
    gaussian_window: bool = False,
    median: int = 3,
) -> torch.Tensor:
    """Dense optical flow from ``prev`` to ``next`` for a batch of pairs, on their device.

    Args:
        prev, next: ``(N, 1, H, W)`` grey or ``(N, 3, H, W)`` RGB (converted with OpenCV's weights);
            float in [0, 1] or uint8 in 0..255; ``H, W >= 32``; no NaN/Inf.
        pyr_scale, levels, winsize, iterations, poly_n, poly_sigma: as OpenCV's
            ``calcOpticalFlowFarneback`` (``levels`` pyramid levels above the full-resolution one,
            fewer when a level would fall below 32 pixels).
        gaussian_window: OpenCV's ``OPTFLOW_FARNEBACK_GAUSSIAN`` flag (Gaussian instead of box window).
        median: kernel size of a median filter applied to each flow component afterwards
            (0 or 1: none; 3: the authors' 3x3 filter; 5), edge pixels replicated.

    Returns:
        ``(N, 2, H, W)`` float32 on the inputs' device.

    Convention:
        Flow in pixels, channel 0 = dx (along W), channel 1 = dy (along H), sampled at ``prev``'s
        pixels: ``prev(y, x) ≈ next(y + dy, x + dx)`` (OpenCV's convention). Float inputs are
        multiplied by 255 (uint8 inputs are used as they are), so the results equal OpenCV's on the
        same 8-bit images up to float rounding. Not differentiable.
        For dtc's backward warp ``W(A)(p) = A(p − F(p))`` of frame t−1 into frame t, the exact flow
        is ``F = −farneback(frame_t, frame_{t−1})``; the authors used ``farneback(frame_{t−1},
        frame_t)`` directly, a first-order approximation that evaluates the flow at frame t−1's
        pixels instead of frame t's (see :mod:`dtc.flow.providers`, ``direction``).
    """
    _load_core()
    p = _to_opencv_scale(prev, "prev")
    n = _to_opencv_scale(next, "next")
    return torch.ops.dtc.farneback(p, n, float(pyr_scale), int(levels), int(winsize), int(iterations), int(poly_n),
                                   float(poly_sigma), bool(gaussian_window), int(median))


def opencv_cpp_available() -> bool:
    """Whether the compiled core has ``dtc::farneback_opencv`` (it was built with OpenCV C++ found)."""
    import dtc

    return bool(dtc.build_info()["opencv"])


def farneback_opencv(
    prev: torch.Tensor,
    next: torch.Tensor,
    *,
    pyr_scale: float = 0.5,
    levels: int = 3,
    winsize: int = 15,
    iterations: int = 3,
    poly_n: int = 5,
    poly_sigma: float = 1.2,
    gaussian_window: bool = False,
    median: int = 3,
) -> torch.Tensor:
    """OpenCV's own ``calcOpticalFlowFarneback`` (+ ``medianBlur``) for a batch of pairs, in C++.

    Same arguments, input scaling and result as :func:`farneback`, computed by the OpenCV C++
    library dtc was built against: all pairs in one call, parallel over the pairs on the CPU, with
    the GIL released. Inputs on another device are copied to the CPU; the result is returned on
    ``prev``'s device.

    Raises:
        RuntimeError: dtc was built without OpenCV C++ (see :func:`opencv_cpp_available`).

    Convention:
        As :func:`farneback`: ``(N, 2, H, W)`` float32, channel 0 = dx, 1 = dy, in pixels,
        ``prev(y, x) ≈ next(y + dy, x + dx)``.
    """
    _load_core()
    if not opencv_cpp_available():
        raise RuntimeError("farneback_opencv needs dtc built with OpenCV C++ (dtc.build_info()['opencv'] is False); "
                           "install libopencv-dev and rebuild dtc, or use dtc.flow.farneback")
    p = _to_opencv_scale(prev, "prev")
    n = _to_opencv_scale(next, "next")
    flow = torch.ops.dtc.farneback_opencv(p.cpu(), n.cpu(), float(pyr_scale), int(levels), int(winsize),
                                          int(iterations), int(poly_n), float(poly_sigma), bool(gaussian_window),
                                          int(median))
    return flow.to(prev.device)


def reference_preprocess_frame(image: np.ndarray) -> np.ndarray:
    """The authors' flow preprocessing of one frame: ``(H, W, 3)`` RGB float in [0, 1] -> ``(H, W)`` uint8.

    ImageNet normalisation, clip to [0, 1] (docs/method.md §9: only grey levels ≈117–175 survive), grey,
    8-bit, bilateral filter, CLAHE, Gaussian blur; parameters in :data:`REFERENCE_CHAIN`.
    """
    import cv2

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3) (RGB in [0, 1]), got {image.shape}")
    normalised = np.clip((image - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32), 0, 1)
    grey = np.round(cv2.cvtColor(normalised, cv2.COLOR_RGB2GRAY) * 255).astype(np.uint8)
    c = REFERENCE_CHAIN
    grey = cv2.bilateralFilter(grey, c["bilateral_d"], c["bilateral_sigma_color"], c["bilateral_sigma_space"])
    grey = cv2.createCLAHE(clipLimit=c["clahe_clip_limit"], tileGridSize=c["clahe_tile_grid"]).apply(grey)
    return cv2.GaussianBlur(grey, (c["blur_ksize"], c["blur_ksize"]), 0)


def preprocess(images: torch.Tensor, preset: str = "dtc") -> torch.Tensor:
    """Flow input of a batch of frames ``(N, 3, H, W)`` RGB in [0, 1] under a preset.

    Returns ``(N, 1, H, W)``: ``"dtc"`` raw grey in [0, 1], float32, on the input's device (no copy
    off the device); ``"reference"`` the authors' chain (:func:`reference_preprocess_frame`) as
    uint8, computed with OpenCV on the CPU frame by frame and moved back to the input's device.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (N, 3, H, W) (RGB in [0, 1]), got {tuple(images.shape)}")
    if preset == "dtc":
        return to_grey(images)
    frames = images.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).numpy()
    out = np.stack([reference_preprocess_frame(f) for f in frames])[:, None]
    return torch.from_numpy(out).to(images.device)
