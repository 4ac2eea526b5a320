"""torch.ops.dtc.corr_distill_loss: reference parity, gradients, opcheck, bad input, oracle O-X1."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dtc.ops
from dtc.ops import reference
from dtc.volume import correlation_distillation


def _points(M=5, n=7, cs=6, ct=9, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = F.normalize(torch.randn(M, n, cs, generator=g, dtype=dtype), dim=-1)
    t = F.normalize(torch.randn(M, n, ct, generator=g, dtype=dtype), dim=-1)
    # shift student correlations so that some fall below 0, some inside (0, 0.8) and some above 0.8
    s = F.normalize(s + 0.8 * s[:, :1], dim=-1)
    return s, t, torch.randperm(M, generator=g)


@pytest.mark.parametrize("pair_kind", ["self", "perm"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_float64(pair_kind, seed):
    s, t, perm = _points(seed=seed)
    pair = torch.arange(s.shape[0]) if pair_kind == "self" else perm
    got = dtc.ops.corr_distill_loss(s, t, pair)
    want = reference.corr_distill_loss(s, t, pair)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-14), (got, want)
    c = torch.einsum("mac,mbc->mab", s, s[pair])
    assert (c < 0).any() and ((c > 0) & (c < 0.8)).any() and (c > 0.8).any()  # every clamp branch is exercised


@pytest.mark.parametrize("M", [8, 19])
def test_slices_across_chunks_and_float32_match_the_float64_reference(M):
    # The CPU kernel works on chunks of 8 slices; a partner may sit in another chunk.
    s, t, perm = _points(M=M, n=33, cs=24, ct=40, seed=3)
    want = reference.corr_distill_loss(s, t, perm)
    s.requires_grad_(True)
    want_grad, = torch.autograd.grad(reference.corr_distill_loss(s, t, perm), s)
    got = dtc.ops.corr_distill_loss(s, t, perm)
    got_grad, = torch.autograd.grad(got, s)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)
    assert torch.allclose(got_grad, want_grad, atol=1e-12)
    s32 = s.detach().float().requires_grad_(True)
    got32 = dtc.ops.corr_distill_loss(s32, t.float(), perm)
    got32_grad, = torch.autograd.grad(got32, s32)
    assert got32.dtype == torch.float32 and abs(float(got32) - float(want)) <= 1e-5 * max(1.0, abs(float(want)))
    assert torch.allclose(got32_grad.double(), want_grad, atol=1e-6)


def test_reference_loop_over_i_a_b_matches():
    """O-X1: an explicit loop over (i, a, b) equals the vectorised op."""
    s, t, perm = _points(M=3, n=4, seed=2)
    M, n = s.shape[:2]
    fs = [[[float(t[i, a] @ t[perm[i], b]) for b in range(n)] for a in range(n)] for i in range(M)]
    mean_all = sum(sum(sum(r) for r in f) for f in fs) / (M * n * n)
    total = 0.0
    for i in range(M):
        for a in range(n):
            rowmean = sum(fs[i][a]) / n
            for b in range(n):
                c = min(max(float(s[i, a] @ s[perm[i], b]), 0.0), 0.8)
                total += -c * (fs[i][a][b] - rowmean + mean_all - 0.1)
    assert dtc.ops.corr_distill_loss(s, t, perm).item() == pytest.approx(total / (M * n * n), rel=1e-12, abs=1e-15)


def test_gradcheck_and_reference_gradient():
    s, t, perm = _points(M=3, n=5, cs=4, ct=3, seed=3)
    s.requires_grad_(True)
    for pair in (torch.arange(3), perm):
        assert torch.autograd.gradcheck(lambda x: dtc.ops.corr_distill_loss(x, t, pair), (s,))
        g_op, = torch.autograd.grad(dtc.ops.corr_distill_loss(s, t, pair), s)
        g_ref, = torch.autograd.grad(reference.corr_distill_loss(s, t, pair), s)
        assert torch.allclose(g_op, g_ref, atol=1e-12)


def test_teacher_gets_no_gradient():
    """O-X1: the teacher side is a stop-gradient target."""
    s, t, perm = _points(seed=4)
    t.requires_grad_(True)
    s.requires_grad_(True)
    dtc.ops.corr_distill_loss(s, t, perm).backward()
    assert t.grad is None and s.grad is not None


def test_invariant_to_positive_per_point_scaling():
    """O-X1: scaling each point's features by a positive factor changes nothing (they are normalised)."""
    g = torch.Generator().manual_seed(5)
    student = torch.randn(4, 8, 3, 6, 6, generator=g, dtype=torch.float64)  # [B, C_s, Z, h, w]: 12 slices
    teacher = torch.randn(12, 5, 6, 6, generator=g, dtype=torch.float64)
    # points on grid nodes (align_corners=True: node k at -1 + 2k/5), so a per-pixel scaling is per point
    points = torch.randint(0, 6, (12, 16, 2), generator=g).double() * 0.4 - 1
    perm = torch.randperm(12, generator=g)
    scale_s = torch.rand(4, 1, 3, 6, 6, generator=g, dtype=torch.float64) + 0.1
    scale_t = torch.rand(12, 1, 6, 6, generator=g, dtype=torch.float64) + 0.1
    base = correlation_distillation(student, teacher, points=points, perm=perm)
    scaled = correlation_distillation(student * scale_s, teacher * scale_t, points=points, perm=perm)
    for x, y in zip(base, scaled):
        assert torch.allclose(x, y, atol=1e-12)
    assert not torch.allclose(base[0], base[1])  # self and perm pairs are different losses


def test_slice_selection_and_generator_determinism():
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    student = torch.randn(5, 4, 20, 8, 8)  # 100 slices > 64
    teacher = torch.randn(100, 6, 8, 8)
    a = correlation_distillation(student, teacher, n_points=16, generator=g1)
    b = correlation_distillation(student, teacher, n_points=16, generator=g2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].dtype == torch.float32


def test_opcheck():
    s, t, perm = _points(M=3, n=4, seed=6)
    s.requires_grad_(True)
    torch.library.opcheck(torch.ops.dtc.corr_distill_loss.default, (s, t, perm, 0.1, 0.8))


def test_bad_input_gets_clear_errors():
    s, t, perm = _points(seed=7)
    op = dtc.ops.corr_distill_loss
    with pytest.raises(ValueError, match="student must be \\[M, n, C_s\\]"):
        op(s[0], t, perm)
    with pytest.raises(ValueError, match="teacher must be \\[M, n, C_t\\] with the student's M and n"):
        op(s, t[:, :3], perm)
    with pytest.raises(TypeError, match="same dtype"):
        op(s, t.float(), perm)
    with pytest.raises(TypeError, match="pair must be int64"):
        op(s, t, perm.int())
    with pytest.raises(ValueError, match="pair must be a permutation"):
        op(s, t, torch.zeros_like(perm))
    with pytest.raises(ValueError, match="pair must be \\[M\\]"):
        op(s, t, perm[:2])
    with pytest.raises(ValueError, match="clamp_max must be > 0"):
        op(s, t, perm, 0.1, 0.0)
    with pytest.raises(ValueError, match="over the same slices"):
        correlation_distillation(torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_matches_cpu(dtype):
    s, t, perm = _points(M=6, n=300, cs=16, ct=24, seed=8, dtype=dtype)
    s.requires_grad_(True)
    loss = dtc.ops.corr_distill_loss(s, t, perm)
    g, = torch.autograd.grad(loss, s)
    sc = s.detach().cuda().requires_grad_(True)
    loss_c = dtc.ops.corr_distill_loss(sc, t.cuda(), perm.cuda())
    gc, = torch.autograd.grad(loss_c, sc)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert torch.allclose(loss_c.cpu(), loss, atol=tol)
    assert torch.allclose(gc.cpu(), g, atol=tol)
