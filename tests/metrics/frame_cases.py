"""Prepared SUN-SEG frames (prediction in [0, 1], bool mask) that every backend must score exactly as
the numpy reference does: random blobs of several sizes and aspect ratios, empty and full masks,
constant and perfect predictions, values on the E/F and medical thresholds, thin, one-pixel, border
and corner objects, distance-transform ties, and tiny or one-row/one-column frames."""
import numpy as np
from scipy import ndimage

from dtc.metrics import reference as ref


def blob_frame(rng, shape, quantile, smooth=3.0, noise=0.2):
    field = ndimage.gaussian_filter(rng.normal(size=shape), smooth)
    gt = field > np.quantile(field, quantile)
    pred = np.clip(ndimage.gaussian_filter(gt.astype(float), 2) + rng.normal(0, noise, shape), 0, 1)
    return pred, gt


def cases():
    rng = np.random.default_rng(7)
    out = []
    for i, shape in enumerate([(64, 96), (37, 53), (31, 17), (5, 200), (200, 5), (256, 448)]):
        pred, gt = blob_frame(rng, shape, 0.6 + 0.08 * i)
        out.append((f"blob{shape[0]}x{shape[1]}", pred, gt))
    shape = (40, 60)
    soft = rng.random(shape)
    out.append(("empty_gt", soft, np.zeros(shape, bool)))
    out.append(("full_gt", soft, np.ones(shape, bool)))
    out.append(("empty_gt_zero_pred", np.zeros(shape), np.zeros(shape, bool)))
    out.append(("full_gt_one_pred", np.ones(shape), np.ones(shape, bool)))
    mixed = soft > 0.6  # every quadrant holds object and background
    for c in (0.0, 0.3, 0.5, 1.0):
        out.append((f"constant_pred_{c}", np.full(shape, c), mixed))
    out.append(("perfect", mixed.astype(float), mixed))
    out.append(("inverted", (~mixed).astype(float), mixed))
    # Predictions on the 8-bit grid: many pixels exactly on E/F and medical thresholds.
    out.append(("uint8_levels", np.floor(soft * 256).clip(0, 255) / 255, soft > 0.4))
    out.append(("medical_threshold_values", ref.MEDICAL_THRESHOLDS[rng.integers(0, 256, shape)], soft > 0.5))
    one_row = np.zeros(shape, bool)
    one_row[17, 8:50] = True
    out.append(("one_row_object", soft, one_row))
    one_col = np.zeros(shape, bool)
    one_col[3:30, 44] = True
    out.append(("one_column_object", soft, one_col))
    single = np.zeros(shape, bool)
    single[7, 11] = True
    out.append(("one_pixel_object", soft, single))
    out.append(("object_on_border", soft, np.pad(np.ones((10, 10), bool), ((0, 30), (0, 50)))))
    corners = np.zeros(shape, bool)
    corners[0, 0] = corners[-1, -1] = corners[0, -1] = True
    out.append(("corner_pixels", soft, corners))
    # The C++ blur covers the object's bounding box only: a thin object on an edge.
    line = np.zeros(shape, bool)
    line[5:35, 0] = True
    out.append(("edge_line", soft, line))
    # Background pixels equidistant from several object pixels: which one is "nearest" decides the
    # weighted F, and must be scipy's choice.
    grid = np.zeros(shape, bool)
    grid[2::6, 3::8] = True
    out.append(("equidistant_grid", soft, grid))
    diamond = np.zeros(shape, bool)
    diamond[20, 30] = diamond[10, 30] = diamond[15, 25] = diamond[15, 35] = True
    out.append(("diamond_ties", soft, diamond))
    checker = (np.add.outer(np.arange(40), np.arange(60)) % 4 == 0)
    out.append(("diagonal_stripes", soft, checker))
    ring = np.zeros((41, 41), bool)
    yy, xx = np.mgrid[:41, :41]
    ring[((yy - 20) ** 2 + (xx - 20) ** 2 >= 100) & ((yy - 20) ** 2 + (xx - 20) ** 2 <= 121)] = True
    out.append(("ring_centre_ties", rng.random((41, 41)), ring))
    # Tiny and degenerate frames: one-pixel quadrants (NaN SSIM), one-row and one-column images.
    out.append(("tiny_3x3", rng.random((3, 3)), np.array([[0, 1, 0], [1, 1, 0], [0, 0, 0]], bool)))
    out.append(("tiny_3x3_centre", rng.random((3, 3)), np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], bool)))
    out.append(("tiny_2x2", rng.random((2, 2)), np.array([[1, 0], [0, 0]], bool)))
    out.append(("one_pixel_image", np.array([[0.4]]), np.array([[True]])))
    out.append(("row_image", rng.random((1, 9)), np.array([[0, 0, 1, 1, 0, 0, 0, 1, 0]], bool)))
    out.append(("column_image", rng.random((9, 1)), np.array([[0, 1, 1, 0, 0, 0, 0, 1, 0]], bool).T))
    return out


CASES = cases()
