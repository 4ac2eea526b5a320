"""Dense optical flow for training and inspection.

- :func:`farneback`: Farnebäck flow (OpenCV's algorithm) on batched tensors, CPU or CUDA.
- :func:`farneback_opencv`: OpenCV's own implementation, batched in C++ (when built with OpenCV C++).
- :func:`preprocess`: the flow input of the two presets (``"dtc"``: raw grey in [0, 1];
  ``"reference"``: the authors' normalise/clip/bilateral/CLAHE/blur chain).
- :func:`forward_backward_consistency`: occlusion mask from a forward and a backward flow.
- :func:`flow_to_rgb`, :func:`plot_flow_arrows`: pictures for notebooks.
- Flow providers for the training step (:mod:`dtc.flow.providers`).

Convention: flow in pixels, channel 0 = dx, channel 1 = dy. :func:`farneback` returns OpenCV's
``prev(y, x) ≈ next(y + dy, x + dx)``; providers return what the losses' backward warp expects
(see :mod:`dtc.flow.providers` for the authors' first-order approximation). Importing this package
does not load the compiled core; the first :func:`farneback` call does.
"""
from __future__ import annotations

from dtc.flow.farneback import (
    FARNEBACK_DEFAULTS,
    PRESETS,
    farneback,
    farneback_opencv,
    opencv_cpp_available,
    preprocess,
    reference_preprocess_frame,
    to_grey,
)
from dtc.flow.occlusion import forward_backward_consistency, sample_flow
from dtc.flow.providers import (
    CachedFlow,
    FarnebackFlow,
    FlowProvider,
    GroundTruthFlow,
    OpenCVFlow,
    make_flow_provider,
)
from dtc.flow.visualise import colour_wheel, flow_to_rgb, plot_flow_arrows

__all__ = [
    "farneback", "farneback_opencv", "opencv_cpp_available", "preprocess", "reference_preprocess_frame", "to_grey", "FARNEBACK_DEFAULTS", "PRESETS",
    "forward_backward_consistency", "sample_flow", "colour_wheel", "flow_to_rgb", "plot_flow_arrows",
    "FlowProvider", "GroundTruthFlow", "FarnebackFlow", "OpenCVFlow", "CachedFlow", "make_flow_provider",
]
