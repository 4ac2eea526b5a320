"""dtc: distilled temporal coherence for real-time ultrasound video segmentation.

The compiled core (``dtc._C``) is loaded on first use of anything that needs it, so pure-Python
parts (data simulation, metrics references, configs) import without a built extension.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY_SUBMODULES = {
    "ops", "nn", "losses", "models", "data", "metrics", "flow", "engine", "experiments", "bench", "cli", "io",
}


def build_info() -> dict:
    """What the compiled core was built with: torch/CUDA versions, backends, CUDA archs, OpenCV."""
    from dtc._extension import load

    return dict(load().build_info())


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"dtc.{name}")
    raise AttributeError(f"module 'dtc' has no attribute {name!r}")
