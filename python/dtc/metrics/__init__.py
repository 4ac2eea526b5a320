"""Evaluation metrics: the SUN-SEG suite, threshold metrics, surface distances and temporal stability.

- :mod:`dtc.metrics.reference`: plain-numpy reference of every frame metric (test oracle, fallback).
- :mod:`dtc.metrics.functional`: validated per-frame functions, ``backend="auto"|"numpy"|"cpp"|"torch"``;
  :func:`sunseg_frames_torch` scores a batch where its tensors are (CPU or CUDA).
- :mod:`dtc.metrics.torch_backend`: the SUN-SEG frame suite as batched tensor ops (any device).
- :mod:`dtc.metrics.objects`: MONAI-style accumulators (``__call__``, ``aggregate()``, ``reset()``).
- :mod:`dtc.metrics.sunseg`: the SUN-SEG toolbox protocol (per-case averaging, dropped end frames).
- :mod:`dtc.metrics.temporal`: TC, flow-warped TC, warping IoU, warping error, flicker, worst frame,
  event/calm split.
- :mod:`dtc.metrics.evaluate`: :func:`evaluate_predictions` (tables, CSV, plots).

Importing this package never loads the compiled core; the C++ kernels are used on first call when
``dtc._C`` is importable.
"""
from dtc.metrics.evaluate import EvaluationResult, evaluate_predictions
from dtc.metrics.functional import (binary_metrics, cpp_available, hd95_assd, mae, mean_dice, mean_e_measure,
                                    mean_f_measure, mean_sensitivity, s_measure, sunseg_frame, sunseg_frames_torch,
                                    weighted_f_measure)
from dtc.metrics.objects import BinaryMetric, SUNSegMetric, TemporalMetric
from dtc.metrics.temporal import (area_flicker, dice_flicker, event_split, flow_temporal_consistency, occlusion_mask,
                                  temporal_consistency, warping_error, warping_iou, worst_frame)

__all__ = [
    "EvaluationResult", "evaluate_predictions", "binary_metrics", "cpp_available", "hd95_assd", "mae", "mean_dice",
    "mean_e_measure", "mean_f_measure", "mean_sensitivity", "s_measure", "sunseg_frame", "sunseg_frames_torch",
    "weighted_f_measure",
    "BinaryMetric", "SUNSegMetric", "TemporalMetric", "area_flicker", "dice_flicker", "flow_temporal_consistency",
    "occlusion_mask", "temporal_consistency", "warping_error", "warping_iou", "event_split", "worst_frame",
]
