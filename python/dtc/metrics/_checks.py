"""Argument checks shared by every metric entry point: errors name the argument and the expectation."""
from __future__ import annotations

import numpy as np


def as_array(x, name: str) -> np.ndarray:
    """Convert numpy arrays, torch tensors and nested sequences to a numpy array (no copy when possible)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name} must be an array-like, got {type(x).__name__}") from exc
    if arr.dtype == object:
        raise TypeError(f"{name} must be a numeric array, got dtype object")
    return arr


def check_prob_map(pred, name: str = "pred", ndim: int = 2) -> np.ndarray:
    """A probability map: finite values in [0, 1], float64 out (uint8 maps are divided by 255)."""
    arr = as_array(pred, name)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array ({'H, W' if ndim == 2 else 'T, H, W'}), "
                         f"got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(arr.shape)}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if arr.dtype == bool:
        return arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values ({int(np.sum(~np.isfinite(arr)))} of "
                         f"{arr.size}); expected probabilities in [0, 1]")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} must hold probabilities in [0, 1], got values in [{lo:g}, {hi:g}] "
                         "(apply a sigmoid to logits; divide 8-bit maps by 255)")
    return arr


def check_mask(gt, name: str = "gt", ndim: int = 2) -> np.ndarray:
    """A binary mask: bool, {0,1} or {0,255}; anything else is rejected rather than silently thresholded."""
    arr = as_array(gt, name)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array ({'H, W' if ndim == 2 else 'T, H, W'}), "
                         f"got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(arr.shape)}")
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must be a binary mask (bool or numeric), got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values; expected a binary mask")
    values = np.unique(arr)
    if np.all(np.isin(values, (0, 1))):
        return arr.astype(bool)
    if np.all(np.isin(values, (0, 255))):
        return arr > 127
    shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if values.size > 8 else "")
    raise ValueError(f"{name} must be binary ({{0,1}}, {{0,255}} or bool), got values {{{shown}}}; "
                     "binarise it first (e.g. gt > 128 for 8-bit masks with grey levels)")


def check_pair(pred, gt, pred_name: str = "pred", gt_name: str = "gt") -> tuple[np.ndarray, np.ndarray]:
    p = check_prob_map(pred, pred_name)
    g = check_mask(gt, gt_name)
    if p.shape != g.shape:
        raise ValueError(f"{pred_name} and {gt_name} must have the same (H, W) shape, got {tuple(p.shape)} "
                         f"and {tuple(g.shape)}; resize the prediction to the mask first")
    return p, g


BACKENDS = ("auto", "numpy", "cpp", "torch")


def check_backend(backend: str | None) -> str:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'numpy', 'cpp' or 'torch', got {backend!r}")
    return backend or "auto"
