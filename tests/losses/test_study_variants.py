"""The stage-2 variants of the event study: binarised pseudo-labels and the structure confidence."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dtc import losses
from dtc.losses import functional as LF


def _textured_window(seed=0, B=1, T=2, H=40, W=56):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 1, 1, H // 4, W // 4, generator=g)
    base = torch.nn.functional.interpolate(base[0], size=(H, W), mode="bilinear", align_corners=False)[None]
    return (0.2 + 0.6 * base).expand(B, T, 3, H, W).clone()


def test_structure_images_ignore_a_brightness_offset_but_not_moved_anatomy():
    images = _textured_window()
    brighter = images.clone()
    brighter[:, 1] += 0.15  # an operator gain change: additive on a log-compressed display
    s = LF.structure_images(brighter)
    assert torch.allclose(s[:, 1], s[:, 0], atol=1e-5)
    assert (brighter[:, 1] - brighter[:, 0]).abs().mean() > 0.1
    moved = images.clone()
    moved[:, 1] = torch.roll(images[:, 0], shifts=5, dims=-1)  # anatomy moved where no flow says so
    s = LF.structure_images(moved)
    assert (s[:, 1] - s[:, 0]).abs().mean() > 1e-3


def test_structure_images_match_a_float64_composition():
    images = _textured_window(seed=3)
    got = LF.structure_images(images, fine=1.0, coarse=3.0)

    def blur(x, sigma):
        r = int(torch.ceil(torch.tensor(3.0 * sigma)))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
        k = k / k.sum()
        x = torch.nn.functional.pad(x, (r, r, r, r), mode="replicate")
        return torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))

    flat = images.double().flatten(0, 2).unsqueeze(1)
    want = (0.5 + blur(flat, 1.0) - blur(flat, 3.0)).clamp(0, 1).view_as(images)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fine, coarse", [(2.0, 2.0), (0.0, 3.0), (4.0, 1.0)])
def test_structure_images_refuse_bad_scales(fine, coarse):
    with pytest.raises(ValueError, match="fine"):
        LF.structure_images(_textured_window(), fine=fine, coarse=coarse)


def test_structure_confidence_keeps_the_weight_through_a_gain_change():
    images = _textured_window(T=2)
    images[:, 1] += 0.15
    logits = torch.zeros(1, 2, 1, *images.shape[-2:])
    flows = torch.zeros(1, 2, 2, *images.shape[-2:])
    weights = {}
    for name in ("intensity", "structure"):
        objective = losses.DTCObjective("dtc", ablation="seg+kd+con", confidence_input=name, warped_target="hard")
        imgs = LF.structure_images(images) if name == "structure" else images
        _, maps = LF.temporal_consistency(logits, imgs, flows, return_maps=True)
        weights[name] = float(maps["confidence"].mean())
        total, terms = objective(logits, None, None, logits, torch.full_like(logits, 0.5), images, flows)
        # P = 0.5 everywhere, hard target 0: L_con = 1 - 0.5 mean(M)
        assert float(terms["con"]) == pytest.approx(1 - 0.5 * weights[name], abs=1e-5)
    assert weights["intensity"] < 0.2 and weights["structure"] > 0.99


class _Constant(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.logit = torch.logit(torch.tensor(p))

    def forward(self, x):
        return self.logit.expand(x.shape[0], 1, *x.shape[-2:]).clone()


@pytest.mark.parametrize("p, want", [(0.7, 1.0), (0.3, 0.0)])
def test_binarised_pseudo_labels_are_hard(p, want):
    x = torch.rand(2, 3, 8, 12)
    soft = losses.DTCObjective("dtc", pseudo_source="student").pseudo_labels(_Constant(p), None, x)
    assert torch.allclose(soft, torch.full_like(soft, p))
    hard = losses.DTCObjective("dtc", pseudo_source="student", pseudo_binarise=True).pseudo_labels(_Constant(p), None, x)
    assert torch.equal(hard, torch.full_like(hard, want))
    hard = losses.DTCObjective("dtc", pseudo_binarise=True).pseudo_labels(None, _Constant(p), x)  # the teacher's
    assert torch.equal(hard, torch.full_like(hard, want))


@pytest.mark.parametrize("key, value, match", [("confidence_input", "edges", "confidence_input"),
                                               ("pseudo_binarise", "yes", "pseudo_binarise")])
def test_bad_variant_settings_are_refused(key, value, match):
    with pytest.raises(ValueError, match=match):
        losses.DTCLossConfig.from_preset("dtc", **{key: value})
