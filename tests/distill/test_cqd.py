"""Cross-view query distillation: O-Q1 (zero when the memories agree; queries carry no gradient; a frozen
decoder passes gradient only to the student side), O-Q2 (reproducible views and points; the fixed mode is
deterministic), the query set's layout and targets, the probe loss and bad input."""
from __future__ import annotations

import pytest
import torch

from dtc.distill.cqd import (TYPES, ProbeDecoder, binary_kl, build_queries, choose_views, cqd_loss, probe_loss)

D = 16


def _masks(B=2, H=32, W=48):
    m = torch.zeros(B, 1, H, W)
    m[0, 0, 4:12, 6:20] = 1
    m[0, 0, 20:28, 30:40] = 1
    return m  # sample 1 has no foreground


def _phi(B=2, h=4, w=6, seed=0):
    return torch.randn(B, D, h, w, generator=torch.Generator().manual_seed(seed))


def test_query_set_layout_and_targets():
    qs = build_queries(_phi(), _masks(), stride=8, generator=torch.Generator().manual_seed(0))
    assert qs.embeddings.shape == (2, 21, D) and qs.targets.shape == (2, 21, 32, 48)
    t0 = qs.types[0].tolist()
    assert t0[:2] == [TYPES["component"]] * 2 and t0[3:5] == [TYPES["soft"], TYPES["background"]]
    assert qs.valid[0].tolist() == [True, True, False] + [True] * 18  # two components of at most three
    assert qs.foreground[0, :2].tolist() == [1.0, 1.0] and qs.foreground[0, 4] == 0.0
    assert qs.targets[0, 3].sum() == _masks()[0].sum()  # the soft prototype's target is the union
    # foreground points, halo ones included, target the component they were drawn around
    assert qs.foreground[0, 13:].tolist() == [1.0] * 8
    # no foreground: no prototypes of components, the foreground slots hold random points
    assert not qs.valid[1, :4].any() and qs.valid[1, 4] and qs.valid[1, 5:].all()
    assert (qs.types[1, 13:] == TYPES["random"]).all()


def test_o_q2_reproducible_and_fixed_mode_deterministic():
    a = build_queries(_phi(), _masks(), stride=8, generator=torch.Generator().manual_seed(5))
    b = build_queries(_phi(), _masks(), stride=8, generator=torch.Generator().manual_seed(5))
    c = build_queries(_phi(), _masks(), stride=8, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.embeddings, b.embeddings) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.embeddings, c.embeddings)
    f1 = build_queries(_phi(), _masks(), stride=8, generator=torch.Generator().manual_seed(1), mode="fixed")
    f2 = build_queries(_phi(), _masks(), stride=8, generator=torch.Generator().manual_seed(2), mode="fixed")
    assert torch.equal(f1.embeddings, f2.embeddings) and f1.embeddings.shape[1] == 3 + 2 + 8
    v1 = choose_views(16, torch.Generator().manual_seed(3))
    assert v1 == choose_views(16, torch.Generator().manual_seed(3)) and set(v1) <= {"teacher", "student", "reference"}
    assert choose_views(4, torch.Generator().manual_seed(3), mode="fixed") == ["teacher"] * 4


def test_o_q1_zero_when_memories_agree_and_gradients_reach_only_the_student():
    torch.manual_seed(0)
    decoder = ProbeDecoder(channels=8, d=D, heads=2, layers=2, ffn=32).eval()
    for p in decoder.parameters():
        p.requires_grad_(False)
    teacher_feat = torch.randn(2, 8, 4, 6)
    student_net = torch.nn.Conv2d(8, 8, 1)
    with torch.no_grad():
        student_net.weight.copy_(torch.eye(8).view(8, 8, 1, 1))
        student_net.bias.zero_()
    phi_t = decoder.memory(teacher_feat)
    qs = build_queries(phi_t, _masks(), stride=8, generator=torch.Generator().manual_seed(0))
    assert not qs.embeddings.requires_grad
    phi_s = decoder.memory(student_net(teacher_feat))
    assert torch.allclose(phi_s, phi_t)
    loss = cqd_loss(decoder(qs, phi_t), decoder(qs, phi_s), qs.valid)
    assert abs(loss.item()) < 1e-6  # binary KL is zero at p = q; BCE would not be
    other = decoder.memory(torch.randn(2, 8, 4, 6))
    loss = cqd_loss(decoder(qs, phi_t), decoder(qs, other + 0 * phi_s), qs.valid)
    assert loss.item() > 1e-3
    phi_s = decoder.memory(student_net(teacher_feat * 1.5))
    cqd_loss(decoder(qs, phi_t), decoder(qs, phi_s), qs.valid).backward()
    assert student_net.weight.grad is not None and student_net.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in decoder.parameters())


def test_binary_kl_and_probe_loss():
    z = torch.linspace(-5, 5, 11)
    assert torch.all(binary_kl(z, z).abs() < 1e-6) and torch.all(binary_kl(z, z.flip(0))[z != 0] > 0)
    decoder = ProbeDecoder(channels=8, d=D, heads=2, layers=1, ffn=32)
    phi = decoder.memory(torch.randn(2, 8, 4, 6))
    qs = build_queries(phi, _masks(), stride=8, generator=torch.Generator().manual_seed(0))
    loss = probe_loss(decoder(qs, phi), qs, stride=8)
    loss.backward()
    assert torch.isfinite(loss) and decoder.psi.weight.grad is not None


def test_bad_input():
    with pytest.raises(ValueError, match="mode must be"):
        build_queries(_phi(), _masks(), stride=8, generator=torch.Generator(), mode="cross")
    with pytest.raises(ValueError, match="multiple of 4"):
        ProbeDecoder(channels=8, d=18, heads=2)
