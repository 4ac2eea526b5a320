"""Each network's architecture, output shapes and taps, bad input, and the name registry."""
from __future__ import annotations

import pytest
import torch

from dtc import models

# Tiny widths keep every forward in milliseconds; the architecture is the same at any width.
TINY = {
    "unet": dict(base=8),
    "unetpp": dict(width=8, decoder_width=8),
    "student": dict(base=8),
}


def _expected_taps(name, kw, n, h, w):
    """(local, global) shapes as documented per net (nets.h / the class docstrings)."""
    if name == "unet":
        return (n, kw["base"], h, w), (n, 16 * kw["base"], h // 16, w // 16)
    if name == "unetpp":
        return (n, kw["decoder_width"] // 2, h, w), (n, 8 * kw["width"], h // 32, w // 32)
    return (n, kw["base"], h, w), (n, 8 * kw["base"], h // 16, w // 16)


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("hw", [(64, 96), (32, 64)])
def test_output_shapes_and_taps(name, hw):
    torch.manual_seed(0)
    net = models.create(name, **TINY[name])
    x = torch.randn(2, 3, *hw)
    logits, local, global_ = net(x)
    local_shape, global_shape = _expected_taps(name, TINY[name], 2, *hw)
    assert logits.shape == (2, 1, *hw)
    assert local.shape == local_shape
    assert global_.shape == global_shape
    assert net.tap_channels == {"local": local_shape[1], "global": global_shape[1]}
    for t in (logits, local, global_):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    # ReLU-activated taps: the decoder map and (for the U-Net) the bottleneck are non-negative.
    assert (local >= 0).all()
    # Every parameter takes part in the output: a gradient reaches each one.
    (logits.square().mean() + local.mean() + global_.mean()).backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert unused == []


def test_unet_matches_the_classic_layout():
    """The parameter count of docs/method.md §3's U-Net, derived from the layout, not from the code."""

    def conv_bn(cin, cout, k=3):
        return k * k * cin * cout + 2 * cout  # conv without bias + BN affine

    def double(cin, cout):
        return conv_bn(cin, cout) + conv_bn(cout, cout)

    for base in (8, 64):
        widths = [base * 2**i for i in range(5)]
        expected = double(3, widths[0]) + sum(double(widths[i - 1], widths[i]) for i in range(1, 5))
        expected += sum(conv_bn(2 * w, w) + double(2 * w, w) for w in widths[:4])  # up-conv + decoder
        expected += base + 1  # 1x1 head with bias
        net = models.create("unet", base=base)
        assert models.count_parameters(net) == expected
    assert net.tap_channels == {"local": 64, "global": 1024}


def test_student_is_small_and_depthwise():
    net = models.create("student")
    n = models.count_parameters(net)
    assert n <= 2_000_000, f"the real-time student must have <= 2 M parameters, has {n:,}"
    depthwise = [name for name, p in net.named_parameters()
                 if p.dim() == 4 and p.shape[1] == 1 and p.shape[-1] == 3]
    assert len(depthwise) >= 10  # the 3x3 convolutions are depthwise
    full = [name for name, p in net.named_parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] == 3]
    assert full == ["stem.conv.weight"]  # the only dense 3x3 conv reads the image


def test_unetpp_heads_are_mixed_by_softmax_weights():
    torch.manual_seed(1)
    net = models.create("unetpp", **TINY["unetpp"]).eval()
    with torch.no_grad():
        net.head_weights.copy_(torch.tensor([0.3, -1.0, 2.0, 0.5]))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits, local, global_, heads = net.forward_heads(x)
        plain = net(x)
    assert len(heads) == 4 and all(h.shape == (1, 1, 64, 64) for h in heads)
    mix = torch.softmax(torch.tensor([0.3, -1.0, 2.0, 0.5]), 0)
    torch.testing.assert_close(logits, sum(m * h for m, h in zip(mix, heads)))
    torch.testing.assert_close(plain[0], logits)
    # The heads are distinct predictions (different depths), not copies.
    assert not torch.allclose(heads[0], heads[3])
    # The mixture weights learn.
    net.train()
    net(x)[0].mean().backward()
    assert net.head_weights.grad is not None and net.head_weights.grad.abs().sum() > 0


def _torchvision_resnet34_state_dict(generator):
    """Keys and shapes of torchvision.models.resnet34().state_dict(), written from the ResNet paper's
    layout (blocks 3-4-6-3, widths 64-512, 1x1 stride-2 projection shortcuts) with random values."""
    sd = {}

    def bn(prefix, c):
        sd[f"{prefix}.weight"] = torch.rand(c, generator=generator) + 0.5
        sd[f"{prefix}.bias"] = torch.randn(c, generator=generator)
        sd[f"{prefix}.running_mean"] = torch.randn(c, generator=generator)
        sd[f"{prefix}.running_var"] = torch.rand(c, generator=generator) + 0.5
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(7)

    sd["conv1.weight"] = torch.randn(64, 3, 7, 7, generator=generator) * 0.05
    bn("bn1", 64)
    cin = 64
    for layer, (blocks, cout) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            sd[f"{p}.conv1.weight"] = torch.randn(cout, cin if b == 0 else cout, 3, 3, generator=generator) * 0.05
            bn(f"{p}.bn1", cout)
            sd[f"{p}.conv2.weight"] = torch.randn(cout, cout, 3, 3, generator=generator) * 0.05
            bn(f"{p}.bn2", cout)
            if b == 0 and layer > 1:
                sd[f"{p}.downsample.0.weight"] = torch.randn(cout, cin, 1, 1, generator=generator) * 0.05
                bn(f"{p}.downsample.1", cout)
        cin = cout
    sd["fc.weight"] = torch.randn(1000, 512, generator=generator)
    sd["fc.bias"] = torch.randn(1000, generator=generator)
    return sd


def test_unetpp_loads_a_torchvision_resnet34_state_dict(tmp_path):
    sd = _torchvision_resnet34_state_dict(torch.Generator().manual_seed(3))
    path = tmp_path / "resnet34.pth"
    torch.save(sd, path)
    net = models.create("unetpp", decoder_width=8, encoder_weights=str(path))
    state = net.state_dict()
    for key, value in sd.items():
        if key.startswith("fc."):
            assert f"encoder.{key}" not in state
            continue
        assert torch.equal(state[f"encoder.{key}"], value), key
    assert len(sd) - 2 == sum(k.startswith("encoder.") for k in state)
    # The loaded values are the ones the C++ forward uses.
    net.check_shared()
    cpp_conv1 = dict(net.cpp_module().named_parameters().items())["encoder.conv1.weight"]
    assert torch.equal(cpp_conv1, sd["conv1.weight"])
    # A DataParallel-style "module." prefix is accepted too.
    other = models.create("unetpp", decoder_width=8)
    assert other.load_encoder({f"module.{k}": v for k, v in sd.items()}) == len(sd) - 2


def test_unetpp_load_encoder_rejects_what_does_not_fit(tmp_path):
    sd = _torchvision_resnet34_state_dict(torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="width=64"):
        models.create("unetpp", width=32).load_encoder(sd)
    partial = {k: v for k, v in sd.items() if not k.startswith("layer4.2")}
    with pytest.raises(ValueError, match="missing.*layer4.2"):
        models.create("unetpp", width=8).load_encoder(partial)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        models.create("unetpp", width=8).load_encoder(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="bad.pth"):
        models.create("unetpp", width=8).load_encoder(bad)


@pytest.mark.parametrize("name,multiple", [("unet", 16), ("unetpp", 32), ("student", 16)])
def test_bad_input_sizes_name_the_multiple(name, multiple):
    net = models.create(name, **TINY[name])
    assert net.multiple == multiple
    with pytest.raises(ValueError, match=f"multiples of {multiple}.*H=48, W={multiple * 3 + 8}"):
        net(torch.randn(1, 3, 48, multiple * 3 + 8))
    with pytest.raises(ValueError, match="3 channels"):
        net(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"shape \[N, 3, H, W\]"):
        net(torch.randn(3, 64, 64))
    with pytest.raises(TypeError, match="floating-point"):
        net(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_in_channels_is_configurable():
    net = models.create("student", in_channels=1, base=4)
    logits, _, _ = net(torch.randn(1, 1, 32, 32))
    assert logits.shape == (1, 1, 32, 32)


def test_create_registry_and_bad_arguments():
    assert models.names() == ["unet", "unetpp", "student"]
    assert type(models.create("student", base=4)) is models.RealtimeStudent
    with pytest.raises(ValueError, match=r"unknown network 'resnet'.*\['unet', 'unetpp', 'student'\]"):
        models.create("resnet")
    with pytest.raises(TypeError, match="depth"):
        models.create("unet", depth=5)
    with pytest.raises(ValueError, match="base must be a positive int"):
        models.create("unet", base=0)
    with pytest.raises(ValueError, match="decoder_width must be even"):
        models.create("unetpp", width=8, decoder_width=5)
