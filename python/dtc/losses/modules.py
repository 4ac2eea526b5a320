"""``nn.Module`` twins of :mod:`dtc.losses.functional` (same conventions; options fixed at construction)."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from dtc.losses import functional as LF

__all__ = ["BCEDiceLoss", "KDLoss", "TemporalConsistencyLoss", "PrototypeAlignmentLoss"]


class BCEDiceLoss(nn.Module):
    """:func:`dtc.losses.bce_dice` as a module: ``forward(logits, target)``."""

    def __init__(self, smooth: float = 1e-5, check: bool = True, impl: str = "fused"):
        super().__init__()
        self.smooth, self.check, self.impl = smooth, check, impl

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.bce_dice(logits, target, smooth=self.smooth, check=self.check, impl=self.impl)

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}, impl={self.impl!r}"


class KDLoss(nn.Module):
    """:func:`dtc.losses.kd_loss` as a module: ``forward(student_logits, teacher_logits)``."""

    def __init__(self, tau: float = 4.0, impl: str = "fused"):
        super().__init__()
        if not tau > 0:
            raise ValueError(f"KDLoss: tau must be > 0, got {tau}")
        self.tau, self.impl = tau, impl

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return LF.kd_loss(student_logits, teacher_logits, self.tau, impl=self.impl)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, impl={self.impl!r}"


class TemporalConsistencyLoss(nn.Module):
    """:func:`dtc.losses.temporal_consistency` as a module: ``forward(logits, images, flows, flows_backward=None)``."""

    def __init__(self, alpha: float = 13.3, confidence: str = "mean_abs", channel_scale=None,
                 warped_target: str = "hard", normalise: bool = False, return_maps: bool = False,
                 impl: str = "fused"):
        super().__init__()
        if confidence not in ("abs_sum", "mean_abs"):
            raise ValueError(f"TemporalConsistencyLoss: confidence must be 'abs_sum' or 'mean_abs', got {confidence!r}")
        if warped_target not in ("hard", "soft"):
            raise ValueError(f"TemporalConsistencyLoss: warped_target must be 'hard' or 'soft', got {warped_target!r}")
        self.alpha, self.confidence, self.channel_scale = alpha, confidence, channel_scale
        self.warped_target, self.normalise, self.return_maps, self.impl = warped_target, normalise, return_maps, impl

    def forward(self, logits, images, flows, flows_backward: Optional[torch.Tensor] = None):
        return LF.temporal_consistency(
            logits, images, flows, flows_backward=flows_backward, alpha=self.alpha, confidence=self.confidence,
            channel_scale=self.channel_scale, warped_target=self.warped_target, normalise=self.normalise,
            return_maps=self.return_maps, impl=self.impl)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, confidence={self.confidence!r}, warped_target={self.warped_target!r}, "
                f"normalise={self.normalise}, impl={self.impl!r}")


class PrototypeAlignmentLoss(nn.Module):
    """:func:`dtc.losses.prototype_alignment` as a module: ``forward(probs, local, global_, flows)``."""

    def __init__(self, threshold: Union[str, float] = 0.5, rescale_flow: bool = True, scales: str = "both",
                 warped_target: str = "soft", check: bool = True, impl: str = "fused"):
        super().__init__()
        if scales not in ("both", "local", "global"):
            raise ValueError(f"PrototypeAlignmentLoss: scales must be 'both', 'local' or 'global', got {scales!r}")
        if warped_target not in ("hard", "soft"):
            raise ValueError(f"PrototypeAlignmentLoss: warped_target must be 'hard' or 'soft', got {warped_target!r}")
        self.threshold, self.rescale_flow, self.scales, self.check, self.impl = threshold, rescale_flow, scales, check, impl
        self.warped_target = warped_target

    def forward(self, probs, local, global_, flows):
        return LF.prototype_alignment(probs, local, global_, flows, threshold=self.threshold,
                                      rescale_flow=self.rescale_flow, scales=self.scales,
                                      warped_target=self.warped_target, check=self.check, impl=self.impl)

    def extra_repr(self) -> str:
        return (f"threshold={self.threshold!r}, rescale_flow={self.rescale_flow}, scales={self.scales!r}, "
                f"warped_target={self.warped_target!r}, impl={self.impl!r}")
