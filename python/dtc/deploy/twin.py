"""A pure-PyTorch twin of the C++ real-time student, for the exporters.

``torch.export`` and the ONNX exporter trace Python/ATen code; they cannot see into the C++ forward of
:class:`dtc.models.RealtimeStudent`. The twin has the same parameter names, so it loads the student's
``state_dict`` unchanged, and the same ops in the same order; every export is verified against the C++
network on a probe frame (``dtc.deploy.export``), so a drift between the two cannot go unnoticed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dtc.deploy.preprocess import Preprocessing

__all__ = ["StudentTwin", "ExportedModel"]


class _ConvBnAct(nn.Module):
    def __init__(self, cin, cout, k, stride=1, groups=1, relu=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = relu

    def forward(self, x):
        y = self.bn(self.conv(x))
        return F.relu(y) if self.relu else y


class _Separable(nn.Module):
    def __init__(self, cin, cout, stride=1, expand=1):
        super().__init__()
        mid = cin * expand
        if expand > 1:
            self.expand = _ConvBnAct(cin, mid, 1)
        self.depthwise = _ConvBnAct(mid, mid, 3, stride, groups=mid)
        self.project = _ConvBnAct(mid, cout, 1, relu=expand == 1)
        self.residual = expand > 1 and stride == 1 and cin == cout
        self.has_expand = expand > 1

    def forward(self, x):
        y = self.expand(x) if self.has_expand else x
        y = self.project(self.depthwise(y))
        return y + x if self.residual else y


def _up2(x):
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class StudentTwin(nn.Module):
    """``RealtimeStudent(in_channels, base)`` in plain PyTorch; ``forward`` returns the logits only."""

    def __init__(self, in_channels: int = 3, base: int = 16):
        super().__init__()
        c = [base, 2 * base, 3 * base, 6 * base, 8 * base]
        self.stem = _ConvBnAct(in_channels, c[0], 3, 2)
        for s, extra in enumerate((1, 2, 2)):
            blocks = [_Separable(c[s], c[s + 1], 2, 1)] + [_Separable(c[s + 1], c[s + 1], 1, 4) for _ in range(extra)]
            setattr(self, f"stage{s + 1}", nn.Sequential(*blocks))
        self.bottleneck = nn.Sequential(_Separable(c[3], c[4], 1, 4), _Separable(c[4], c[4], 1, 4))
        self.context = nn.Conv2d(c[4], c[4], 1, bias=True)
        self.dec3 = _Separable(c[4] + c[2], c[2])
        self.dec2 = _Separable(c[2] + c[1], c[1])
        self.dec1 = _Separable(c[1] + c[0], c[0])
        self.dec0 = _Separable(c[0] + in_channels, c[0])
        self.head = nn.Conv2d(c[0], 1, 1, bias=True)

    def forward(self, x):
        s0 = self.stem(x)
        s1 = self.stage1(s0)
        s2 = self.stage2(s1)
        g = self.bottleneck(self.stage3(s2))
        g = g * torch.sigmoid(self.context(F.adaptive_avg_pool2d(g, 1)))
        y = self.dec3(torch.cat([_up2(g), s2], 1))
        y = self.dec2(torch.cat([_up2(y), s1], 1))
        y = self.dec1(torch.cat([_up2(y), s0], 1))
        y = self.dec0(torch.cat([_up2(y), x], 1))
        return self.head(y)


class ExportedModel(nn.Module):
    """The contract of every exported dtc model: float32 frames in [0, 1] shaped ``(N, C_in, H, W)``,
    un-normalised, H and W multiples of the size multiple -> probabilities ``(N, 1, H, W)``. The
    normalisation is inside, so the preprocessing travels with the model."""

    def __init__(self, net: nn.Module, pre: Preprocessing):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return torch.sigmoid(self.net((x - self.mean) / self.std))
