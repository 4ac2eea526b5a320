"""The feature-pyramid protocol: features(x) -> encoder levels and decode(x, features) -> the triple, for
dtc's C++ nets and for a user's net through FeatureTaps(features=[...]) (docs/v2i.md)."""
from __future__ import annotations

import pytest
import torch

from dtc import models
from dtc.engine import ConfigError, load_config
from tests.models.user_unet import build_unet

NETS = [("unet", {"base": 4}, [1, 2, 4, 8, 16], 32), ("unetpp", {"width": 4, "decoder_width": 4}, [2, 4, 8, 16, 32], 64),
        ("student", {"base": 4}, [2, 4, 8, 16], 32)]


def _x(size, n=2):
    return torch.rand(n, 3, size, size + 16 * (size // 32), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name,kwargs,strides,size", NETS)
def test_cpp_net_levels_have_the_documented_strides_and_channels(name, kwargs, strides, size):
    net = models.create(name, **kwargs).eval()
    x = _x(size)
    assert net.feature_strides == strides
    feats = net.features(x)
    assert len(feats) == len(strides) == len(net.feature_channels)
    for f, s, c in zip(feats, strides, net.feature_channels):
        assert tuple(f.shape) == (2, c, x.shape[2] // s, x.shape[3] // s)


@pytest.mark.parametrize("name,kwargs,strides,size", NETS)
def test_decode_of_own_features_is_forward_exactly(name, kwargs, strides, size):
    net = models.create(name, **kwargs).eval()
    x = _x(size)
    with torch.no_grad():
        expected = net(x)
        got = net.decode(x, net.features(x))
    for a, b in zip(expected, got):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name,kwargs,strides,size", NETS)
def test_decode_uses_the_given_features_and_passes_gradients_to_them(name, kwargs, strides, size):
    net = models.create(name, **kwargs).train()
    x = _x(size)
    feats = [f.detach().requires_grad_(True) for f in net.features(x)]
    logits, _, global_ = net.decode(x, feats)
    logits.sum().backward()
    deepest = feats[-1]
    assert deepest.grad is not None and deepest.grad.abs().sum() > 0
    with torch.no_grad():
        changed = [f.clone() for f in feats]
        changed[-1] += 1.0
        assert not torch.equal(net.decode(x, changed)[0], net.decode(x, [f.clone() for f in feats])[0])


@pytest.mark.parametrize("name,kwargs,strides,size", NETS)
def test_decode_refuses_wrong_levels(name, kwargs, strides, size):
    net = models.create(name, **kwargs).eval()
    x = _x(size)
    feats = net.features(x)
    with pytest.raises(ValueError, match="encoder levels"):
        net.decode(x, feats[:-1])
    bad = list(feats)
    bad[1] = bad[1][:, :1]
    with pytest.raises(ValueError, match=r"features\[1\]"):
        net.decode(x, bad)


def _user(features=("encoder.0", "encoder.1", "bottleneck"), **taps):
    torch.manual_seed(0)
    return models.FeatureTaps(build_unet(width=4), features=list(features), **taps).eval()


def test_user_net_features_are_the_named_layers_outputs():
    net = _user()
    x = _x(32)
    feats = net.features(x)
    assert [tuple(f.shape) for f in feats] == [(2, 4, 32, 48), (2, 8, 16, 24), (2, 16, 8, 12)]
    with torch.no_grad():
        assert torch.equal(net.decode(x, net.features(x))[0], net(x)[0])


def test_user_net_decode_replaces_the_layers_and_the_tap_sees_the_replacement():
    net = _user(global_="bottleneck")
    x = _x(32)
    with torch.no_grad():
        feats = net.features(x)
        logits, _, tapped = net.decode(x, [feats[0], feats[1], torch.zeros_like(feats[2])])
        assert torch.equal(tapped, torch.zeros_like(feats[2]))
        assert not torch.equal(logits, net(x)[0])
        # the hooks are off again after decode: forward is the plain model
        assert torch.equal(net(x)[0], net.model(x))


def test_user_net_bad_feature_names_and_counts():
    with pytest.raises(ValueError, match=r"features\[1\]='nope'"):
        _user(features=("encoder.0", "nope"))
    with pytest.raises(ValueError, match="twice"):
        _user(features=("encoder.0", "encoder.0"))
    with pytest.raises(TypeError, match="list of submodule names"):
        models.FeatureTaps(build_unet(width=4), features="encoder.0")
    net = _user()
    with pytest.raises(ValueError, match="must hold 3 tensors"):
        net.decode(_x(32), [torch.zeros(1)])
    feats = net.features(_x(32))
    with pytest.raises(ValueError, match="replacement for 'bottleneck'"):
        net.decode(_x(32), feats[:2] + [feats[2][:, :3]])
    plain = models.FeatureTaps(build_unet(width=4), local="decoder.1")
    with pytest.raises(ValueError, match="no encoder levels were named"):
        plain.features(_x(32))


def test_build_and_checkpoint_carry_feature_taps(tmp_path):
    taps = {"global": "bottleneck", "features": ["encoder.1", "bottleneck"]}
    net = models.build("tests.models.user_unet:build_unet", {"width": 4}, taps)
    assert net.feature_names == ["encoder.1", "bottleneck"]
    path = models.save_checkpoint(tmp_path / "m.pt", net, name="tests.models.user_unet:build_unet", kwargs={"width": 4})
    again, meta = models.load_checkpoint(path)
    assert again.feature_names == ["encoder.1", "bottleneck"] and meta["taps"]["features"] == taps["features"]
    with pytest.raises(ValueError, match="feature\\s+pyramid|feature pyramid"):
        models.build("unet", {"base": 4}, {"features": ["enc0"]})


def test_config_checks_feature_taps(tmp_path):
    cfg = load_config(None, ["model.name=tests.models.user_unet:build_unet", "model.taps.features=[encoder.1, bottleneck]"])
    cfg.validate_model()
    bad = load_config(None, ["model.name=tests.models.user_unet:build_unet", "model.taps.features=bottleneck"])
    with pytest.raises(ConfigError, match="model.taps.features"):
        bad.validate_model()
