"""preset="reference" against a hand-computed case and against a from-scratch NumPy re-implementation of
its training-step loss (reference_step.py), written from docs/method.md §2 independently of dtc.

Two readings of the released code are pinned here: the foreground threshold is the order statistic
sort(P_t[b].flatten())[floor(0.7 N)] (no interpolation), and the local-prototype mask tests the
*binarised* warped previous prediction, m = fg_t * 1[W(P_{t-1}) > 0.5].
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dtc import losses, ops
from dtc.ops import reference as torch_reference

from . import reference_step
from .cases import make_case

IMPLS = ["fused", "reference"]
BACKENDS = {"fused": ops, "reference": torch_reference}


def hand_case():
    """B = 2 windows of T = 2 frames of 4 x 5 probabilities (N = 20), written out.

    Frame 1 of sample 0 holds k/20 at raster position k, frame 1 of sample 1 holds 0.30 + 0.03 j with
    j = 19 - k (reversed). Sorted, index floor(0.7 * 20) = 14 is 14/20 = 0.70 and 0.30 + 0.03*14 = 0.72,
    so thr = (0.70 + 0.72) / 2 = 0.71. (torch.quantile would interpolate at rank 0.7 * 19 = 13.3:
    0.665 and 0.699, mean 0.682.)
    """
    cur0 = [[0.00, 0.05, 0.10, 0.15, 0.20],
            [0.25, 0.30, 0.35, 0.40, 0.45],
            [0.50, 0.55, 0.60, 0.65, 0.70],
            [0.75, 0.80, 0.85, 0.90, 0.95]]
    cur1 = [[0.87, 0.84, 0.81, 0.78, 0.75],
            [0.72, 0.69, 0.66, 0.63, 0.60],
            [0.57, 0.54, 0.51, 0.48, 0.45],
            [0.42, 0.39, 0.36, 0.33, 0.30]]
    # Previous frames: values between 0.5 and thr decide between the binarised and the soft test.
    prev0 = [[0.1, 0.1, 0.1, 0.1, 0.1],
             [0.1, 0.1, 0.1, 0.1, 0.1],
             [0.1, 0.1, 0.1, 0.1, 0.1],
             [0.90, 0.60, 0.52, 0.30, 0.80]]
    prev1 = [[0.55, 0.20, 0.70, 0.95, 0.51],
             [0.65, 0.1, 0.1, 0.1, 0.1],
             [0.1, 0.1, 0.1, 0.1, 0.1],
             [0.1, 0.1, 0.1, 0.1, 0.1]]
    probs = torch.tensor([[prev0, cur0], [prev1, cur1]], dtype=torch.float64)[:, :, None]  # (2, 2, 1, 4, 5)
    return probs


def raster_features(B=2, T=2, H=4, W=5):
    """Channel 0 holds the raster index k of each pixel, channel 1 is 1: MAP gives (mean k over m, 1)."""
    k = torch.arange(H * W, dtype=torch.float64).view(H, W)
    f = torch.stack([k, torch.ones_like(k)])
    return f.expand(B, T, 2, H, W).contiguous()


@pytest.mark.parametrize("impl", IMPLS)
def test_hand_computed_threshold_is_the_order_statistic_at_floor_0_7_n(impl):
    probs = hand_case()
    thr = losses.foreground_threshold(probs, "percentile70", impl=impl)
    assert thr.shape == (1,)
    torch.testing.assert_close(thr, torch.tensor([0.71], dtype=torch.float64), rtol=0, atol=1e-15)
    # The threshold is a selection, not an interpolation, in float32 too.
    thr32 = losses.foreground_threshold(probs.float(), "percentile70", impl=impl)
    assert thr32.item() == (torch.tensor(0.70, dtype=torch.float32) + torch.tensor(0.72, dtype=torch.float32)).item() / 2


@pytest.mark.parametrize("impl", IMPLS)
def test_hand_computed_local_mask_binarises_the_warped_previous_prediction(impl):
    probs = hand_case()
    backend = BACKENDS[impl]
    thr = losses.foreground_threshold(probs, "percentile70", impl=impl)
    flows = torch.zeros(2, 2, 2, 4, 5, dtype=torch.float64)  # zero flow: W(P_0) = P_0
    feats = raster_features()
    # fg_1 (P_1 > 0.71): sample 0 is row 3 (k = 15..19); sample 1 is row 0 and (1, 0) (k = 0..5).
    # Hard target, 1[P_0 > 0.5]: sample 0 keeps k = 15, 16, 17, 19 (0.90, 0.60, 0.52, 0.80);
    # sample 1 keeps k = 0, 2, 3, 4, 5 (0.55, 0.70, 0.95, 0.51, 0.65).
    v_prev, v_cur, mass = backend.local_prototypes(probs, feats, flows, thr, False, hard_target=True)
    torch.testing.assert_close(mass, torch.tensor([[4.0], [5.0]], dtype=torch.float64), rtol=0, atol=0)
    expected = torch.tensor([[[67 / 4, 1.0]], [[14 / 5, 1.0]]], dtype=torch.float64)
    torch.testing.assert_close(v_cur, expected, rtol=0, atol=1e-14)
    torch.testing.assert_close(v_prev, expected, rtol=0, atol=1e-14)
    # Soft target, P_0 > 0.71: sample 0 keeps k = 15, 19 (0.90, 0.80); sample 1 keeps k = 3 (0.95).
    v_prev, v_cur, mass = backend.local_prototypes(probs, feats, flows, thr, False, hard_target=False)
    torch.testing.assert_close(mass, torch.tensor([[2.0], [1.0]], dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(v_cur, torch.tensor([[[17.0, 1.0]], [[3.0, 1.0]]], dtype=torch.float64),
                               rtol=0, atol=1e-14)


@pytest.mark.parametrize("impl", IMPLS)
def test_hand_computed_reference_prototype_loss(impl):
    # The whole L_proto of the hand case with one feature map per scale that makes every prototype
    # easy to write down: local features (k, 1) on frame 1 and (1, k) on frame 0; global features equal
    # to the local ones at full size.
    probs = hand_case()
    flows = torch.zeros(2, 2, 2, 4, 5, dtype=torch.float64)
    feats = raster_features().clone()
    feats[:, 0] = feats[:, 0].flip(1)  # frame 0: channels swapped -> (1, k)
    loss, parts = losses.prototype_alignment(probs, feats, feats, flows, threshold="percentile70",
                                             warped_target="hard", rescale_flow=False, impl=impl)

    def one_minus_cos(a, b):
        a, b = np.asarray(a, float), np.asarray(b, float)
        return 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))

    # Local: v_cur = (mean k, 1), v_prev = (1, mean k) over m: sample 0 mean k = 16.75, sample 1 2.8.
    loc = (one_minus_cos([16.75, 1], [1, 16.75]) + one_minus_cos([2.8, 1], [1, 2.8])) / 2
    # Global: background 1 - 1[P > 0.71] of each frame. Sample 0: frame 1 has k = 0..14 (mean 7), frame 0
    # everything but k = 15, 19 (0.90, 0.80): 18 pixels, sum k = 190 - 34 = 156. Sample 1: frame 1 has
    # k = 6..19 (mean 12.5), frame 0 everything but k = 3 (0.95): sum k = 187 over 19.
    glob = (one_minus_cos([7, 1], [1, 156 / 18]) + one_minus_cos([12.5, 1], [1, 187 / 19])) / 2
    w_fg = float(probs[:, 1].mean())
    expected = (1 - w_fg) * loc + w_fg * glob
    assert abs(parts["loc"].item() - loc) < 1e-12
    assert abs(parts["glob"].item() - glob) < 1e-12
    assert abs(loss.item() - expected) < 1e-12


# Sizes where the order statistic at floor(0.7 N) differs from torch.quantile's interpolation at
# 0.7 (N - 1), window lengths 2-4, local features at full size and smaller, global at two sizes.
SIZES = [
    dict(B=2, T=3, H=9, W=11, local_size=None, global_size=(3, 4)),
    dict(B=3, T=2, H=8, W=10, local_size=(4, 5), global_size=(2, 3)),
    dict(B=2, T=4, H=7, W=12, local_size=(5, 9), global_size=(2, 2)),
]


def numpy_inputs(d):
    return [d[k].double().numpy() for k in ("z", "loc", "glob", "zt", "y", "images", "flows")]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", range(len(SIZES)))
def test_reference_objective_matches_the_from_scratch_step_loss(size, impl):
    d = make_case("random", seed=100 + size, **SIZES[size])
    objective = losses.DTCObjective("reference", implementation=impl)
    total, terms = objective(d["z"], d["loc"], d["glob"], d["zt"], d["y"], d["images"], d["flows"])
    expected = reference_step.step_loss(*numpy_inputs(d))
    for name in ("seg", "kd", "con", "proto", "loc", "glob"):
        assert abs(terms[name].item() - expected[name]) < 1e-10, (name, terms[name].item(), expected[name])
    assert abs(total.item() - expected["total"]) < 1e-10


@pytest.mark.parametrize("size", range(len(SIZES)))
def test_the_random_cases_tell_the_readings_apart(size):
    # Without this the comparison above could pass under either reading: at these sizes the
    # interpolated quantile differs from the order statistic, and some warped previous probabilities
    # fall between 0.5 and the threshold (where the binarised and the soft mask test disagree).
    d = make_case("random", seed=100 + size, **SIZES[size])
    p = torch.sigmoid(d["z"])
    n = p.shape[-1] * p.shape[-2]
    assert int(0.7 * n) != 0.7 * (n - 1)
    thr = losses.foreground_threshold(p, "percentile70", impl="reference")
    interpolated = torch.quantile(p[:, 1:].flatten(2), 0.7, dim=2).mean(0)
    assert (thr - interpolated).abs().min() > 1e-4
    between = 0
    for t in range(1, p.shape[1]):
        warped = torch_reference.warp(p[:, t - 1], d["flows"][:, t])
        fg = p[:, t] > thr[t - 1]
        between += int((fg & ((warped > 0.5) != (warped > thr[t - 1]))).sum())
    assert between > 0
