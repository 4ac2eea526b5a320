"""Temporal metrics: warp convention, TC, warping IoU/error, occlusion check, flicker."""
import numpy as np
import pytest

from dtc.metrics import temporal as tm


def disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(float)


def const_flow(shape, dx, dy):
    f = np.zeros((2, *shape))
    f[0], f[1] = dx, dy
    return f


def test_zero_flow_is_identity():
    a = np.random.default_rng(0).random((17, 23))
    np.testing.assert_allclose(tm.warp_map(a, np.zeros((2, 17, 23))), a, atol=1e-12)


def test_warp_direction_and_units():
    """W(A)(p) = A(p - F(p)): content of frame t-1 moved by +F appears aligned in frame t."""
    shape = (40, 50)
    prev = disk(shape, 20, 20, 6)
    cur = disk(shape, 22, 23, 6)  # moved by dx = 3, dy = 2
    warped = tm.warp_map(prev, const_flow(shape, 3, 2))
    np.testing.assert_allclose(warped, cur, atol=1e-12)
    assert tm.flow_temporal_consistency(cur, prev, const_flow(shape, 3, 2)) == pytest.approx(1.0)
    assert tm.warping_iou(cur, prev, const_flow(shape, 3, 2)) == 1.0
    assert tm.warping_error(cur, prev, const_flow(shape, 3, 2)) == pytest.approx(0.0, abs=1e-20)
    # the opposite sign misaligns
    assert tm.warping_iou(cur, prev, const_flow(shape, -3, -2)) < 0.5


def test_half_pixel_shift_is_bilinear_and_border_padded():
    a = np.tile(np.arange(6, dtype=float), (3, 1)) / 5.0
    w = tm.warp_map(a, const_flow(a.shape, 0.5, 0))
    np.testing.assert_allclose(w[:, 1:], (a[:, 1:] + a[:, :-1]) / 2, atol=1e-12)
    np.testing.assert_allclose(w[:, 0], a[:, 0], atol=1e-12)  # sample at x = -0.5 clamps to the border


def test_custom_warp_callable_is_used():
    calls = []

    def fake_warp(image, flow):
        calls.append(tuple(image.shape))
        return image * 0

    shape = (8, 8)
    p = disk(shape, 4, 4, 2)
    assert tm.flow_temporal_consistency(p, p, np.zeros((2, *shape)), warp=fake_warp) == pytest.approx(1 - p.mean())
    assert calls == [(1, 1, 8, 8)]


def test_tc_without_motion_compensation():
    a = np.full((4, 4), 0.2)
    b = np.full((4, 4), 0.5)
    assert tm.temporal_consistency(a, a) == 1.0
    assert tm.temporal_consistency(b, a) == pytest.approx(0.7)


def test_occlusion_mask_forward_backward():
    shape = (20, 30)
    fw = const_flow(shape, 2.0, -1.0)
    assert tm.occlusion_mask(fw, -fw).all()
    assert not tm.occlusion_mask(fw, fw).any()  # inconsistent by 2*|F|^2 = 10 > 0.5 + small
    # the mask removes the inconsistent pixels from the warping error
    prev, cur = disk(shape, 10, 10, 4), disk(shape, 9, 12, 4)
    bw = -fw.copy()
    bw[:, :, 20:] = fw[:, :, 20:]  # corrupt the right part
    m = tm.occlusion_mask(fw, bw)
    assert m[:, :18].all() and not m[:, 22:].any()
    e = tm.warping_error(cur, prev, fw, flow_backward=bw)
    assert e == pytest.approx(0.0, abs=1e-20)
    assert np.isnan(tm.warping_error(cur, prev, fw, mask=np.zeros(shape)))


def test_flicker():
    still = np.stack([disk((20, 20), 10, 10, 4)] * 5)
    assert tm.area_flicker(still) == pytest.approx(0.0, abs=1e-15)
    moving = np.stack([disk((20, 20), 10, 10, r) for r in (2, 3, 4, 5, 6)])
    areas = (moving > 0.5).mean(axis=(1, 2))
    assert tm.area_flicker(moving) == pytest.approx(np.std(areas))
    assert tm.dice_flicker(still, still > 0.5) == pytest.approx(0.0, abs=1e-15)
    assert tm.dice_flicker(moving, np.stack([disk((20, 20), 10, 10, 4) > 0.5] * 5)) > 0.05


def test_flow_shape_error_names_argument():
    with pytest.raises(ValueError, match=r"flow must have shape \(2, H, W\)"):
        tm.flow_temporal_consistency(np.zeros((5, 5)), np.zeros((5, 5)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="flow contains NaN"):
        tm.warping_iou(np.zeros((5, 5)), np.zeros((5, 5)), np.full((2, 5, 5), np.nan))
