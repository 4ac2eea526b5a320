"""Functional metric API: one call per frame, validated inputs, numpy, C++ or torch backend.

Convention:
    ``pred``: (H, W) probability map in [0, 1] (float, or uint8 0..255 which is divided by 255);
    ``gt``: (H, W) binary mask (bool, {0,1} or {0,255}). Torch tensors are accepted (moved to CPU).
    ``backend``: ``"auto"`` uses the compiled core (``dtc._C``) when it is importable and numpy
    otherwise, silently; ``"numpy"`` / ``"cpp"`` force one (``"cpp"`` raises if the core is missing);
    ``"torch"`` runs :mod:`dtc.metrics.torch_backend` on the device of a tensor ``pred`` (CPU for
    arrays). To score a batch where it already lies without leaving the device, use
    :func:`sunseg_frames_torch`.
    SUN-SEG quantities here are computed on ``pred`` as given: the toolbox's per-frame min-max
    normalisation is applied by :func:`dtc.metrics.sunseg.prepare_frame` (and by the metric objects
    when ``normalize="minmax"``), not here.
"""
from __future__ import annotations

import functools

import numpy as np

from dtc.metrics import reference as ref
from dtc.metrics._checks import check_backend, check_pair


@functools.lru_cache(maxsize=None)
def _cpp_module():
    """The compiled core if it is built and carries the metric kernels, else None (never raises)."""
    try:
        from dtc._extension import load

        core = load()
    except Exception:  # not built, or built against another torch: the numpy path serves
        return None
    return core if hasattr(core, "sunseg_frame") else None


def cpp_available() -> bool:
    return _cpp_module() is not None


def resolve_backend(backend: str | None) -> str:
    """``"auto"`` -> ``"cpp"`` or ``"numpy"``; other names are checked and returned."""
    backend = check_backend(backend)
    if backend == "auto":
        return "cpp" if cpp_available() else "numpy"
    if backend == "cpp" and not cpp_available():
        raise ImportError("backend='cpp' needs dtc's compiled core with the metric kernels (dtc._C.sunseg_frame); "
                          "build it with `make dev` or use backend='numpy'")
    return backend


def _sunseg_frame_cpp(pred: np.ndarray, gt: np.ndarray) -> dict:
    import torch

    core = _cpp_module()
    scalars, curves = core.sunseg_frame(torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float64)),
                                        torch.from_numpy(np.ascontiguousarray(gt, dtype=np.uint8)))
    s = scalars.numpy()
    c = curves.numpy()
    out = {name: float(s[i]) for i, name in enumerate(ref.SUNSEG_SCALARS)}
    out.update({name: c[i].copy() for i, name in enumerate(ref.SUNSEG_CURVES)})
    return out


def _sunseg_frame_torch(p: np.ndarray, g: np.ndarray, original_pred) -> dict:
    import torch

    from dtc.metrics import torch_backend

    device = original_pred.device if isinstance(original_pred, torch.Tensor) else torch.device("cpu")
    # check_pair has validated the values already: skip the batch check (and its host read-back).
    batch = torch_backend.sunseg_frames(torch.from_numpy(p)[None].to(device), torch.from_numpy(g)[None].to(device),
                                        check=False)
    return torch_backend.to_records(batch)[0]


def sunseg_frame(pred, gt, backend: str = "auto") -> dict:
    """All SUN-SEG quantities of one frame.

    Returns a dict with scalars ``Smeasure, wFmeasure, MAE, adpEm, adpFm`` and 256-entry curves
    ``Em, Fm, Sen, Spe, Dice, IoU`` (highest threshold first; see :mod:`dtc.metrics.reference`), as
    floats and (256,) float64 arrays whatever the backend.
    """
    backend = resolve_backend(backend)
    p, g = check_pair(pred, gt)
    if backend == "cpp":
        return _sunseg_frame_cpp(p, g)
    if backend == "torch":
        return _sunseg_frame_torch(p, g, pred)
    return ref.sunseg_frame(p, g)


def sunseg_frames_torch(pred, gt, check: bool = True) -> dict:
    """All SUN-SEG quantities of a batch of prepared frames, computed on the batch's device.

    ``pred``: (N, H, W) probabilities in [0, 1]; ``gt``: (N, H, W) bool mask on the same device.
    Returns (N,) float64 tensors for the scalars and (N, 256) for the curves, on that device; see
    :func:`dtc.metrics.torch_backend.sunseg_frames` (``check=False`` skips the value checks and their
    host synchronisation) and :func:`dtc.metrics.torch_backend.to_records` for per-frame records.
    """
    from dtc.metrics import torch_backend

    return torch_backend.sunseg_frames(pred, gt, check=check)


def s_measure(pred, gt, alpha: float = 0.5, backend: str = "auto") -> float:
    """Structure measure S_alpha (Fan et al. 2017)."""
    if alpha != 0.5:
        p, g = check_pair(pred, gt)
        return ref.s_measure(p, g, alpha)
    return sunseg_frame(pred, gt, backend)["Smeasure"]


def mean_e_measure(pred, gt, backend: str = "auto") -> float:
    """E-measure averaged over the 256 thresholds of uint8(255 * pred) (Fan et al. 2018)."""
    return float(sunseg_frame(pred, gt, backend)["Em"].mean())


def weighted_f_measure(pred, gt, backend: str = "auto") -> float:
    """Weighted F-measure, beta^2 = 1 (Margolin et al. 2014)."""
    return sunseg_frame(pred, gt, backend)["wFmeasure"]


def mean_f_measure(pred, gt, backend: str = "auto") -> float:
    """F-measure (beta^2 = 0.3) averaged over the 256 thresholds of uint8(255 * pred)."""
    return float(sunseg_frame(pred, gt, backend)["Fm"].mean())


def mae(pred, gt) -> float:
    p, g = check_pair(pred, gt)
    return ref.mae(p, g)


def mean_dice(pred, gt, backend: str = "auto") -> float:
    """Dice averaged over thresholds linspace(1, 0, 256), the SUN-SEG 'meanDic'."""
    return float(sunseg_frame(pred, gt, backend)["Dice"].mean())


def mean_sensitivity(pred, gt, backend: str = "auto") -> float:
    """Sensitivity averaged over thresholds linspace(1, 0, 256), the SUN-SEG 'meanSen'."""
    return float(sunseg_frame(pred, gt, backend)["Sen"].mean())


def binary_metrics(pred, gt, threshold: float = 0.5) -> dict[str, float]:
    """IoU, Dice, sensitivity, precision, specificity, accuracy, F1 of ``pred > threshold``."""
    p, g = check_pair(pred, gt)
    return ref.binary_metrics(p, g, threshold)


def hd95_assd(pred, gt, threshold: float = 0.5, spacing=(1.0, 1.0)) -> tuple[float, float]:
    """(HD95, ASSD) of ``pred > threshold``; in pixels, or in the units of ``spacing`` (row, col)."""
    p, g = check_pair(pred, gt)
    if len(spacing) != 2 or min(spacing) <= 0:
        raise ValueError(f"spacing must be two positive pixel sizes (row, col), got {spacing!r}")
    return ref.hd95_assd(p, g, threshold, tuple(float(s) for s in spacing))
