"""The C++ kernels (dtc._C.sunseg_frame) against the numpy reference."""
import numpy as np
import pytest
from scipy import ndimage

from dtc.metrics.functional import cpp_available, sunseg_frame

pytestmark = pytest.mark.skipif(not cpp_available(), reason="dtc._C is not built (make dev) or lacks the metric kernels")

SCALARS = ("Smeasure", "MAE", "adpEm", "adpFm")
CURVES = ("Em", "Fm", "Sen", "Spe", "Dice", "IoU")


def cases():
    rng = np.random.default_rng(42)
    out = []
    for seed, shape in enumerate([(64, 96), (37, 53), (256, 448), (5, 200)]):
        field = ndimage.gaussian_filter(rng.normal(size=shape), 4)
        gt = field > np.quantile(field, 0.7 + 0.05 * seed)
        pred = np.clip(ndimage.gaussian_filter(gt.astype(float), 2) + rng.normal(0, 0.2, shape), 0, 1)
        out.append((f"blob{seed}", pred, gt))
    shape = (40, 60)
    soft = rng.random(shape)
    out.append(("empty_gt", soft, np.zeros(shape, bool)))
    out.append(("full_gt", soft, np.ones(shape, bool)))
    out.append(("constant_pred", np.full(shape, 0.3), soft > 0.6))
    out.append(("perfect", (soft > 0.5).astype(float), soft > 0.5))
    out.append(("uint8_levels", np.round(soft * 255) / 255, soft > 0.4))
    single = np.zeros(shape, bool)
    single[7, 11] = True
    out.append(("one_pixel_object", soft, single))
    out.append(("object_on_border", soft, np.pad(np.ones((10, 10), bool), ((0, 30), (0, 50)))))
    # Many background pixels equidistant from several object pixels: the nearest-pixel choice (and so the
    # weighted F) depends on the distance transform's tie-breaking, which must be scipy's.
    grid = np.zeros(shape, bool)
    grid[2::6, 3::8] = True
    out.append(("equidistant_ties", soft, grid))
    diamond = np.zeros(shape, bool)
    diamond[20, 30] = diamond[10, 30] = diamond[15, 25] = diamond[15, 35] = True
    out.append(("diamond_ties", soft, diamond))
    # The blur is computed on the object's bounding box only: thin objects on the edges and corners.
    line = np.zeros(shape, bool)
    line[5:35, 0] = True
    out.append(("edge_line", soft, line))
    corners = np.zeros(shape, bool)
    corners[0, 0] = corners[-1, -1] = corners[0, -1] = True
    out.append(("corner_pixels", soft, corners))
    return out


@pytest.mark.parametrize("name,pred,gt", cases(), ids=[c[0] for c in cases()])
def test_cpp_matches_numpy(name, pred, gt):
    a = sunseg_frame(pred, gt, backend="numpy")
    b = sunseg_frame(pred, gt, backend="cpp")
    for k in SCALARS:
        assert b[k] == pytest.approx(a[k], rel=1e-12, abs=1e-12), k
    for k in CURVES:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-12, atol=1e-12, err_msg=k)
    # Weighted F also depends on which object pixel the distance transform picks among equidistant ones;
    # our Felzenszwalb pass order (columns, then rows, keeping the first minimum) picks as scipy does here.
    assert b["wFmeasure"] == pytest.approx(a["wFmeasure"], rel=1e-12, abs=1e-12)


def test_cpp_rejects_bad_input():
    import torch

    from dtc.metrics.functional import _cpp_module

    core = _cpp_module()
    with pytest.raises(RuntimeError, match="gt must have pred's shape"):
        core.sunseg_frame(torch.zeros(4, 5, dtype=torch.float64), torch.zeros(4, 4, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match=r"probabilities in \[0, 1\]"):
        core.sunseg_frame(torch.full((4, 4), 2.0, dtype=torch.float64), torch.zeros(4, 4, dtype=torch.uint8))
