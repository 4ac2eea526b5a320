"""The stage-2 training signals of docs/method.md §2: functional forms, module twins and the full objective.

Importing this package does not load the compiled core; the fused ops load it on first call.
"""
from __future__ import annotations

from dtc.losses.config import ABLATIONS, PRESETS, TERMS, DTCLossConfig
from dtc.losses.functional import (
    bce_dice,
    foreground_threshold,
    kd_loss,
    masked_average_pool,
    prototype_alignment,
    temporal_consistency,
)
from dtc.losses.modules import BCEDiceLoss, KDLoss, PrototypeAlignmentLoss, TemporalConsistencyLoss
from dtc.losses.objective import DTCObjective
from dtc.losses.pseudo import flip_pseudo_labels

__all__ = [
    "DTCLossConfig", "PRESETS", "TERMS", "ABLATIONS", "DTCObjective", "flip_pseudo_labels",
    "bce_dice", "kd_loss", "foreground_threshold", "temporal_consistency", "prototype_alignment",
    "masked_average_pool", "BCEDiceLoss", "KDLoss", "TemporalConsistencyLoss", "PrototypeAlignmentLoss",
]
