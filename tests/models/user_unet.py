"""A researcher's own small U-Net, written without dtc: plain PyTorch, returns logits only.

Tests name it by import path (``model.name=tests.models.user_unet:build_unet``) to check that dtc
trains networks it has never seen, with or without feature taps.
"""
from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyUNet(nn.Module):
    def __init__(self, in_channels: int = 3, width: int = 8, depth: int = 2):
        super().__init__()
        widths = [width * 2 ** i for i in range(depth + 1)]
        self.encoder = nn.ModuleList(_block(c_in, c_out) for c_in, c_out in zip([in_channels] + widths[:-2], widths[:-1]))
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _block(widths[-2], widths[-1])
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth)))
        self.decoder = nn.ModuleList(_block(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.up, self.decoder, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def build_unet(width: int = 8, depth: int = 2, in_channels: int = 3) -> TinyUNet:
    return TinyUNet(in_channels=in_channels, width=width, depth=depth)
