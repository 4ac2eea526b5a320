"""Target-guided feature distillation over the deepest encoder levels (docs/v2i.md).

:class:`FeatureAdapters` holds the training-only 1×1 adapters ``A_l`` (identity when the student's and
the teacher's widths match, Kaiming otherwise); :func:`tfd_loss` averages :func:`dtc.ops.tfd_loss` over
the levels with soft masks from :func:`dtc.distill.soft_foreground`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["FeatureAdapters", "tfd_loss"]


class FeatureAdapters(nn.Module):
    """One 1×1 convolution per level mapping the student's ``C^S_l`` channels to the teacher's ``C_l``."""

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]):
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError(f"FeatureAdapters: {len(student_channels)} student levels but {len(teacher_channels)} "
                             "teacher levels")
        self.adapters = nn.ModuleList()
        for cs, ct in zip(student_channels, teacher_channels):
            conv = nn.Conv2d(int(cs), int(ct), 1)
            nn.init.zeros_(conv.bias)
            if cs == ct:
                # identity: stage S2 starts with the student's features compared as they are
                with torch.no_grad():
                    conv.weight.copy_(torch.eye(int(cs)).view(int(cs), int(cs), 1, 1))
            else:
                nn.init.kaiming_normal_(conv.weight)
            self.adapters.append(conv)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.adapters):
            raise ValueError(f"FeatureAdapters: expected {len(self.adapters)} levels, got {len(features)}")
        return [a(f) for a, f in zip(self.adapters, features)]


def tfd_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], *,
             alpha_fg: float = 1.0, alpha_bg: float = 0.5, norm: str = "pixel_ln",
             attn_weight: bool = False) -> torch.Tensor:
    """``L_TFD = mean over levels of dtc.ops.tfd_loss(S_l, sg(T_l), M_l)`` (each already a mean over samples).

    ``student`` are the adapted student levels, ``teacher`` the clip teacher's enhanced levels and
    ``masks`` the soft masks ``(B, 1, H_l, W_l)`` of the same levels.
    """
    from dtc import ops

    if not (len(student) == len(teacher) == len(masks)) or not student:
        raise ValueError(f"tfd_loss: student, teacher and masks must list the same levels, got {len(student)}, "
                         f"{len(teacher)}, {len(masks)}")
    losses = [ops.tfd_loss(s, t.detach().to(s.dtype), m.to(device=s.device, dtype=torch.float32), alpha_fg=alpha_fg,
                           alpha_bg=alpha_bg, norm=norm, attn_weight=attn_weight)
              for s, t, m in zip(student, teacher, masks)]
    return torch.stack(losses).mean()
