"""The torch backend of the SUN-SEG suite (dtc.metrics.torch_backend) against the numpy reference."""
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import ndimage

from dtc.metrics import SUNSegMetric
from dtc.metrics import reference as ref
from dtc.metrics.functional import sunseg_frame, sunseg_frames_torch
from dtc.metrics.torch_backend import _nearest_object_pixel, medical_thresholds, sunseg_frames, to_records

from .frame_cases import CASES, blob_frame

KEYS = ref.SUNSEG_SCALARS + ref.SUNSEG_CURVES
TOL = 1e-10


def assert_matches_reference(record: dict, pred: np.ndarray, gt: np.ndarray, label: str = "") -> None:
    expected = ref.sunseg_frame(pred, gt)
    for key in KEYS:
        got, want = np.asarray(record[key], dtype=np.float64), np.asarray(expected[key], dtype=np.float64)
        assert got.shape == want.shape, (label, key)
        # NaN where the reference has NaN (specificity of full-object frames), equal elsewhere.
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{label} {key}: NaN pattern")
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL, equal_nan=True, err_msg=f"{label} {key}")


def run_batch(preds, gts, device="cpu") -> list[dict]:
    p = torch.from_numpy(np.stack(preds)).to(device)
    g = torch.from_numpy(np.stack(gts)).to(device)
    out = sunseg_frames(p, g)
    for key in KEYS:
        assert out[key].device == p.device and out[key].dtype == torch.float64, key
        assert out[key].shape == ((len(preds),) if key in ref.SUNSEG_SCALARS else (len(preds), 256)), key
    return to_records(out)




@pytest.mark.parametrize("name,pred,gt", CASES, ids=[c[0] for c in CASES])
def test_frame_matches_numpy(name, pred, gt):
    (record,) = run_batch([pred], [gt])
    assert_matches_reference(record, pred, gt, name)


def test_random_shapes_and_densities_match_numpy():
    """Batches of random frames: odd sizes, sparse and dense masks, quantised predictions (ties)."""
    rng = np.random.default_rng(2024)
    checked = 0
    for _ in range(12):
        h, w = (int(v) for v in rng.integers(1, 48, size=2))
        preds, gts = [], []
        for _ in range(3):
            density = rng.choice([0.0, 0.02, 0.3, 0.7, 1.0])
            gt = rng.random((h, w)) < density
            if rng.random() < 0.5 and h > 3 and w > 3:
                gt = ndimage.binary_dilation(gt, iterations=int(rng.integers(1, 3)))
            pred = rng.random((h, w))
            if rng.random() < 0.5:
                pred = np.round(pred * 10) / 10  # few levels: exact ties everywhere
            preds.append(pred)
            gts.append(gt)
        for i, record in enumerate(run_batch(preds, gts)):
            assert_matches_reference(record, preds[i], gts[i], f"{h}x{w}#{i}")
            checked += 1
    assert checked == 36


def test_nearest_object_pixel_is_scipys():
    """The distance transform picks the same nearest object pixel as scipy, ties included."""
    rng = np.random.default_rng(3)
    masks = [c[2] for c in CASES if c[2].shape == (40, 60) and c[2].any()]
    masks += [rng.random((40, 60)) < d for d in (0.003, 0.01, 0.05, 0.5)]
    sparse = np.zeros((40, 60), bool)
    sparse[::9, ::9] = True  # square lattice: many four-way ties
    masks.append(sparse)
    nearest, d2 = _nearest_object_pixel(torch.from_numpy(np.stack(masks)))
    for i, mask in enumerate(masks):
        dist, (rows, cols) = ndimage.distance_transform_edt(~mask, return_indices=True)
        np.testing.assert_array_equal(nearest[i].numpy(), rows * 60 + cols, err_msg=f"mask {i}")
        np.testing.assert_array_equal(np.sqrt(d2[i].numpy()), dist, err_msg=f"mask {i}")


def test_row_pass_chunking_does_not_change_the_result(monkeypatch):
    """Blocks of a few rows, or of part of a row, give the same transform as one block."""
    from dtc.metrics import torch_backend

    rng = np.random.default_rng(5)
    masks = torch.from_numpy(rng.random((2, 23, 31)) < 0.02)
    whole = _nearest_object_pixel(masks)
    for budget_bytes in (31 * 31 * 4 * 3, 31 * 4 * 5, 4):  # three rows, five columns, one column
        monkeypatch.setattr(torch_backend, "_ROW_PASS_BYTES_CPU", budget_bytes)
        chunked = _nearest_object_pixel(masks)
        assert torch.equal(chunked[0], whole[0]) and torch.equal(chunked[1], whole[1]), budget_bytes


def test_thresholds_are_numpys_linspace():
    assert np.array_equal(medical_thresholds().numpy(), ref.MEDICAL_THRESHOLDS)


def test_batch_equals_single_frames():
    rng = np.random.default_rng(11)
    frames = [blob_frame(rng, (33, 47), q) for q in (0.5, 0.8, 0.97)]
    frames.append((rng.random((33, 47)), np.zeros((33, 47), bool)))
    batch = run_batch([p for p, _ in frames], [g for _, g in frames])
    for (pred, gt), record in zip(frames, batch):
        (single,) = run_batch([pred], [gt])
        for key in KEYS:
            np.testing.assert_allclose(record[key], single[key], rtol=0, atol=1e-15, err_msg=key)


def test_constant_quadrant_scores_its_exact_value():
    """A constant prediction over a quadrant whose mask is constant: SSIM 1 in exact arithmetic.

    The numpy reference decides this with a rounded mean (for 0.3 it can give 0); the torch backend is
    exact. The expected value is computed by hand: object term from the closed-form similarities, region
    term = the weights of the two object-free bottom quadrants (the top ones score 0: constant prediction
    over a mixed mask)."""
    h, w = 40, 60
    gt = np.zeros((h, w), bool)
    gt[3:5, 5:8] = True  # centroid (3.5, 6): split after row 4 (half to even) and column 6
    n, n_fg = h * w, 6

    def expected(c):
        c = float(c)
        sim_fg = 2 * c / (c * c + 1.0 + 0.0 + ref.EPS)
        sim_bg = 2 * (1 - c) / ((1 - c) * (1 - c) + 1.0 + 0.0 + ref.EPS)
        u = n_fg / n
        region = float(Fraction((h - 5) * 7, n) + Fraction((h - 5) * (w - 7), n))
        return 0.5 * (u * sim_fg + (1 - u) * sim_bg) + 0.5 * region

    # Dyadic values are exact in numpy too: the hand computation is the reference's value there.
    assert ref.s_measure(np.full((h, w), 0.5), gt) == pytest.approx(expected(0.5), abs=1e-12)
    for c in (0.5, 0.3, 128 / 255, 0.1):
        (record,) = run_batch([np.full((h, w), c)], [gt])
        assert record["Smeasure"] == pytest.approx(expected(c), abs=1e-12), c


def test_input_dtypes_and_devices():
    rng = np.random.default_rng(1)
    pred, gt = blob_frame(rng, (24, 30), 0.7)
    levels = np.round(pred * 255).astype(np.uint8)
    want = run_batch([levels / 255.0], [gt])[0]
    for p, g in [(torch.from_numpy(levels)[None], torch.from_numpy(gt)[None]),
                 (levels[None], gt[None].astype(np.uint8) * 255),
                 (torch.from_numpy(levels / 255.0)[None], torch.from_numpy(gt.astype(np.int64))[None])]:
        got = to_records(sunseg_frames_torch(p, g))[0]
        for key in KEYS:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # float32 predictions are scored as their float64 values
    p32 = torch.from_numpy(pred).float()
    got = to_records(sunseg_frames(p32[None], torch.from_numpy(gt)[None]))[0]
    assert_matches_reference(got, p32.double().numpy(), gt, "float32")
    empty = sunseg_frames(torch.zeros(0, 4, 5), torch.zeros(0, 4, 5, dtype=torch.bool))
    assert empty["Smeasure"].shape == (0,) and empty["Em"].shape == (0, 256)


def test_sunseg_frame_backend_torch_returns_numpy_records():
    rng = np.random.default_rng(4)
    pred, gt = blob_frame(rng, (30, 44), 0.75)
    for p in (pred, torch.from_numpy(pred)):
        record = sunseg_frame(p, gt, backend="torch")
        numpy_record = sunseg_frame(pred, gt, backend="numpy")
        assert set(record) == set(numpy_record)
        for key in ref.SUNSEG_SCALARS:
            assert type(record[key]) is float, key
        for key in ref.SUNSEG_CURVES:
            assert isinstance(record[key], np.ndarray) and record[key].dtype == np.float64
            assert record[key].shape == (256,)
        assert_matches_reference(record, pred, gt, "functional")


def test_metric_object_with_torch_backend_matches_numpy():
    rng = np.random.default_rng(8)
    videos = {v: [blob_frame(rng, (28, 36), 0.75) for _ in range(5)] for v in ("a", "b")}
    results = {}
    for backend in ("numpy", "torch"):
        metric = SUNSegMetric(backend=backend)
        for vid, frames in videos.items():
            preds = torch.from_numpy(np.stack([p for p, _ in frames]))  # one batch call per video
            metric(preds, np.stack([g for _, g in frames]), video_id=vid, frame_index=list(range(5)))
        results[backend] = metric.aggregate()
    assert results["torch"]["overall"].keys() == results["numpy"]["overall"].keys()
    for column, value in results["numpy"]["overall"].items():
        assert results["torch"]["overall"][column] == pytest.approx(value, abs=TOL), column
    for vid in videos:
        for column, value in results["numpy"]["per_video"][vid].items():
            assert results["torch"]["per_video"][vid][column] == pytest.approx(value, abs=TOL), (vid, column)


@pytest.mark.parametrize("pred,gt,error,match", [
    (np.zeros((2, 4, 5)), np.zeros((2, 4, 6), bool), ValueError, "same .N, H, W. shape"),
    (np.zeros((4, 5)), np.zeros((4, 5), bool), ValueError, r"pred must be a \(N, H, W\) batch"),
    (np.zeros((1, 4, 5)), np.zeros((4, 5), bool), ValueError, r"gt must be a \(N, H, W\) batch"),
    (np.full((1, 4, 5), np.nan), np.zeros((1, 4, 5), bool), ValueError, "pred contains NaN"),
    (np.full((1, 4, 5), 1.5), np.zeros((1, 4, 5), bool), ValueError, r"pred must hold probabilities in \[0, 1\]"),
    (np.full((1, 4, 5), -0.1), np.zeros((1, 4, 5), bool), ValueError, r"pred must hold probabilities in \[0, 1\]"),
    (np.zeros((1, 4, 5)), np.full((1, 4, 5), 0.5), ValueError, "gt must be binary"),
    (np.zeros((1, 4, 5)), np.full((1, 4, 5), 2, np.uint8), ValueError, "gt must be binary"),
    (np.zeros((1, 4, 5)), np.full((1, 4, 5), np.nan), ValueError, "gt must be binary"),
    (np.zeros((1, 4, 5), np.complex128), np.zeros((1, 4, 5), bool), TypeError, "pred must be real-valued"),
    (np.array([[["a"]]]), np.zeros((1, 1, 1), bool), TypeError, "pred must be a numeric"),
    (np.zeros((1, 0, 5)), np.zeros((1, 0, 5), bool), ValueError, "non-empty frames"),
])
def test_bad_input_is_rejected(pred, gt, error, match):
    with pytest.raises(error, match=match):
        sunseg_frames(pred, gt)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.5, 1.5])
def test_unchecked_batch_marks_an_invalid_frame_nan_and_leaves_the_others(bad):
    rng = np.random.default_rng(5)
    frames = [blob_frame(rng, (24, 32), 0.7) for _ in range(3)]
    pred = torch.from_numpy(np.stack([f[0] for f in frames]))
    gt = torch.from_numpy(np.stack([f[1] for f in frames]))
    pred[1, 3:6, 4:9] = bad  # used to index outside the histograms (an overflow, or a crash)
    out = sunseg_frames(pred, gt, check=False)
    for key, value in out.items():
        assert torch.isnan(value[1]).all(), key
    for i in (0, 2):
        assert_matches_reference(to_records({k: v[i:i + 1] for k, v in out.items()})[0], frames[i][0], frames[i][1],
                                 f"unchecked frame {i}")
    with pytest.raises(ValueError, match="pred"):
        sunseg_frames(pred, gt, check=True)


def test_inputs_on_different_devices_are_rejected():
    with pytest.raises(ValueError, match="same device"):
        sunseg_frames(torch.zeros(1, 4, 5), torch.zeros(1, 4, 5, dtype=torch.bool, device="meta"))


def test_backend_name_is_checked():
    with pytest.raises(ValueError, match="'torch'"):
        sunseg_frame(np.zeros((4, 4)), np.zeros((4, 4), bool), backend="gpu")
    with pytest.raises(ValueError, match="probabilities"):
        sunseg_frame(np.full((4, 4), 3.0), np.zeros((4, 4), bool), backend="torch")


# ----------------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
def test_cuda_batch_matches_numpy():
    by_shape: dict = {}
    for name, pred, gt in CASES:
        by_shape.setdefault(pred.shape, []).append((name, pred, gt))
    for group in by_shape.values():
        records = run_batch([p for _, p, _ in group], [g for _, _, g in group], device="cuda")
        for (name, pred, gt), record in zip(group, records):
            assert_matches_reference(record, pred, gt, f"cuda {name}")


@pytest.mark.cuda
def test_cuda_nearest_object_pixel_and_thresholds():
    assert np.array_equal(medical_thresholds("cuda").cpu().numpy(), ref.MEDICAL_THRESHOLDS)
    rng = np.random.default_rng(9)
    masks = np.stack([rng.random((57, 83)) < d for d in (0.002, 0.02, 0.3)])
    masks[0, ::7, ::11] = True
    nearest, d2 = _nearest_object_pixel(torch.from_numpy(masks).cuda())
    for i, mask in enumerate(masks):
        dist, (rows, cols) = ndimage.distance_transform_edt(~mask, return_indices=True)
        np.testing.assert_array_equal(nearest[i].cpu().numpy(), rows * 83 + cols)
        np.testing.assert_array_equal(np.sqrt(d2[i].cpu().numpy()), dist)


@pytest.mark.cuda
def test_cuda_unchecked_batch_does_not_synchronise():
    rng = np.random.default_rng(10)
    frames = [blob_frame(rng, (96, 128), q) for q in (0.7, 0.9)]
    p = torch.from_numpy(np.stack([f[0] for f in frames])).cuda()
    g = torch.from_numpy(np.stack([f[1] for f in frames])).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = sunseg_frames(p, g, check=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for (pred, gt), record in zip(frames, to_records(out)):
        assert_matches_reference(record, pred, gt, "unchecked cuda")


@pytest.mark.cuda
def test_cuda_metric_object_and_functional():
    rng = np.random.default_rng(12)
    pred, gt = blob_frame(rng, (40, 52), 0.8)
    assert_matches_reference(sunseg_frame(torch.from_numpy(pred).cuda(), gt, backend="torch"), pred, gt, "functional cuda")
    frames = [blob_frame(rng, (40, 52), 0.8) for _ in range(4)]
    results = []
    for backend, device in (("numpy", "cpu"), ("torch", "cuda")):
        metric = SUNSegMetric(backend=backend, drop_ends=False)
        metric(torch.from_numpy(np.stack([p for p, _ in frames])).to(device),
               torch.from_numpy(np.stack([g for _, g in frames])).to(device), video_id="v")
        results.append(metric.aggregate()["overall"])
    for column, value in results[0].items():
        assert results[1][column] == pytest.approx(value, abs=TOL), column
