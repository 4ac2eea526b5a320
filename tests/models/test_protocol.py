"""The model protocol: any nn.Module as teacher/student (logits only, the triple, FeatureTaps)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import dtc.nn
from dtc import models


class TinySegNet(nn.Module):
    """A user model returning logits only."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(16, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        return self.head(self.decoder(self.encoder(x)))


def test_logits_only_model_gets_empty_taps():
    torch.manual_seed(0)
    user = TinySegNet()
    wrapped = models.as_triple(user)
    x = torch.randn(2, 3, 16, 24)
    logits, local, global_ = wrapped(x)
    assert local is None and global_ is None
    assert torch.equal(logits, user(x))
    assert set(wrapped.state_dict()) == {f"model.{k}" for k in user.state_dict()}


def test_triple_models_pass_through():
    net = models.create("student", base=4)
    assert models.as_triple(net) is net
    taps = dtc.nn.FeatureTaps(TinySegNet(), local="decoder", global_="encoder")
    assert models.as_triple(taps) is taps


def test_feature_taps_return_the_named_layers_outputs():
    torch.manual_seed(0)
    user = TinySegNet()
    taps = dtc.nn.FeatureTaps(user, local="decoder.2", global_="encoder")
    x = torch.randn(2, 3, 16, 24)
    logits, local, global_ = taps(x)
    with torch.no_grad():
        enc = user.encoder(x)
        dec = user.decoder(enc)
    torch.testing.assert_close(global_, enc)
    torch.testing.assert_close(local, dec)
    torch.testing.assert_close(logits, user.head(dec))
    assert local.requires_grad  # the taps are differentiable
    # Only one tap.
    logits2, local2, global2 = dtc.nn.FeatureTaps(user, global_="encoder.4")(x)
    assert local2 is None and global2.shape == (2, 16, 8, 12)


def test_feature_taps_copies_tap_their_own_model():
    torch.manual_seed(0)
    taps = dtc.nn.FeatureTaps(TinySegNet(), local="decoder", global_="encoder")
    clone = copy.deepcopy(taps)
    with torch.no_grad():
        for p in clone.parameters():
            p.mul_(2.0)
    x = torch.randn(1, 3, 16, 16)
    _, local, global_ = clone(x)
    with torch.no_grad():
        torch.testing.assert_close(global_, clone.model.encoder(x))
        torch.testing.assert_close(local, clone.model.decoder(clone.model.encoder(x)))
    _, local_orig, _ = taps(x)
    assert not torch.allclose(local_orig, local)


def test_feature_taps_errors():
    user = TinySegNet()
    with pytest.raises(ValueError, match="'decoderr' is not a submodule name.*decoder"):
        dtc.nn.FeatureTaps(user, local="decoderr")
    with pytest.raises(TypeError, match="nn.Module"):
        dtc.nn.FeatureTaps(lambda x: x, local="a")

    class Skipper(TinySegNet):
        def forward(self, x):
            return self.head(torch.zeros(x.shape[0], 8, *x.shape[-2:]))

    with pytest.raises(RuntimeError, match="'encoder' did not run"):
        dtc.nn.FeatureTaps(Skipper(), global_="encoder")(torch.randn(1, 3, 8, 8))
    taps = dtc.nn.FeatureTaps(user, local="decoder")
    assert taps.remove() is user and not user.decoder._forward_hooks


def test_normalize_output_checks_the_protocol():
    x = torch.randn(2, 3, 8, 8)
    logits = torch.randn(2, 1, 8, 8)
    assert models.normalize_output(logits, x) == (logits, None, None)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\) = \(2, 1, 8, 8\)"):
        models.normalize_output(torch.randn(2, 2, 8, 8), x)
    with pytest.raises(TypeError, match="logits or \\(logits, local, global\\)"):
        models.normalize_output({"out": logits}, x)
    with pytest.raises(TypeError, match="local tap must be None or a 4-D tensor"):
        models.normalize_output((logits, torch.randn(2, 4), None), x)
