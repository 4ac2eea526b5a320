"""Properties of the frame metrics on random masks, and independent brute-force checks."""
import numpy as np
import pytest
from scipy import ndimage

from dtc.metrics import reference as ref
from dtc.metrics.functional import binary_metrics, hd95_assd, sunseg_frame


def blob_pair(seed, shape=(64, 96)):
    """A smooth random object mask and a noisy soft prediction of it."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), 6)
    gt = field > np.quantile(field, 0.8)
    pred = np.clip(ndimage.gaussian_filter(gt.astype(float), 2) + rng.normal(0, 0.15, shape), 0, 1)
    return pred, gt


@pytest.mark.parametrize("seed", range(3))
def test_perfect_prediction(seed):
    _, gt = blob_pair(seed)
    r = sunseg_frame(gt.astype(float), gt, backend="numpy")
    n = gt.size
    # 1e-9: the papers' eps guards in the denominators (2.2e-16 over variances of order 1e-4..1e-1)
    assert r["Smeasure"] == pytest.approx(1.0, abs=1e-9)
    assert r["wFmeasure"] == pytest.approx(1.0, abs=1e-9)
    assert r["MAE"] == 0.0
    # Every threshold above 0 recovers the mask exactly; the E-measure's sum over N pixels is divided by
    # N - 1 (Fan et al.'s normalisation), hence N / (N - 1).
    np.testing.assert_allclose(r["Em"][:-1], n / (n - 1), rtol=1e-12)
    np.testing.assert_array_equal(r["Dice"][:-1], 1.0)
    np.testing.assert_array_equal(r["Sen"][:-1], 1.0)
    np.testing.assert_array_equal(r["IoU"][:-1], 1.0)
    assert r["Dice"][-1] < 1.0  # threshold 0 marks every pixel
    b = binary_metrics(gt.astype(float), gt)
    assert b["Dice"] == b["IoU"] == b["sensitivity"] == b["precision"] == b["accuracy"] == 1.0
    assert hd95_assd(gt.astype(float), gt) == (0.0, 0.0)


@pytest.mark.parametrize("seed", range(3))
def test_inverted_prediction_is_bad(seed):
    _, gt = blob_pair(seed)
    r = sunseg_frame((~gt).astype(float), gt, backend="numpy")
    assert r["Smeasure"] < 0.1 and r["wFmeasure"] < 0.05 and r["MAE"] == 1.0


@pytest.mark.parametrize("flip", [(0,), (1,), (0, 1)])
def test_flip_invariance(flip):
    pred, gt = blob_pair(7)
    a = sunseg_frame(pred, gt, backend="numpy")
    b = sunseg_frame(np.flip(pred, flip).copy(), np.flip(gt, flip).copy(), backend="numpy")
    # Pixel-order-free quantities are exactly invariant.
    for k in ("MAE", "adpEm", "adpFm", "Em", "Fm", "Sen", "Spe", "Dice", "IoU"):
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-12, err_msg=k)
    # The S-measure's centroid split rounds, and the distance transform breaks ties in scan order, so
    # these two move by at most a pixel column's worth.
    assert a["Smeasure"] == pytest.approx(b["Smeasure"], abs=5e-3)
    assert a["wFmeasure"] == pytest.approx(b["wFmeasure"], abs=5e-3)
    np.testing.assert_equal(hd95_assd(pred, gt), hd95_assd(np.flip(pred, flip), np.flip(gt, flip)))


def test_curves_match_brute_force_loops():
    pred, gt = blob_pair(3)
    curves = ref.medical_curves(pred, gt)
    n_obj = gt.sum()
    for i, t in enumerate(np.linspace(1, 0, 256)):
        b = pred >= t
        tp = np.sum(b & gt)
        if tp == 0:
            assert curves["Dice"][i] == curves["Sen"][i] == curves["Spe"][i] == curves["IoU"][i] == 0
            continue
        fp, fn = np.sum(b & ~gt), np.sum(~b & gt)
        tn = gt.size - tp - fp - fn
        assert curves["Dice"][i] == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-14)
        assert curves["Sen"][i] == pytest.approx(tp / n_obj, rel=1e-14)
        assert curves["Spe"][i] == pytest.approx(tn / (tn + fp), rel=1e-14)
        assert curves["IoU"][i] == pytest.approx(tp / (tp + fp + fn), rel=1e-14)
    em = ref.e_measure_curve(pred, gt)
    levels = (pred * 255).astype(np.uint8)
    for i in (0, 17, 128, 200, 255):
        k = 255 - i
        direct = ref.e_measure_at(levels.astype(float), gt, k)
        assert em[i] == pytest.approx(direct, rel=1e-12)


def test_e_measure_matches_pixelwise_definition():
    """The closed-form four-cell sum equals the enhanced-alignment matrix summed pixel by pixel."""
    pred, gt = blob_pair(11)
    b = pred >= 0.5
    fm = b.astype(float) - b.mean()
    gm = gt.astype(float) - gt.mean()
    align = 2 * fm * gm / (fm**2 + gm**2 + ref.EPS)
    enhanced = (align + 1) ** 2 / 4
    assert ref.e_measure_at(pred, gt, 0.5) == pytest.approx(enhanced.sum() / (gt.size - 1 + ref.EPS), rel=1e-12)


def test_weighted_f_equals_plain_f_for_binary_far_errors():
    """With no error near the object, wF reduces toward precision/recall of the binary prediction."""
    gt = np.zeros((40, 40), bool)
    gt[10:20, 10:20] = True
    pred = gt.astype(float)
    pred[12:18, 12:18] = 0.0  # 36 missed object pixels, 64 found
    wf = ref.weighted_f_measure(pred, gt)
    assert 0.0 < wf < 1.0
    assert ref.weighted_f_measure(gt.astype(float), gt) == pytest.approx(1.0)


def test_binary_metrics_counts_and_empty_conventions():
    gt = np.zeros((10, 10), bool)
    gt[:, :5] = True
    pred = np.zeros((10, 10))
    pred[:, 3:8] = 0.9  # TP 20, FP 30, FN 30, TN 20
    m = binary_metrics(pred, gt)
    assert m["Dice"] == pytest.approx(40 / 100)
    assert m["IoU"] == pytest.approx(20 / 80)
    assert m["sensitivity"] == pytest.approx(20 / 50)
    assert m["precision"] == pytest.approx(20 / 50)
    assert m["specificity"] == pytest.approx(20 / 50)
    assert m["accuracy"] == pytest.approx(40 / 100)
    empty = np.zeros((10, 10), bool)
    both = binary_metrics(np.zeros((10, 10)), empty)
    assert both["Dice"] == 1.0 and both["IoU"] == 1.0 and both["sensitivity"] == 1.0
    fp_only = binary_metrics(pred, empty)
    assert fp_only["Dice"] == 0.0 and np.isnan(fp_only["sensitivity"])


def test_hd95_of_shifted_squares():
    a = np.zeros((60, 60), bool)
    a[10:30, 10:30] = True
    b = np.zeros((60, 60), bool)
    b[10:30, 13:33] = True
    hd, assd = hd95_assd(a.astype(float), b)
    assert hd == pytest.approx(3.0)
    assert 0.0 < assd < 3.0
    hd_mm, _ = hd95_assd(a.astype(float), b, spacing=(0.5, 0.25))
    assert hd_mm == pytest.approx(0.75)
    assert all(np.isnan(hd95_assd(np.zeros((60, 60)), b)))
