"""The clip teacher: O-A1 (gamma = 0 gives the image model's logits bit for bit), the deformable and full
global branches (op against the grid_sample reference), causal/centred key frames, gradients, bad input."""
from __future__ import annotations

import pytest
import torch

from dtc import models
from dtc.distill.msi import ClipTeacher, MSISeg, key_index, sine_position
from tests.models.user_unet import build_unet

SMALL = dict(d=32, heads=4, points=2, ffn=64, dropout=0.0)


def _clip(B=2, T=3, H=32, W=48, seed=0):
    return torch.rand(B, T, 3, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name,kwargs", [("unet", {"base": 4}), ("student", {"base": 4}), ("unetpp", {"width": 4, "decoder_width": 4})])
@pytest.mark.parametrize("causal", [False, True])
def test_o_a1_gamma_zero_teacher_equals_the_image_model_exactly(name, kwargs, causal):
    torch.manual_seed(0)
    net = models.create(name, **kwargs).eval()
    teacher = ClipTeacher(net, frames=3, causal=causal, **SMALL).eval()
    clip = _clip(H=64, W=64) if name == "unetpp" else _clip()
    with torch.no_grad():
        got = teacher(clip)
        want = net(clip[:, key_index(3, causal)])
    assert torch.equal(got[0], want[0])


def test_o_a1_for_a_users_net_through_feature_taps():
    torch.manual_seed(0)
    net = models.FeatureTaps(build_unet(width=4), features=["encoder.0", "encoder.1", "bottleneck"]).eval()
    teacher = ClipTeacher(net, channels=[4, 8, 16], frames=3, **SMALL).eval()
    clip = _clip()
    with torch.no_grad():
        assert torch.equal(teacher(clip)[0], net(clip[:, 1])[0])


def test_nonzero_gamma_uses_the_other_frames_and_trains():
    torch.manual_seed(0)
    net = models.create("student", base=4).eval()
    teacher = ClipTeacher(net, frames=3, **SMALL).eval()
    for g in teacher.msi.gamma:
        torch.nn.init.constant_(g, 0.5)
    clip = _clip()
    with torch.no_grad():
        a = teacher(clip)[0]
        other = clip.clone()
        other[:, 0] = torch.rand_like(other[:, 0])
        b = teacher(other)[0]
    assert not torch.equal(a, b)  # a reference frame changed the key frame's prediction
    teacher.train()
    logits = teacher(clip)[0]
    logits.mean().backward()
    assert all(p.grad is not None for p in teacher.msi.parameters() if p.requires_grad)


def test_gamma_gets_a_gradient_at_zero_so_rezero_can_leave_it():
    torch.manual_seed(0)
    net = models.create("student", base=4).eval()
    teacher = ClipTeacher(net, frames=3, **SMALL)
    teacher(_clip())[0].square().mean().backward()
    assert any(g.grad.abs().sum() > 0 for g in teacher.msi.gamma)


def test_deformable_branch_op_matches_grid_sample_reference():
    torch.manual_seed(0)
    levels = [torch.randn(2, 3, c, 8 // s, 12 // s, dtype=torch.float64) for c, s in ((6, 1), (8, 2), (10, 4))]
    msi_op = MSISeg([6, 8, 10], frames=3, sampler="op", **SMALL).double()
    msi_ref = MSISeg([6, 8, 10], frames=3, sampler="reference", **SMALL).double()
    msi_ref.load_state_dict(msi_op.state_dict())
    for m in (msi_op, msi_ref):
        for g in m.gamma:
            torch.nn.init.constant_(g, 1.0)
    a = msi_op(levels)
    b = msi_ref(levels)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-12)


def test_full_attention_branch_runs_and_refuses_large_maps():
    torch.manual_seed(0)
    levels = [torch.randn(1, 2, 4, 4, 6), torch.randn(1, 2, 4, 2, 3)]
    msi = MSISeg([4, 4], frames=2, attn="full", **SMALL)
    out = msi(levels)
    assert [tuple(o.shape) for o in out] == [(1, 4, 4, 6), (1, 4, 2, 3)]
    big = [torch.randn(1, 2, 4, 64, 64), torch.randn(1, 2, 4, 2, 3)]
    with pytest.raises(ValueError, match="attn='full' is for small maps"):
        msi(big)


def test_key_frame_and_position_encoding():
    assert key_index(3, False) == 1 and key_index(3, True) == 2 and key_index(5, False) == 2 and key_index(1, True) == 0
    pe = sine_position(3, 4, 8)
    assert pe.shape == (12, 8) and torch.all(pe.abs() <= 1)
    with pytest.raises(ValueError, match="multiple of 4"):
        sine_position(2, 2, 6)


def test_bad_input():
    net = models.create("student", base=4)
    with pytest.raises(TypeError, match="no features"):
        ClipTeacher(build_unet(width=4))
    with pytest.raises(ValueError, match="pass channels"):
        ClipTeacher(models.FeatureTaps(build_unet(width=4), features=["bottleneck"]), levels=1)
    teacher = ClipTeacher(net, frames=3, **SMALL)
    with pytest.raises(ValueError, match=r"clip must be \(B, T=3"):
        teacher(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="attn must be"):
        MSISeg([4], attn="sparse")
    with pytest.raises(ValueError, match=r"levels\[0\] must be"):
        MSISeg([4], frames=3, **SMALL)([torch.rand(1, 2, 4, 4, 4)])


def test_o_a2_full_attention_branch_matches_a_naive_softmax_attention():
    torch.manual_seed(1)
    msi = MSISeg([4, 6], frames=3, attn="full", **SMALL).double().eval()
    levels = [torch.randn(2, 3, 4, 4, 6, dtype=torch.float64), torch.randn(2, 3, 6, 2, 3, dtype=torch.float64)]
    B, T, key, d, heads = 2, 3, msi.key, msi.d, SMALL["heads"]
    z = [proj(f.flatten(0, 1)).view(B, T, d, *f.shape[-2:]) for proj, f in zip(msi.project, levels)]
    got = msi._global(z, key)
    block = msi.blocks[0]
    w_q, w_k, w_v = block.attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = block.attn.in_proj_bias.chunk(3)
    for l, zl in enumerate(z):
        h, w = zl.shape[-2:]
        pos = sine_position(h, w, d, dtype=torch.float64) + msi.level_embed[l]
        x0 = zl[:, key].flatten(2).transpose(1, 2)
        keys = torch.cat([zl[:, t].flatten(2).transpose(1, 2) + msi.time_embed[t] + pos for t in range(T)], 1)
        q = (block.norm1(x0) + pos) @ w_q.T + b_q
        k, v = keys @ w_k.T + b_k, keys @ w_v.T + b_v
        split = lambda t: t.view(B, -1, heads, d // heads).transpose(1, 2)  # noqa: E731
        attn = torch.softmax(split(q) @ split(k).transpose(-1, -2) / (d // heads) ** 0.5, -1) @ split(v)
        x = x0 + block.attn.out_proj(attn.transpose(1, 2).reshape(B, -1, d))
        x = x + block.ffn(block.norm2(x))
        want = (x - x0).transpose(1, 2).reshape(B, d, h, w)
        assert torch.allclose(got[l], want, rtol=1e-10, atol=1e-12)
