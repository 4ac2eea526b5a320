"""Simulator properties required by the issue: determinism, exact masks/flow, Rayleigh speckle,
a steadier gland, plus the physics that must be visible (shadows, fov, flow on the images)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dtc.data.synth import SynthConfig, TRUSScene, simulate_video


def backward_warp(a: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """W(A)(p) = A(p - F(p)), bilinear, border padding, align_corners=True (docs/method.md §2).

    a: (H, W) or (C, H, W); flow: (2, H, W) pixels, channel 0 = dx."""
    at = torch.as_tensor(a, dtype=torch.float64)
    if at.ndim == 2:
        at = at[None]
    _, H, W = at.shape
    fl = torch.as_tensor(flow, dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    sx, sy = xs - fl[0], ys - fl[1]
    grid = torch.stack([2 * sx / (W - 1) - 1, 2 * sy / (H - 1) - 1], dim=-1)[None]
    out = F.grid_sample(at[None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
    return out.numpy().squeeze(0) if np.ndim(a) == 2 else out.numpy()


def iou(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return (a & b).sum() / max((a | b).sum(), 1)


SMALL = dict(height=128, width=224, frames=12)


@pytest.fixture(scope="module", params=["axial", "sagittal"])
def video(request):
    return simulate_video(SynthConfig(**SMALL, motion=1.5), seed=7, view=request.param)


def test_deterministic_per_seed():
    cfg = SynthConfig(**SMALL)
    a, b = simulate_video(cfg, seed=3), simulate_video(cfg, seed=3)
    c = simulate_video(cfg, seed=4)
    for name in ("frames", "masks", "flows"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert np.abs(a.frames - c.frames).mean() > 0.05
    # frames are rendered independently: out-of-order rendering gives the same frame
    scene = TRUSScene(cfg, 3, "axial")
    f5, m5, fl5, _ = scene.render(5)
    scene.render(9)
    np.testing.assert_array_equal(f5, a.frames[5])
    np.testing.assert_array_equal(fl5, a.flows[5])


def test_shapes_ranges(video):
    T, H, W = SMALL["frames"], SMALL["height"], SMALL["width"]
    assert video.frames.shape == (T, H, W) and video.frames.dtype == np.float32
    assert video.masks.shape == (T, H, W) and set(np.unique(video.masks)) <= {0, 1}
    assert video.flows.shape == (T, 2, H, W)
    assert 0 <= video.frames.min() and video.frames.max() <= 1
    np.testing.assert_array_equal(video.flows[0], 0)
    assert not video.masks[:, ~video.fov].any(), "mask outside the field of view"
    assert (video.frames[:, ~video.fov] == 0).all()
    assert 0.03 < video.masks.mean() / video.fov.mean() < 0.5  # the gland is a sizeable part of the view
    assert np.abs(video.flows[1:]).max() > 0.3  # it moves


def test_mask_warped_by_gt_flow_matches_next_mask(video):
    H, W = video.fov.shape
    ys, xs = np.mgrid[0:H, 0:W]
    for t in range(1, len(video.frames)):
        flow = video.flows[t]
        warped = backward_warp(video.masks[t - 1].astype(np.float64), flow) > 0.5
        # inside the fov, where the source point was inside the fov too
        sx, sy = np.rint(xs - flow[0]).astype(int), np.rint(ys - flow[1]).astype(int)
        ok = (sx >= 0) & (sx < W) & (sy >= 0) & (sy < H)
        src_in = np.zeros_like(ok)
        src_in[ok] = video.fov[sy[ok], sx[ok]]
        region = video.fov & src_in
        score = iou(warped & region, video.masks[t].astype(bool) & region)
        assert score >= 0.98, f"frame {t}: IoU {score:.4f}"
    # the check has teeth: over a long gap (flow_from=0) the raw masks differ, the warped ones agree
    scene = TRUSScene(SynthConfig(**SMALL, motion=1.5), 7, video.view)
    _, mask_last, flow_long, _ = scene.render(len(video.frames) - 1, flow_from=0)
    warped = backward_warp(video.masks[0].astype(np.float64), flow_long) > 0.5
    assert iou(warped, mask_last) >= 0.97
    assert iou(video.masks[0], mask_last) < iou(warped, mask_last) - 0.01


def test_gt_flow_explains_image_motion(video):
    # speckle decorrelates and noise is added, but the flow-compensated previous frame must match
    # the current one better than the uncompensated one
    for t in range(1, len(video.frames)):
        cur, prev = video.frames[t], video.frames[t - 1]
        warped = backward_warp(prev.astype(np.float64), video.flows[t])
        inner = video.fov & (np.abs(video.flows[t]).sum(0) > 0)
        err_warp = np.abs(warped - cur)[inner].mean()
        err_none = np.abs(prev - cur)[inner].mean()
        assert err_warp < err_none


def test_flow_is_the_composition_of_exact_maps():
    cfg = SynthConfig(**SMALL, motion=2.0)
    scene = TRUSScene(cfg, 11, "axial")
    pts = scene.cart_nodes
    for t in (1, 6, 11):
        u = scene.inverse_map(pts, t)
        np.testing.assert_allclose(scene.forward_map(u, t), pts, atol=5e-3)
    # the full-resolution flow agrees with p - Phi_{t-1}(Phi_t^-1(p)) at arbitrary pixels
    _, _, flow, _ = scene.render(6)
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(0, cfg.height, 200), rng.integers(0, cfg.width, 200)
    p = np.stack([xs, ys], -1).astype(np.float32)
    exact = p - scene.forward_map(scene.inverse_map(p, 6), 5)
    np.testing.assert_allclose(flow[:, ys, xs].T, exact, atol=0.03)


def test_speckle_envelope_is_rayleigh():
    cfg = SynthConfig(height=128, width=224, frames=3, phantom=True, keep_envelope=True, noise=0.0)
    ratios = []
    for seed in range(3):
        env = simulate_video(cfg, seed=seed).envelope
        band = env[:, 10:-10, 10:-10]  # away from the beam-grid borders
        # with uniform attenuation the TGC-corrected envelope is stationary; check per depth band
        for rows in np.array_split(np.arange(band.shape[1]), 4):
            e = band[:, rows].ravel()
            ratios.append(e.mean() / e.std())
    ratio = float(np.mean(ratios))
    assert abs(ratio - 1.913) < 0.1, ratio
    assert max(abs(r - 1.913) for r in ratios) < 0.15


def test_gland_moves_less_than_background():
    gland, background = [], []
    for seed in range(4):
        for view in ("axial", "sagittal"):
            v = simulate_video(SynthConfig(**SMALL), seed=seed, view=view)
            mag = np.hypot(v.flows[1:, 0], v.flows[1:, 1])
            m = v.masks[1:].astype(bool)
            bg = np.broadcast_to(v.fov, m.shape) & ~m
            gland.append(mag[m].mean())
            background.append(mag[bg].mean())
    assert np.mean(gland) < 0.9 * np.mean(background), (np.mean(gland), np.mean(background))


def test_calcifications_cast_shadows():
    cfg = SynthConfig(**SMALL, shadow_rate=4.0, motion=0.0)
    scene = TRUSScene(cfg, 5, "axial")
    assert scene.calcifications, "shadow_rate=4 should place calcifications"
    frame, _, _, env = scene.render(0)
    no_calc = TRUSScene(SynthConfig(**SMALL, shadow_rate=0.0, motion=0.0), 5, "axial")
    assert not no_calc.calcifications
    # beyond each calcification (deeper along its beam) the image is darker than without it
    cx, cy, _ = scene.calcifications[0]
    r = np.hypot(cx - scene.cx, scene.apex_y - cy)
    th = np.arctan2(cx - scene.cx, scene.apex_y - cy)
    behind = [(int(round(scene.cx + rr * np.sin(th))), int(round(scene.apex_y - rr * np.cos(th))))
              for rr in np.linspace(r + 8, r + 30, 12)]
    shade = np.mean([frame[y, x] for x, y in behind if 0 <= y < cfg.height])
    f_ref, _, _, _ = no_calc.render(0)
    ref = np.mean([f_ref[y, x] for x, y in behind if 0 <= y < cfg.height])
    assert shade < ref - 0.1, (shade, ref)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="views"):
        SynthConfig(views=("coronal",))
    with pytest.raises(ValueError, match="size"):
        SynthConfig(height=8)
    with pytest.raises(ValueError, match="too strong"):
        TRUSScene(SynthConfig(**SMALL, motion=20.0), 0, "axial")
