"""dtc: distilled temporal coherence for real-time ultrasound video segmentation.

The compiled core (``dtc._C``) is loaded on first use of anything that needs it, so pure-Python
parts (data simulation, metrics references, configs) import without a built extension.
"""
from __future__ import annotations

import importlib
import importlib.abc
import sys

__version__ = "0.1.0"


class _OpenCVHint(importlib.abc.MetaPathFinder):
    """Last finder on ``sys.meta_path``: reached only when no OpenCV Python package is installed.

    dtc does not depend on one (a user's opencv-python and dtc's opencv-python-headless would overwrite
    each other's cv2), so the missing module gets an error that says how to add one.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "cv2":
            raise ModuleNotFoundError(
                "dtc needs OpenCV's Python module cv2, and none is installed: install one of opencv-python, "
                "opencv-contrib-python or opencv-python-headless, e.g. `pip install 'dtc[opencv]'`", name="cv2")
        return None


if not any(isinstance(finder, _OpenCVHint) for finder in sys.meta_path):
    sys.meta_path.append(_OpenCVHint())

_LAZY_SUBMODULES = {
    "ops", "nn", "losses", "models", "data", "metrics", "flow", "engine", "experiments", "bench", "cli", "io", "deploy",
    "volume",
}


def build_info() -> dict:
    """What the compiled core was built with: torch/CUDA versions, backends, CUDA archs, OpenCV."""
    from dtc._extension import load

    return dict(load().build_info())


def cuda_arch_supported(capability: tuple[int, int], archs: str | None = None) -> bool:
    """Whether a GPU of compute ``capability`` (major, minor) can run the core's CUDA kernels.

    ``archs`` is ``build_info()["cuda_archs"]`` (CMake syntax, comma-separated: ``"90"`` is sm_90 code
    plus compute_90 PTX, ``"80-real"`` code only, ``"86-virtual"`` PTX only). Machine code runs on the
    same major version with an equal or higher minor; PTX is compiled for any equal or newer GPU.
    """
    if archs is None:
        archs = build_info()["cuda_archs"]
    device = capability[0] * 10 + capability[1]
    for entry in filter(None, (a.strip() for a in archs.split(","))):
        number, _, kind = entry.partition("-")
        if not number.isdigit():
            continue
        arch = int(number)
        if kind != "virtual" and arch // 10 == capability[0] and arch <= device:
            return True
        if kind != "real" and arch <= device:
            return True
    return False


def __getattr__(name: str):
    if name == "Segmenter":  # the deployable predictor, dtc.deploy.Segmenter
        return importlib.import_module("dtc.deploy").Segmenter
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"dtc.{name}")
    raise AttributeError(f"module 'dtc' has no attribute {name!r}")
