"""Soft foreground masks: oracles O-M1 (box Gaussian), O-M2 (EDT Gaussian is 1 on every component),
O-M3 (moment Gaussian of a filled ellipse = box Gaussian of its box), the hard mask, boxes and bad input."""
from __future__ import annotations

import math

import pytest
import torch

from dtc.distill import masks


def _ellipse(h, w, cx, cy, a, b):
    y = torch.arange(h, dtype=torch.float64)[:, None]
    x = torch.arange(w, dtype=torch.float64)[None, :]
    return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0


def test_o_m1_box_gaussian_centre_and_edge_midpoints():
    # stride 1 puts cell centres on pixel centres; the box spans an even number of pixels around 15.5
    box = torch.tensor([[7.5, 5.5, 23.5, 25.5]])  # w = 16, h = 20, centre (15.5, 15.5)
    m = masks.box_gaussian(box, (40, 40), 1, beta=0.25)
    # evaluate analytically at the exact points with a stride whose cell centres land on them: use the
    # formula's own evaluation through a shifted box so the centre falls on a cell centre
    shifted = box - 0.5  # centre (15, 15), edges x 7, 23 and y 5, 25 on integer coordinates
    m = masks.box_gaussian(shifted, (40, 40), 1, beta=0.25)
    assert m[15, 15] == pytest.approx(1.0, abs=1e-12)
    for y, x in [(15, 7), (15, 23), (5, 15), (25, 15)]:
        assert m[y, x] == pytest.approx(math.exp(-2), abs=1e-12)
    assert m[5, 7] == pytest.approx(math.exp(-4), abs=1e-12)


def test_o_m1_max_combine_is_idempotent_for_duplicate_boxes():
    box = torch.tensor([[3.5, 4.5, 20.5, 12.5], [10.0, 10.0, 30.0, 28.0]])
    once = masks.box_gaussian(box, (8, 8), 4)
    twice = masks.box_gaussian(torch.cat([box, box[:1]]), (8, 8), 4)
    assert torch.equal(once, twice)
    summed = masks.box_gaussian(torch.cat([box[:1], box[:1]]), (8, 8), 4, combine="sum")
    assert torch.allclose(summed, (2 * masks.box_gaussian(box[:1], (8, 8), 4)).clamp(max=1))


def test_box_sigma_floor_keeps_a_tiny_box_visible_on_a_coarse_level():
    m = masks.box_gaussian(torch.tensor([[16.5, 16.5, 17.5, 17.5]]), (4, 4), 8)
    assert m.max() > 0.5  # without the floor (sigma = 0.25 px) every cell centre would read ~0


def test_o_m2_edt_gaussian_is_one_inside_every_component_and_decays_outside():
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask |= _ellipse(64, 64, 16, 16, 6, 6)
    mask |= _ellipse(64, 64, 45, 40, 10, 7)
    mask[60, 2] = True
    full = masks.edt_gaussian(mask, 1, max_components=None)
    assert torch.all(full[mask] == 1.0)
    assert torch.all(full[~mask] < 1.0)
    # a disc of radius r with gamma = 0.5: e^-2 at distance r outside its boundary (sigma = r / 2)
    disc = _ellipse(64, 64, 32, 32, 10, 10)
    r = math.sqrt(float(disc.sum()) / math.pi)
    m = masks.edt_gaussian(disc, 1)
    d = 0.0
    for x in range(43, 64):
        if not disc[32, x]:
            d = x - 42  # distance to the last disc pixel (32, 42)
            if abs(d - r) < 0.6:
                assert m[32, x].item() == pytest.approx(math.exp(-d * d / (2 * (r / 2) ** 2)), rel=1e-12)
                break


def test_edt_gaussian_levels_are_area_averages_and_union_mode():
    mask = _ellipse(32, 32, 12, 14, 7, 5)
    full = masks.edt_gaussian(mask, 1)
    level = masks.edt_gaussian(mask, 4)
    assert level.shape == (8, 8)
    assert torch.allclose(level, full.reshape(8, 4, 8, 4).mean((1, 3)), atol=1e-12)
    union = masks.edt_gaussian(mask, 1, edt_mode="union")
    assert torch.allclose(union, full)  # one component: the two modes agree


@pytest.mark.parametrize("a,b,tol", [(20, 30, 0.02), (40, 25, 0.02), (10, 15, 0.03)])
def test_o_m3_moment_gaussian_of_an_ellipse_is_the_box_gaussian_of_its_box(a, b, tol):
    h, w = 2 * b + 24, 2 * a + 24
    ellipse = _ellipse(h, w, a + 11.3, b + 12.6, a, b)
    box = masks.component_boxes([ellipse])
    moment = masks.moment_gaussian(ellipse, 1)
    boxed = masks.box_gaussian(box, (h, w), 1, beta=0.25)
    assert (moment - boxed).abs().max() < tol


def test_moment_falls_back_to_the_box_for_tiny_components():
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[5, 6] = mask[5, 7] = True
    assert torch.equal(masks.moment_gaussian(mask, 4), masks.box_gaussian(masks.component_boxes([mask]), (4, 4), 4))


def test_components_are_eight_connected_and_sorted_by_area():
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[0, 0] = mask[1, 1] = True       # diagonal neighbours: one component of 2
    mask[5:8, 5:8] = True                # 9
    mask[0, 8] = True                    # 1
    parts = masks.components(mask)
    assert [int(p.sum()) for p in parts] == [9, 2, 1]
    assert len(masks.components(mask, max_components=2)) == 2
    box = masks.component_boxes(parts[:1])
    assert box.tolist() == [[4.5, 4.5, 7.5, 7.5]]  # pixel extent: width 3 = the pixel count


def test_soft_foreground_modes_shapes_and_empty_frames():
    mask = torch.zeros(2, 1, 32, 48)
    mask[0, 0, 8:20, 10:30] = 1
    for mode in masks.MODES:
        levels = masks.soft_foreground(mask, strides=[4, 8, 16], mode=mode)
        assert [tuple(m.shape) for m in levels] == [(2, 1, 8, 12), (2, 1, 4, 6), (2, 1, 2, 3)]
        for m in levels:
            assert m.dtype == torch.float32 and m.min() >= 0 and m.max() <= 1
            assert torch.all(m[1] == 0)  # the empty frame
            assert m[0].max() > 0.4  # the lesion covers 44% of the coarsest cell it touches most
    hard = masks.soft_foreground(mask, strides=[4], mode="hard")[0]
    assert torch.equal(hard[0, 0], mask[0, 0].reshape(8, 4, 12, 4).mean((1, 3)))


def test_soft_foreground_from_boxes():
    boxes = [torch.tensor([[9.5, 7.5, 29.5, 19.5]]), torch.zeros(0, 4)]
    box_levels = masks.soft_foreground(boxes=boxes, strides=[4, 8], image_size=(32, 48), mode="box")
    hard_levels = masks.soft_foreground(boxes=boxes, strides=[4], image_size=(32, 48), mode="hard")
    assert box_levels[0].shape == (2, 1, 8, 12) and torch.all(box_levels[1][1] == 0)
    mask = torch.zeros(32, 48)
    mask[8:20, 10:30] = 1
    assert torch.allclose(hard_levels[0][0, 0], mask.reshape(8, 4, 12, 4).mean((1, 3)))


def test_bad_input():
    with pytest.raises(ValueError, match="mode must be one of"):
        masks.soft_foreground(torch.zeros(1, 1, 16, 16), strides=[4], mode="gauss")
    with pytest.raises(ValueError, match="exactly one of mask"):
        masks.soft_foreground(strides=[4])
    with pytest.raises(ValueError, match="multiple of the stride 5"):
        masks.soft_foreground(torch.zeros(1, 1, 16, 16), strides=[5])
    with pytest.raises(ValueError, match="boxes need image_size"):
        masks.soft_foreground(boxes=[torch.zeros(0, 4)], strides=[4], mode="box")
    with pytest.raises(ValueError, match="boxes support mode"):
        masks.soft_foreground(boxes=[torch.zeros(0, 4)], strides=[4], image_size=(16, 16), mode="edt")
    with pytest.raises(ValueError, match="x2 >= x1"):
        masks.box_gaussian(torch.tensor([[5.0, 0.0, 1.0, 4.0]]), (4, 4), 4)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        masks.edt_gaussian(torch.zeros(1, 16, 16), 4)
