"""StudentKD (XDim-KD's 3-D student) in C++: a plain-PyTorch twin of the architecture on the same weights,
the z receptive field of 7 slices (oracle O-X5), the nn.Module facade, bad input."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from dtc.models import StudentKD


def _reference(sd, x):
    """The architecture of docs/xdim.md written with torch.nn.functional, reading the C++ net's weights."""
    def conv(name, t, relu=True):
        w = sd[f"{name}.weight"]
        kz, k = w.shape[2], w.shape[3]
        dil = 2 if name.startswith("e4") else 1
        y = F.conv3d(t, w, sd[f"{name}.bias"], padding=(kz // 2, dil * (k // 2), dil * (k // 2)), dilation=(1, dil, dil))
        return F.relu(y) if relu else y

    def pool(t):
        return F.max_pool3d(t, (1, 3, 3), (1, 2, 2), (0, 1, 1))

    def up(t, like):
        return F.interpolate(t, size=like.shape[2:], mode="nearest")

    def avg(t, times):
        for _ in range(times):
            t = F.avg_pool3d(t, (1, 2, 2))
        return t

    e1 = conv("e1_1", conv("e1_0", x))
    e2 = conv("e2_1", conv("e2_0", pool(e1)))
    e3 = conv("e3_1", conv("e3_0", pool(e2)))
    e4 = conv("e4_2", conv("e4_1", conv("e4_0", pool(e3))))
    d3 = conv("d3_1", conv("d3_0", torch.cat([up(e4, e3), e3], 1)))
    d2 = conv("d2_1", conv("d2_0", torch.cat([up(d3, e2), e2], 1)))
    x7 = conv("d1_0", torch.cat([up(d2, e1), e1], 1))
    logits = conv("logit", x7, relu=False)[:, 0]
    kd = torch.cat([e4, avg(d3, 1), avg(d2, 2), avg(x7, 3)], 1)
    kd = F.conv3d(F.relu(F.conv3d(kd, sd["kd_0.weight"], sd["kd_0.bias"])), sd["kd_1.weight"], sd["kd_1.bias"])
    return logits, kd


def _net(**kw):
    torch.manual_seed(0)
    return StudentKD(**{"base": 4, "kd_channels": 6, **kw}).double().eval()


def test_matches_the_plain_pytorch_architecture():
    net = _net()
    x = torch.rand(2, 1, 5, 24, 16, dtype=torch.float64)
    logits, kd = net(x)
    assert logits.shape == (2, 5, 24, 16) and kd.shape == (2, 6, 5, 3, 2)
    r_logits, r_kd = _reference(net.state_dict(), x)
    assert torch.allclose(logits, r_logits, atol=1e-12) and torch.allclose(kd, r_kd, atol=1e-12)
    pooled = net(x, kd_grid=(1, 1))[1]
    assert pooled.shape == (2, 6, 5, 1, 1) and torch.allclose(pooled[..., 0, 0], kd.mean((3, 4)))


def test_default_widths_follow_the_original_code():
    net = StudentKD()
    sd = net.state_dict()
    assert sd["e1_0.weight"].shape == (32, 1, 1, 7, 7) and sd["e4_0.weight"].shape == (128, 128, 3, 3, 3)
    assert sd["kd_0.weight"].shape == (384, 384, 1, 1, 1) and sd["kd_1.weight"].shape == (384, 384, 1, 1, 1)
    assert sd["d1_0.weight"].shape == (64, 96, 1, 3, 3)


@pytest.mark.parametrize("k", [0, 5, 11])
def test_z_receptive_field_is_exactly_seven_slices(k):
    """O-X5: perturbing slice k changes the logits of slices k-3..k+3 and no other."""
    net = _net()
    Z = 12
    x = torch.rand(1, 1, Z, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
    y = x.clone()
    y[:, :, k] += torch.rand(16, 16, dtype=torch.float64) + 0.5
    with torch.no_grad():
        changed = (net(x)[0] - net(y)[0]).abs().amax(dim=(0, 2, 3))
    expected = torch.tensor([abs(z - k) <= 3 for z in range(Z)])
    assert torch.equal(changed > 0, expected), changed
    assert net.z_receptive_field == 7


def test_nn_module_facade():
    net = _net()
    net.check_shared()
    x = torch.rand(1, 1, 3, 16, 16, dtype=torch.float64)
    clone = copy.deepcopy(net)
    assert torch.equal(clone(x)[0], net(x)[0])
    again = pickle.loads(pickle.dumps(net))
    assert torch.equal(again(x)[1], net(x)[1])
    other = StudentKD(base=4, kd_channels=6).double().eval()
    other.load_state_dict(net.state_dict())
    assert torch.equal(other(x)[0], net(x)[0])
    net.train()
    assert net.cpp_module().training
    torch.manual_seed(1)
    a = net(x)[1]
    torch.manual_seed(2)
    assert not torch.equal(a, net(x)[1])  # dropout is active in training mode
    net.eval()
    logits, kd = net(x)
    (logits.sum() + kd.sum()).backward()
    assert all(p.grad is not None for p in net.parameters())
    assert net.float()(x.float())[0].dtype == torch.float32


@pytest.mark.parametrize("shape, match", [((1, 1, 16, 16), "shape"), ((1, 2, 3, 16, 16), "shape"),
                                          ((1, 1, 3, 12, 16), "multiples of 8")])
def test_bad_input(shape, match):
    with pytest.raises(ValueError, match=match):
        _net()(torch.rand(*shape, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating"):
        _net()(torch.zeros(1, 1, 2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="base"):
        StudentKD(base=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    net = _net()
    x = torch.rand(2, 1, 9, 32, 24, dtype=torch.float64)
    want = net(x)
    got = copy.deepcopy(net).cuda()(x.cuda())
    for g, w in zip(got, want):
        assert g.is_cuda and torch.allclose(g.cpu(), w, atol=1e-9)
