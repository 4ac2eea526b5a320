"""torch.ops.dtc.tta_accumulate: reference parity (two-pass against the kernel's Welford pass), the TTA
round trip (oracle O-X4), the original code's variance formula where the validity is 0/1, opcheck,
torch.compile, bad input and the CUDA twin."""
from __future__ import annotations

import math

import pytest
import torch

import dtc.ops
from dtc.ops import reference_volume as reference
from dtc.volume.tta import draw_tta_params, tta_predict, tta_warp


def _case(B=2, N=5, h=9, w=11, H=13, W=10, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    preds = torch.rand(B, N, h, w, generator=g, dtype=dtype)
    params = draw_tta_params(B, N, (H, W), generator=g)
    return preds, params, (H, W)


@pytest.mark.parametrize("shape", [dict(), dict(h=13, w=10), dict(B=1, N=1, h=4, w=3, H=7, W=6), dict(N=20, h=16, w=16)])
@pytest.mark.parametrize("seed", [0, 1])
def test_welford_pass_matches_two_pass_reference_float64(shape, seed):
    preds, params, size = _case(seed=seed, **shape)
    mean, std, cov = dtc.ops.tta_accumulate(preds, params, size)
    r_mean, r_std, r_cov = reference.tta_accumulate(preds, params, size)
    assert torch.allclose(cov, r_cov, atol=1e-12)
    assert torch.allclose(mean, r_mean, atol=1e-12)
    assert torch.allclose(std, r_std, atol=1e-9)
    # the draws leave some pixels uncovered, partly covered and fully covered: every branch is exercised
    if shape.get("N", 5) > 1:
        assert (cov == 0).any() or (cov < shape.get("N", 5)).any()
        assert (std > 0).any()
    else:
        assert (std == 0).all()  # one draw has no spread


def test_float32_matches_float64():
    preds, params, size = _case(N=20, seed=3)
    m64, s64, c64 = dtc.ops.tta_accumulate(preds, params, size)
    m32, s32, c32 = dtc.ops.tta_accumulate(preds.float(), params.float(), size)
    assert m32.dtype == torch.float32
    assert torch.allclose(m32.double(), m64, atol=1e-5) and torch.allclose(s32.double(), s64, atol=1e-4)


def test_identity_draws_return_the_prediction():
    preds, _, _ = _case(N=3, h=8, w=9, seed=4)
    params = torch.zeros(2, 3, 3, dtype=torch.float64)
    mean, std, cov = dtc.ops.tta_accumulate(preds, params, (8, 9))
    assert torch.allclose(mean, preds.mean(1), atol=1e-12)
    assert torch.allclose(std, preds.std(1, unbiased=False), atol=1e-12)
    assert torch.allclose(cov, torch.full_like(cov, 3.0))


def test_matches_the_original_variance_formula_where_validity_is_binary():
    """Integer shifts and no rotation keep every validity sample 0 or 1; there the weighted variance is
    exactly sum p^2 / sum v - mean^2 of the original code."""
    g = torch.Generator().manual_seed(5)
    H, W, N = 12, 14, 6
    preds = torch.rand(1, N, H, W, generator=g, dtype=torch.float64)
    params = torch.zeros(1, N, 3, dtype=torch.float64)
    params[0, :, 1:] = torch.randint(-3, 4, (N, 2), generator=g).double()
    p = torch.zeros(N, H, W, dtype=torch.float64)
    v = torch.zeros_like(p)
    for n in range(N):
        tx, ty = int(params[0, n, 1]), int(params[0, n, 2])
        for y in range(H):
            for x in range(W):
                if 0 <= x + tx < W and 0 <= y + ty < H:
                    p[n, y, x], v[n, y, x] = preds[0, n, y + ty, x + tx], 1.0
    mean_cdkd = p.sum(0) / (v.sum(0) + 1e-9)
    std_cdkd = (p.pow(2).sum(0) / (v.sum(0) + 1e-9) - mean_cdkd ** 2).clamp_min(0).sqrt()
    mean, std, cov = dtc.ops.tta_accumulate(preds, params, (H, W))
    assert torch.equal(cov[0], v.sum(0))
    assert torch.allclose(mean[0], mean_cdkd, atol=1e-12)
    var_cdkd = p.pow(2).sum(0) / (v.sum(0) + 1e-9) - mean_cdkd ** 2
    # equal up to the eps in the denominators (a relative 1e-9, which a square root would magnify)
    assert torch.allclose(std[0] ** 2, var_cdkd.clamp_min(0), atol=1e-8)
    assert torch.allclose(std[0], std_cdkd, atol=1e-4)


@pytest.mark.parametrize("net_size", [None, (64, 64), (160, 150)])
def test_round_trip_is_identity_inside_the_valid_mask(net_size):
    """O-X4: warping a smooth image forward (tta_warp, optionally resizing) and back (tta_accumulate)
    returns it to <= 1e-3 wherever every draw saw the pixel."""
    H, W = 96, 120
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    image = torch.exp(-((x - 55) ** 2 + (y - 50) ** 2) / (2 * 30.0 ** 2)) * 0.8 + 0.1 * torch.sin(x / 25.0)
    params = draw_tta_params(1, 8, (H, W), generator=torch.Generator().manual_seed(6))
    augmented = tta_warp(image[None], params, net_size)
    mean, std, cov = dtc.ops.tta_accumulate(augmented, params, (H, W))
    # the valid mask of the round trip: every draw's sample came back from inside the native slice (the
    # forward warp fills 0 outside it, which bilinear taps next to that edge would mix in)
    round_trip_of_ones, _, _ = dtc.ops.tta_accumulate(tta_warp(torch.ones_like(image)[None], params, net_size), params, (H, W))
    inside = (cov > 8 - 1e-6) & (round_trip_of_ones > 1 - 1e-9)
    assert inside.float().mean() > 0.3
    assert (mean[inside] - image[None][inside]).abs().max() <= 1e-3
    assert std[inside].max() <= 1e-3  # every draw agrees after the round trip
    # the inverse really undoes the rotation: a wrong-sign inverse is far off
    wrong = params.clone()
    wrong[..., 0] *= -1
    m_wrong, _, c_wrong = dtc.ops.tta_accumulate(augmented, wrong, (H, W))
    both = inside & (c_wrong > 8 - 1e-6)
    assert both.any()
    assert (m_wrong[both] - image[None][both]).abs().max() > 1e-2


def test_tta_predict_with_a_pointwise_model_recovers_it():
    """A pointwise 'network' (sigmoid of the intensity) commutes with the warps, so the TTA mean equals it
    applied to the native slice inside the valid mask."""
    g = torch.Generator().manual_seed(7)
    H, W = 40, 48
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    slices = torch.stack([torch.cos(x / 9.0 + k) * torch.sin(y / 11.0) for k in range(2)])
    mean, std, cov = tta_predict(lambda s: torch.sigmoid(4 * s), slices, draws=6, size=(H, W), generator=g)
    ones, _, _ = tta_predict(lambda s: s, torch.ones_like(slices), draws=6, size=(H, W),
                             generator=torch.Generator().manual_seed(7))
    inside = (cov > 6 - 1e-6) & (ones > 1 - 1e-9)
    assert inside.float().mean() > 0.2
    assert (mean[inside] - torch.sigmoid(4 * slices)[inside]).abs().max() < 2e-2
    assert mean.shape == (2, H, W) and std.shape == (2, H, W)


def test_opcheck_and_compile():
    preds, params, size = _case(B=1, N=3, h=6, w=5, H=7, W=8, seed=8)
    torch.library.opcheck(torch.ops.dtc.tta_accumulate.default, (preds, params, list(size), 1e-9))
    compiled = torch.compile(lambda p, q: dtc.ops.tta_accumulate(p, q, size), fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(preds, params), dtc.ops.tta_accumulate(preds, params, size)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("make, match", [
    (lambda p, q: (p[0], q, (7, 8)), "preds must be"),
    (lambda p, q: (p.long(), q, (7, 8)), "preds must be floating"),
    (lambda p, q: (p[:, :0], q[:, :0], (7, 8)), "at least one"),
    (lambda p, q: (p[:, :, :1], q, (7, 8)), "at least 2x2"),
    (lambda p, q: (p, q[:, :2], (7, 8)), "params must be"),
    (lambda p, q: (p, q[..., :2], (7, 8)), "params must be"),
    (lambda p, q: (p, q.long(), (7, 8)), "params must be floating"),
    (lambda p, q: (p, q, (1, 8)), "size must be"),
    (lambda p, q: (p, torch.full_like(q, math.nan), (7, 8)), "params must be finite"),
])
def test_bad_input_is_a_clear_error(make, match):
    preds, params, _ = _case(B=1, N=3, h=6, w=5, H=7, W=8, seed=9)
    args = make(preds, params)
    with pytest.raises((ValueError, TypeError), match=match):
        dtc.ops.tta_accumulate(*args)
    with pytest.raises(ValueError, match="eps"):
        dtc.ops.tta_accumulate(preds, params, (7, 8), eps=-1.0)


def test_tta_warp_bad_input():
    with pytest.raises(ValueError, match="slices must be"):
        tta_warp(torch.zeros(4, 4), torch.zeros(1, 1, 3))
    with pytest.raises(ValueError, match="params must be"):
        tta_warp(torch.zeros(1, 4, 4), torch.zeros(2, 1, 3))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_cuda_matches_cpu(dtype):
    preds, params, size = _case(B=3, N=20, h=32, w=32, H=45, W=50, seed=10, dtype=dtype)
    want = dtc.ops.tta_accumulate(preds.double(), params, size)
    got = dtc.ops.tta_accumulate(preds.cuda(), params.cuda(), size)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3}[dtype]
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.is_cuda
        assert torch.allclose(g.cpu().double(), w, atol=tol * max(1.0, float(w.abs().max())))
