"""Every loss term (both implementations) against the float64 oracle written from docs/method.md §2."""
from __future__ import annotations

import pytest
import torch

from dtc import losses, ops
from . import oracle
from .cases import CASES, make_case

IMPLS = ["fused", "reference"]
# float32 against the float64 oracle evaluated on the same input values; float64 against float64.
RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def close(actual, expected, dtype):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=RTOL[dtype], atol=RTOL[dtype] * 1e-2)


def grad_close(actual, expected, dtype):
    # Relative to the gradient's scale: float32 coordinates (e.g. of a resized flow) shift bilinear
    # weights by ~1e-7, which is large relative to the tiniest entries but not to the tensor.
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected, rtol=RTOL[dtype], atol=RTOL[dtype] * max(scale, 1e-3))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("preset", ["dtc", "reference"])
@pytest.mark.parametrize("case", CASES)
def test_objective_matches_oracle(case, preset, dtype, impl):
    d = make_case(case, dtype=dtype, seed=hash((case, preset)) % 1000)
    objective = losses.DTCObjective(preset, implementation=impl)
    total, terms = objective(d["z"], d["loc"], d["glob"], d["zt"], d["y"], d["images"], d["flows"])
    expected = oracle.total(*(d[k].double() for k in ("z", "loc", "glob", "zt", "y", "images", "flows")), preset)
    assert total.dtype == dtype
    close(total, expected["total"], dtype)
    for name in ("seg", "kd", "con", "proto", "loc", "glob"):
        close(terms[name], expected[name], dtype)
        assert not terms[name].requires_grad


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("T", [2, 3, 4, 5])
def test_window_lengths(T, impl):
    d = make_case("random", B=2, T=T, H=9, W=11, seed=T)
    for preset in ("dtc", "reference"):
        total, _ = losses.DTCObjective(preset, implementation=impl)(
            d["z"], d["loc"], d["glob"], d["zt"], d["y"], d["images"], d["flows"])
        expected = oracle.total(d["z"], d["loc"], d["glob"], d["zt"], d["y"], d["images"], d["flows"], preset)
        close(total, expected["total"], torch.float64)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("warped_target", ["hard", "soft"])
@pytest.mark.parametrize("normalise", [False, True])
@pytest.mark.parametrize("occlusion", [False, True])
def test_consistency_switches(warped_target, normalise, occlusion, dtype, impl):
    d = make_case("random", T=4, dtype=dtype, seed=11)
    for preset in ("dtc", "reference"):
        alpha = oracle.PRESET[preset]["alpha"]
        cfg = losses.DTCLossConfig.from_preset(preset)
        z = d["z"].clone().requires_grad_(True)
        got, maps = losses.temporal_consistency(
            z, d["images"], d["flows"], flows_backward=d["flows_bw"] if occlusion else None, alpha=cfg.alpha,
            confidence=cfg.confidence, channel_scale=cfg.channel_scale(3), warped_target=warped_target,
            normalise=normalise, return_maps=True, impl=impl)
        zd = d["z"].double().requires_grad_(True)
        expected = oracle.con(zd, d["images"].double(), d["flows"].double(), preset, alpha, warped_target, normalise,
                              d["flows_bw"].double() if occlusion else None)
        close(got, expected, dtype)
        (g,) = torch.autograd.grad(got, z)
        (ge,) = torch.autograd.grad(expected, zd)
        grad_close(g, ge, dtype)
        # The maps are the oracle's M and warped target of each pair.
        p = torch.sigmoid(d["z"].double())
        for t in range(1, 4):
            m = oracle.confidence(d["images"][:, t - 1].double(), d["images"][:, t].double(), d["flows"][:, t].double(),
                                  preset, alpha, d["flows_bw"][:, t].double() if occlusion else None)
            close(maps["confidence"][:, t - 1], m, dtype)
            target = oracle.warp(p[:, t - 1], d["flows"][:, t].double())
            if warped_target == "hard":
                target = (target > 0.5).double()
            close(maps["target"][:, t - 1], target, dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scales", ["both", "local", "global"])
@pytest.mark.parametrize("local_size,rescale", [(None, True), ((6, 7), True), ((6, 7), False), ((5, 9), True)])
@pytest.mark.parametrize("threshold,warped_target", [(0.5, "soft"), ("percentile70", "soft"), ("percentile70", "hard")])
def test_prototype_switches(threshold, warped_target, local_size, rescale, scales, dtype, impl):
    d = make_case("random", T=3, local_size=local_size, dtype=dtype, seed=5)
    p = torch.sigmoid(d["z"])
    loc = d["loc"].clone().requires_grad_(True)
    glob = d["glob"].clone().requires_grad_(True)
    got, parts = losses.prototype_alignment(p, loc, glob, d["flows"], threshold=threshold, rescale_flow=rescale,
                                            scales=scales, warped_target=warped_target, impl=impl)
    locd = d["loc"].double().requires_grad_(True)
    globd = d["glob"].double().requires_grad_(True)
    expected = oracle.proto(p.double(), locd, globd, d["flows"].double(), threshold, rescale, scales, warped_target)
    close(got, expected["proto"], dtype)
    for name in ("loc", "glob"):
        if name in expected:
            close(parts[name], expected[name], dtype)
    inputs, inputs_d = [], []
    if scales != "global":
        inputs.append(loc), inputs_d.append(locd)
    if scales != "local":
        inputs.append(glob), inputs_d.append(globd)
    grads = torch.autograd.grad(got, inputs)
    grads_d = torch.autograd.grad(expected["proto"], inputs_d)
    for a, b in zip(grads, grads_d):
        grad_close(a, b, dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_seg_and_kd_with_gradients(dtype, impl):
    d = make_case("random", B=3, T=2, dtype=dtype, seed=2)
    z = (4 * d["z"]).requires_grad_(True)  # large logits exercise the stable forms
    zd = z.detach().double().requires_grad_(True)
    seg = losses.bce_dice(z, d["y"], impl=impl)
    kd = losses.kd_loss(z, d["zt"], 4.0, impl=impl)
    seg_d, kd_d = oracle.bce_dice(zd, d["y"].double()), oracle.kd(zd, d["zt"].double(), 4.0)
    close(seg, seg_d, dtype)
    close(kd, kd_d, dtype)
    for ours, ref in ((seg, seg_d), (kd, kd_d)):
        (g,) = torch.autograd.grad(ours, z)
        (gd,) = torch.autograd.grad(ref, zd)
        grad_close(g, gd, dtype)


@pytest.mark.parametrize("impl", IMPLS)
def test_extreme_logits_stay_finite(impl):
    z = torch.tensor([[[[-200.0, 200.0], [0.0, 90.0]]]], requires_grad=True)
    y = torch.tensor([[[[0.0, 1.0], [0.5, 0.0]]]])
    loss = losses.bce_dice(z, y, impl=impl)
    (g,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    close(loss, oracle.bce_dice(z.detach().double(), y.double()), torch.float32)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_vectorised_float32_math_over_the_whole_logit_range(tau):
    """The fused float32 CPU kernels use their own vectorised exp/log1p (simd_math.h): sweep logits
    through every regime (tiny, moderate, the clamp at |z| = 87..88, far beyond) against float64, with
    lengths that leave a remainder after the vector loop, and element-wise gradients."""
    sweep = torch.cat([torch.linspace(-120, 120, 4001), torch.tensor([0.0, -0.0, 1e-8, -1e-8, 87.0, -87.0, 88.5,
                                                                          -88.5, 1e4, -1e4])])
    z = sweep[torch.randperm(len(sweep), generator=torch.Generator().manual_seed(0))].reshape(1, 1, 1, -1)
    y = torch.rand(z.shape, generator=torch.Generator().manual_seed(1))
    zt = z.flip(-1)
    z.requires_grad_(True)
    zd = z.detach().double().requires_grad_(True)
    for ours, ref in ((losses.bce_dice(z, y, impl="fused"), oracle.bce_dice(zd, y.double())),
                      (losses.kd_loss(z, zt, tau, impl="fused"), oracle.kd(zd, zt.double(), tau))):
        close(ours, ref, torch.float32)
        (g,) = torch.autograd.grad(ours, z)
        (gd,) = torch.autograd.grad(ref, zd)
        grad_close(g, gd, torch.float32)


def test_nan_logits_give_nan_losses_like_the_composition():
    z = torch.zeros(2, 1, 3, 5)
    z[1, 0, 1, 2] = float("nan")
    y = torch.ones_like(z)
    for impl in IMPLS:
        assert torch.isnan(losses.bce_dice(z, y, impl=impl)), impl
        assert torch.isnan(losses.kd_loss(z, torch.zeros_like(z), 4.0, impl=impl)), impl


@pytest.mark.parametrize("impl", IMPLS)
def test_percentile_threshold_matches_the_sorted_index_oracle(impl):
    d = make_case("random", B=3, T=4, H=10, W=13, seed=8)
    p = torch.sigmoid(d["z"])
    got = losses.foreground_threshold(p, "percentile70", impl=impl)
    expected = torch.stack([oracle.threshold(p[:, t], "percentile70") for t in range(1, 4)])
    close(got, expected, torch.float64)
    fixed = losses.foreground_threshold(p, 0.5, impl=impl)
    assert fixed.shape == (3,) and torch.all(fixed == 0.5)


@pytest.mark.parametrize("impl", IMPLS)
def test_percentile_threshold_is_an_order_statistic_not_an_interpolation(impl):
    # N = 5 pixels: int(0.7 * 5) = 3, the 4th smallest value of each sample. Sample 0 sorts to
    # [.1 .3 .5 .7 .9] -> 0.7, sample 1 to [.2 .4 .6 .8 1] -> 0.8; the threshold is their mean, 0.75.
    # torch.quantile would interpolate at rank 0.7 * 4 = 2.8: 0.66 and 0.76, mean 0.71.
    cur = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.7], [0.2, 1.0, 0.6, 0.8, 0.4]], dtype=torch.float64)
    probs = torch.stack([torch.full_like(cur, 0.5), cur], dim=1).view(2, 2, 1, 1, 5)
    got = losses.foreground_threshold(probs, "percentile70", impl=impl)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(0.75, abs=1e-15)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_local_mask_reads_the_hard_warped_target_as_the_consistency_term_does(impl, dtype):
    # Zero flow, so W(P_{t-1}) = P_{t-1} = [.4 .6 .4 .6]; every current pixel is foreground (0.9 > 0.3).
    # With the soft target all four previous values pass 0.3; the reference binarises W(P_{t-1}) at 0.5
    # first, so only the two 0.6 pixels are in m = fg_t * 1[1[W(P_{t-1}) > 0.5] > thr].
    prev = torch.tensor([0.4, 0.6, 0.4, 0.6], dtype=dtype)
    probs = torch.stack([prev, torch.full_like(prev, 0.9)]).view(1, 2, 1, 1, 4)
    features = torch.arange(8, dtype=dtype).view(1, 2, 1, 1, 4)
    flows = torch.zeros(1, 2, 2, 1, 4, dtype=dtype)
    thr = torch.tensor([0.3], dtype=dtype)
    backend = ops if impl == "fused" else ops.reference
    _, v_cur_soft, mass_soft = backend.local_prototypes(probs, features, flows, thr, hard_target=False)
    _, v_cur_hard, mass_hard = backend.local_prototypes(probs, features, flows, thr, hard_target=True)
    assert mass_soft.item() == 4 and mass_hard.item() == 2
    # Current-frame features 4..7: the soft mask averages all four, the hard one pixels 1 and 3 (5, 7).
    assert v_cur_soft.item() == pytest.approx(5.5) and v_cur_hard.item() == pytest.approx(6.0)


def test_empty_masks_give_terms_of_one():
    d = make_case("empty")
    _, terms = losses.DTCObjective("dtc")(d["z"], d["loc"], d["glob"], d["zt"], d["y"], d["images"], d["flows"])
    assert terms["loc"].item() == pytest.approx(1.0, abs=1e-12)  # no foreground: zero local prototypes
    d = make_case("allfg")
    _, terms = losses.DTCObjective("dtc")(d["z"], d["loc"], d["glob"], d["zt"], d["y"], d["images"], d["flows"])
    assert terms["glob"].item() == pytest.approx(1.0, abs=1e-12)  # no background: zero global prototypes


def test_zero_flow_identical_frames_give_zero_consistency_loss():
    d = make_case("zeroflow", T=3)
    z = d["z"][:, :1].expand(-1, 3, -1, -1, -1).contiguous()
    z = torch.where(z > 0, 30.0, -30.0).double()  # binary predictions: P equals its hard warp
    images = d["images"][:, :1].expand(-1, 3, -1, -1, -1).contiguous()
    for impl in IMPLS:
        loss = losses.temporal_consistency(z, images, d["flows"], impl=impl)
        assert loss.item() == pytest.approx(0.0, abs=1e-12)


def test_non_finite_features_outside_the_masks_do_not_leak():
    """The fused prototypes pool only masked pixels (local: foreground in both frames; global:
    background), so NaN/Inf features elsewhere leave the loss and the gradients finite, and equal to
    the composition's on the same features with those pixels zeroed."""
    B, T, H, W = 2, 3, 10, 12
    p = torch.full((B, T, 1, H, W), 0.1, dtype=torch.float64)
    p[..., W // 2:] = 0.9  # foreground: the right half of every frame
    flows = torch.zeros(B, T, 2, H, W, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(B, T, 4, H, W, generator=g, dtype=torch.float64)
    glob = torch.randn(B, T, 3, H, W, generator=g, dtype=torch.float64)
    loc_bad, glob_bad = loc.clone(), glob.clone()
    loc_bad[..., : W // 2] = float("nan")   # outside the local (foreground) mask
    glob_bad[..., W // 2:] = float("inf")   # outside the global (background) mask
    loc_bad.requires_grad_(True)
    glob_bad.requires_grad_(True)
    loss, _ = losses.prototype_alignment(p, loc_bad, glob_bad, flows, impl="fused")
    g_loc, g_glob = torch.autograd.grad(loss, (loc_bad, glob_bad))
    assert torch.isfinite(loss) and torch.isfinite(g_loc).all() and torch.isfinite(g_glob).all()
    loc_ok = loc.masked_fill(torch.zeros_like(loc, dtype=torch.bool).index_fill_(-1, torch.arange(W // 2), True), 0)
    glob_ok = glob.masked_fill(torch.zeros_like(glob, dtype=torch.bool).index_fill_(-1, torch.arange(W // 2, W), True), 0)
    loc_ok.requires_grad_(True)
    glob_ok.requires_grad_(True)
    expected, _ = losses.prototype_alignment(p, loc_ok, glob_ok, flows, impl="reference")
    e_loc, e_glob = torch.autograd.grad(expected, (loc_ok, glob_ok))
    close(loss, expected, torch.float64)
    grad_close(g_loc, e_loc, torch.float64)
    grad_close(g_glob, e_glob, torch.float64)


@pytest.mark.parametrize("confidence", ["mean_abs", "abs_sum"])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("occlusion", [False, True])
def test_float32_row_path_matches_float64_with_non_finite_flows(confidence, soft, occlusion):
    """The CPU consistency kernel has a vectorised float32 row path and a per-pixel float64 path: they
    agree (maps, loss, mass, gradients) with non-finite flow vectors (no correspondence: M = 0),
    flows pointing outside, odd widths, and every switch."""
    d = make_case("random", B=2, T=3, H=9, W=37, seed=11)
    flows, flows_bw = d["flows"].clone(), d["flows_bw"].clone()
    flows[0, 1, 0, 2, 5] = float("nan")
    flows[1, 2, 1, 4, 30] = float("inf")
    flows[1, 1, 0, 0, :] = 40.0  # far outside: border clamping
    outs = {}
    for dtype in (torch.float32, torch.float64):
        z = d["z"].to(dtype).requires_grad_(True)
        loss, mass, conf, target = ops.temporal_consistency(
            z, d["images"].to(dtype), flows.to(dtype), flows_bw.to(dtype) if occlusion else None, [0.5, 2.0, 1.0],
            7.0, confidence, soft, True, True)
        (g,) = torch.autograd.grad(loss.sum(), z)
        outs[dtype] = [t.detach().double() for t in (loss, mass, conf, target, g)]
    for name, a, b in zip(("loss", "mass", "conf", "target", "grad"), outs[torch.float32], outs[torch.float64]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    conf = outs[torch.float32][2]
    assert conf[0, 0, 0, 2, 5] == 0 and conf[1, 1, 0, 4, 30] == 0  # pair index = frame - 1


@pytest.mark.parametrize("confidence", ["mean_abs", "abs_sum"])
@pytest.mark.parametrize("soft", [False, True])
def test_float32_gathers_at_the_right_and_bottom_borders_match_float64(confidence, soft):
    """The float32 row path gathers eight pixels at a time, reading a pixel's left and right taps as one
    pair unless a tap is clamped onto the last column (then tap by tap); rows clamped onto the last
    row read it twice. Both against the float64 per-pixel path, with non-finite flows in the blocks."""
    d = make_case("random", B=2, T=3, H=10, W=43, seed=5)
    flows = d["flows"].clone()
    flows[0, 1, 0, 3, :] = -45.0  # every tap clamped onto the last column
    flows[0, 2, 0, 4, 16:20] = -60.0  # half a block clamped onto it
    flows[1, 1, 0, :, 42] = -0.5  # the last column half a pixel past the right border
    flows[1, 2, 1, 7, :] = -12.0  # a row below the bottom
    flows[1, 1, 1, 9, :] = -0.25  # the last row a quarter pixel below it
    flows[0, 1, 0, 5, 9] = float("nan")
    flows[1, 2, 1, 6, 24] = -float("inf")
    outs = {}
    for dtype in (torch.float32, torch.float64):
        z = d["z"].to(dtype).requires_grad_(True)
        loss, mass, conf, target = ops.temporal_consistency(
            z, d["images"].to(dtype), flows.to(dtype), None, [0.5, 2.0, 1.0], 7.0, confidence, soft, True, True)
        (g,) = torch.autograd.grad(loss.sum(), z)
        outs[dtype] = [t.detach().double() for t in (loss, mass, conf, target, g)]
    for name, a, b in zip(("loss", "mass", "conf", "target", "grad"), outs[torch.float32], outs[torch.float64]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    conf = outs[torch.float32][2]
    assert conf[0, 0, 0, 5, 9] == 0 and conf[1, 1, 0, 6, 24] == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("soft", [False, True])
def test_consistency_backward_drivers_agree_exactly(dtype, soft):
    """The CPU backward runs per sample (each pair's rows evaluated once) when the batch covers the
    threads and per frame otherwise; both add every frame's contributions in the same order."""
    d = make_case("random", B=2, T=4, H=9, W=21, seed=7)
    z = d["z"].to(dtype)
    args = (d["images"].to(dtype), d["flows"].to(dtype), None, [1.0, 1.0, 1.0], 7.0, "mean_abs", soft, True)
    loss, mass, _, _ = torch.ops.dtc.temporal_consistency(z, *args, False)
    grad_loss = torch.rand_like(loss) + 0.5
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 8):  # B >= 1 thread: per sample; B < 8 threads: per frame
            torch.set_num_threads(n)
            grads.append(torch.ops.dtc.temporal_consistency_backward(grad_loss, mass, z, *args))
    finally:
        torch.set_num_threads(threads)
    assert grads[0].abs().sum() > 0
    assert torch.equal(grads[0], grads[1])
