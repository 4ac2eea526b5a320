"""dtc.flow.farneback against OpenCV's calcOpticalFlowFarneback: parity, accuracy on known motion,
properties and bad input. CUDA twins run where a GPU is visible."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import dtc.ops  # noqa: F401  (registers torch.ops.dtc)
from dtc.flow import farneback

from .conftest import to_u8

PARAMS = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2)
HC18 = Path(__file__).resolve().parents[1] / "fixtures" / "hc18-ultrasound" / "training_set"


def opencv_flow(a: np.ndarray, b: np.ndarray, gaussian_window=False, median=0, **overrides) -> np.ndarray:
    p = {**PARAMS, **overrides}
    flags = cv2.OPTFLOW_FARNEBACK_GAUSSIAN if gaussian_window else 0
    f = cv2.calcOpticalFlowFarneback(a, b, None, p["pyr_scale"], p["levels"], p["winsize"], p["iterations"],
                                     p["poly_n"], p["poly_sigma"], flags)
    if median:
        f = np.stack([cv2.medianBlur(np.ascontiguousarray(f[..., c]), median) for c in range(2)], -1)
    return f.transpose(2, 0, 1)


def ours(a, b, device="cpu", **kw) -> np.ndarray:
    ta = torch.from_numpy(np.ascontiguousarray(a))[None, None].to(device)
    tb = torch.from_numpy(np.ascontiguousarray(b))[None, None].to(device)
    return farneback(ta, tb, **{**PARAMS, "median": 0, **kw})[0].cpu().numpy()


def epe(flow, gt, mask):
    return float(np.linalg.norm(flow - gt, axis=0)[mask].mean())


@pytest.mark.parametrize("gaussian_window", [False, True])
@pytest.mark.parametrize("median", [0, 3, 5])
def test_matches_opencv_on_simulator_pairs(synth_videos, gaussian_window, median):
    v = synth_videos[0]
    a, b = to_u8(v.frames[1]), to_u8(v.frames[2])
    ref = opencv_flow(a, b, gaussian_window, median)
    got = ours(a, b, gaussian_window=gaussian_window, median=median)
    diff = np.linalg.norm(got - ref, axis=0)
    # Same algorithm in float32 with a different summation order: differences are rounding-level.
    assert diff.mean() < 1e-4, diff.mean()
    assert np.percentile(diff, 99.9) < 1e-2


@pytest.mark.parametrize("size", [(40, 56), (32, 33), (37, 32)])
def test_median_post_filter_is_the_exact_median(size):
    """The CPU's 3x3 median (a selection network per row) and 5x5 median are exact: the same numbers as
    a median filter with replicated edges applied to the unfiltered flow, on every pixel. Noise images
    give a rough flow, whose neighbourhoods come in every order (smooth flow would hide a wrong network)."""
    from scipy import ndimage

    rng = np.random.default_rng(sum(size))
    a, b = (rng.integers(0, 256, size, dtype=np.uint8) for _ in range(2))
    raw = ours(a, b, levels=1)
    for k in (3, 5):
        expected = np.stack([ndimage.median_filter(raw[c], size=k, mode="nearest") for c in range(2)])
        np.testing.assert_array_equal(ours(a, b, levels=1, median=k), expected)


@pytest.mark.parametrize("overrides", [dict(levels=0, winsize=9, iterations=1), dict(pyr_scale=0.7, levels=5),
                                       dict(poly_n=7, poly_sigma=1.5, winsize=21, iterations=5),
                                       dict(winsize=4, levels=1), dict(poly_sigma=0.0, poly_n=3)])
def test_matches_opencv_across_parameters(synth_videos, overrides):
    v = synth_videos[1]
    a, b = to_u8(v.frames[0]), to_u8(v.frames[1])
    ref = opencv_flow(a, b, **overrides)
    got = ours(a, b, **overrides)
    assert np.linalg.norm(got - ref, axis=0).mean() < 1e-4


def test_float_input_equals_uint8_input(synth_videos):
    v = synth_videos[0]
    a, b = to_u8(v.frames[0]), to_u8(v.frames[1])
    from_u8 = ours(a, b)
    from_float = ours(a.astype(np.float32) / 255, b.astype(np.float32) / 255)
    np.testing.assert_allclose(from_float, from_u8, atol=1e-3)


def test_rgb_input_is_converted_to_grey_like_opencv(synth_videos):
    v = synth_videos[0]
    rng = np.random.default_rng(0)
    # Colour images whose OpenCV grey is known: tint each channel differently.
    rgb = [np.clip(v.frames[t][..., None] * np.array([0.9, 1.0, 0.8]) + rng.normal(0, 0.01, (1, 1, 3)), 0, 1)
           .astype(np.float32) for t in (1, 2)]
    grey = [cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in rgb]
    from_rgb = farneback(*(torch.from_numpy(x).permute(2, 0, 1)[None] for x in rgb), **PARAMS)
    from_grey = farneback(*(torch.from_numpy(g)[None, None] for g in grey), **PARAMS)
    torch.testing.assert_close(from_rgb, from_grey, atol=1e-3, rtol=0)


def test_batch_equals_pairs_one_by_one(synth_videos):
    frames = np.concatenate([v.frames for v in synth_videos])  # 8 frames
    t = torch.from_numpy(frames)[:, None]
    batched = farneback(t[:-1], t[1:], **PARAMS)
    for i in range(len(frames) - 1):
        single = farneback(t[i:i + 1], t[i + 1:i + 2], **PARAMS)
        assert torch.equal(batched[i:i + 1], single)


def test_thread_count_does_not_change_the_result(synth_videos):
    t = torch.from_numpy(synth_videos[0].frames)[:, None]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = farneback(t[:-1], t[1:], **PARAMS)
        torch.set_num_threads(max(2, before))
        many = farneback(t[:-1], t[1:], **PARAMS)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, many)


def test_accuracy_against_ground_truth_within_5_percent_of_opencv(synth_videos):
    """EPE against the simulator's exact flow: ours within 5 % of OpenCV's (or better)."""
    ours_epe, cv_epe = [], []
    for v in synth_videos:
        for t in range(1, v.frames.shape[0]):
            a, b = to_u8(v.frames[t]), to_u8(v.frames[t - 1])
            # GT is the backward flow of (t-1, t): frame_t(p) = frame_{t-1}(p - F(p)); Farneback with
            # prev = frame_t, next = frame_{t-1} estimates exactly -F at frame t's pixels.
            gt = -v.flows[t]
            mask = v.fov
            ours_epe.append(epe(ours(a, b, median=3), gt, mask))
            cv_epe.append(epe(opencv_flow(a, b, median=3), gt, mask))
    ours_mean, cv_mean = np.mean(ours_epe), np.mean(cv_epe)
    print(f"EPE vs GT: ours {ours_mean:.4f} px, OpenCV {cv_mean:.4f} px over {len(ours_epe)} pairs")
    assert ours_mean <= 1.05 * cv_mean
    # And the estimate carries information: far better than predicting zero motion.
    zero = np.mean([epe(np.zeros_like(v.flows[t]), v.flows[t], v.fov) for v in synth_videos for t in range(1, 4)])
    assert ours_mean < 0.5 * zero


def _textured_pair(shape, seed):
    """Smooth random texture and the same texture moved by (dx, dy) = (-3, 2): well-conditioned
    normal equations everywhere, so float32 rounding stays at the rounding level up to the border."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.uniform(0, 255, shape).astype(np.float32), (0, 0), 2.0)
    return base, np.roll(base, shift=(2, -3), axis=(0, 1))


def _raw_op(a, b, device="cpu", **kw):
    """torch.ops.dtc.farneback on [N, 1, H, W] arrays on the 0-255 scale (no [0, 1] rescaling)."""
    p = {**PARAMS, "gaussian_window": False, "median": 0, **kw}
    t = [torch.as_tensor(np.ascontiguousarray(x))[None, None].to(device) for x in (a, b)]
    return torch.ops.dtc.farneback(*t, p["pyr_scale"], p["levels"], p["winsize"], p["iterations"], p["poly_n"],
                                   p["poly_sigma"], p["gaussian_window"], p["median"]).cpu().double()


def _float64_reference(a, b, **kw):
    from dtc.ops import reference

    t = [torch.as_tensor(np.ascontiguousarray(x))[None, None] for x in (a, b)]
    return reference.farneback(*t, **{**PARAMS, "median": 0, **kw})


# The CPU kernel's row passes (vectorised smoothing, resize and expansion, double running sums of the
# box window restarted every band of rows) against the float64 composition in dtc.ops.reference, on
# every pixel, borders included. Shapes cross several bands (32 rows each) and leave partial bands;
# winsize 81 makes the window wider than the image, so the running sums work on replicated edge rows.
@pytest.mark.parametrize("shape", [(100, 120), (33, 45), (70, 32)])
@pytest.mark.parametrize("overrides", [dict(levels=0, iterations=1), dict(), dict(gaussian_window=True),
                                       dict(levels=0, iterations=1, winsize=81), dict(winsize=5, levels=1),
                                       dict(poly_n=7, poly_sigma=1.5, winsize=21, iterations=5),
                                       dict(pyr_scale=0.7, levels=5), dict(median=3), dict(median=5)])
def test_cpu_kernel_matches_float64_reference(shape, overrides):
    a, b = _textured_pair(shape, seed=sum(shape))
    got, ref = _raw_op(a, b, **overrides), _float64_reference(a, b, **overrides)
    diff = (got - ref).norm(dim=1)
    # Observed: max 4e-5 px (winsize 5), 1e-5 otherwise; the stated CPU and CUDA tolerance to the
    # float64 oracle (docs/design.md).
    assert diff.max() < 1e-4, (diff.max(), diff.mean())
    assert diff.mean() < 5e-6, diff.mean()


@pytest.mark.parametrize("gaussian_window", [False, True])
def test_cpu_kernel_matches_float64_reference_on_simulator_frames(synth_videos, gaussian_window):
    """Simulator frames have textureless patches whose nearly singular systems amplify rounding: the
    bound is on the mean and the 99.9th percentile, as for the parity with OpenCV."""
    v = synth_videos[0]
    a, b = to_u8(v.frames[1]), to_u8(v.frames[2])
    got = _raw_op(a, b, gaussian_window=gaussian_window)
    diff = (got - _float64_reference(a, b, gaussian_window=gaussian_window)).norm(dim=1)
    # Observed on this pair: mean 6e-6 px, 99.9th percentile 6e-4 px (box window).
    assert diff.mean() < 2e-5, diff.mean()
    assert diff.flatten().quantile(0.999) < 2e-3


def _hc18_images(n=3):
    paths = sorted(p for p in HC18.glob("*_HC.png"))[:n]
    return [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]


def _deform(img: np.ndarray, kind: str, seed: int):
    """Warp a still by a known smooth map; returns (moved image, flow from the still to the moved image)."""
    H, W = img.shape
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    rng = np.random.default_rng(seed)
    if kind == "shift":
        dx, dy = np.full_like(xs, 2.6), np.full_like(xs, -1.3)
    else:  # smooth elastic field plus a small rotation about the centre
        cx, cy, th = W / 2, H / 2, np.deg2rad(0.75)
        dx = (np.cos(th) - 1) * (xs - cx) - np.sin(th) * (ys - cy)
        dy = np.sin(th) * (xs - cx) + (np.cos(th) - 1) * (ys - cy)
        for _ in range(3):
            kx, ky, ph = rng.uniform(0.5, 2) * 2 * np.pi / W, rng.uniform(0.5, 2) * 2 * np.pi / H, rng.uniform(0, 6.3)
            dx += 1.0 * np.sin(kx * xs + ky * ys + ph)
            dy += 1.0 * np.cos(ky * xs - kx * ys + ph)
    # moved(p) = img(p - d(p)) is a backward warp: Farneback(moved, img) estimates -d at moved's pixels.
    dx, dy = dx.astype(np.float32), dy.astype(np.float32)
    moved = cv2.remap(img, xs - dx, ys - dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return moved, np.stack([dx, dy])


def _textured(img: np.ndarray) -> np.ndarray:
    # The scan's black surround has no texture to track; score the flow inside the scanned sector,
    # 15 px away from its edge.
    inside = (cv2.GaussianBlur(img.astype(np.float32), (0, 0), 8) > 20).astype(np.uint8)
    return cv2.erode(inside, np.ones((31, 31), np.uint8)).astype(bool)


@pytest.mark.parametrize("kind", ["shift", "elastic"])
def test_matches_opencv_on_deformed_ultrasound_stills(kind):
    diffs, ours_epe, cv_epe = [], [], []
    for i, img in enumerate(_hc18_images()):
        moved, d = _deform(img, kind, seed=i)
        ref = opencv_flow(moved, img, median=3)
        got = ours(moved, img, median=3)
        diffs.append(np.linalg.norm(got - ref, axis=0).mean())
        scanned = _textured(img)
        ours_epe.append(epe(got, -d, scanned))
        cv_epe.append(epe(ref, -d, scanned))
    print(f"HC18 {kind}: mean |ours - OpenCV| {np.mean(diffs):.2e} px; EPE ours {np.mean(ours_epe):.4f}, "
          f"OpenCV {np.mean(cv_epe):.4f}")
    assert np.mean(diffs) < 1e-4
    assert np.mean(ours_epe) <= 1.05 * np.mean(cv_epe)
    assert np.mean(ours_epe) < 0.5  # the known motion is recovered to sub-pixel accuracy


def test_identical_frames_give_zero_flow_away_from_the_border(synth_videos):
    frame = to_u8(synth_videos[0].frames[0])
    got = ours(frame, frame)
    # OpenCV treats the last row/column as "outside next" (no linear term there), so even for
    # identical frames the border pulls the flow a little; the interior stays at zero.
    assert np.abs(got[:, 10:-10, 10:-10]).max() < 1e-3
    np.testing.assert_allclose(got, opencv_flow(frame, frame), atol=1e-4)


def test_integer_shift_is_recovered_in_the_interior():
    rng = np.random.default_rng(3)
    base = cv2.GaussianBlur(rng.uniform(0, 255, (96, 128)).astype(np.float32), (0, 0), 2.0)
    moved = np.roll(base, shift=(2, -3), axis=(0, 1))  # content moves by dx=-3, dy=+2
    f = ours(base, moved, median=3)
    inner = (slice(16, -16), slice(16, -16))
    assert abs(np.median(f[0][inner]) + 3) < 0.05
    assert abs(np.median(f[1][inner]) - 2) < 0.05


def test_output_layout_and_empty_batch():
    x = torch.rand(3, 1, 40, 50)
    out = farneback(x, x.flip(0), **PARAMS)
    assert out.shape == (3, 2, 40, 50) and out.dtype == torch.float32 and out.is_contiguous()
    empty = farneback(torch.rand(0, 1, 40, 50), torch.rand(0, 1, 40, 50))
    assert empty.shape == (0, 2, 40, 50)


def test_non_contiguous_input(synth_videos):
    t = torch.from_numpy(synth_videos[0].frames)[:, None]
    wide = torch.cat([t, torch.zeros_like(t)], dim=3)[..., :t.shape[-1]]  # strided view holding t's values
    assert not wide.is_contiguous()
    torch.testing.assert_close(farneback(wide[:-1], wide[1:]), farneback(t[:-1], t[1:]), rtol=0, atol=0)


@pytest.mark.parametrize("prev,next,match", [
    (torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 65), "same shape"),
    (torch.rand(1, 1, 31, 64), torch.rand(1, 1, 31, 64), "at least 32x32"),
    (torch.rand(1, 1, 64, 20), torch.rand(1, 1, 64, 20), "at least 32x32"),
    (torch.rand(1, 2, 64, 64), torch.rand(1, 2, 64, 64), r"\(N, 1, H, W\) or \(N, 3, H, W\)"),
    (torch.rand(64, 64), torch.rand(64, 64), r"\(N, 1, H, W\) or \(N, 3, H, W\)"),
])
def test_bad_shapes_raise_clear_errors(prev, next, match):
    with pytest.raises(ValueError, match=match):
        farneback(prev, next)


def test_nan_and_inf_are_rejected():
    good = torch.rand(2, 1, 40, 40)
    bad = good.clone()
    bad[1, 0, 5, 7] = float("nan")
    with pytest.raises(ValueError, match="prev contains NaN or Inf"):
        farneback(bad, good)
    bad[1, 0, 5, 7] = float("inf")
    with pytest.raises(ValueError, match="next contains NaN or Inf"):
        farneback(good, bad)


def test_values_far_off_the_grey_scale_are_rejected():
    """Finite values large enough to overflow the float32 normal equations gave NaN flow everywhere."""
    good = torch.rand(1, 1, 40, 40) * 255
    huge = good * 1e28
    with pytest.raises(ValueError, match=r"prev has values up to .*0-255 scale"):
        torch.ops.dtc.farneback(huge, good, 0.5, 1, 9, 2, 5, 1.1, False, 0)
    with pytest.raises(ValueError, match=r"next has values up to"):
        torch.ops.dtc.farneback(good, -huge, 0.5, 1, 9, 2, 5, 1.1, False, 0)
    # 16-bit grey levels are still accepted, and give finite flow.
    wide = torch.ops.dtc.farneback(good * 257, good.roll(1, 3) * 257, 0.5, 1, 9, 2, 5, 1.1, False, 0)
    assert wide.isfinite().all()


@pytest.mark.parametrize("kw,match", [
    (dict(pyr_scale=1.0), "pyr_scale must be in"), (dict(pyr_scale=0.0), "pyr_scale must be in"),
    (dict(levels=-1), "levels must be in"), (dict(winsize=0), "winsize must be in"),
    (dict(iterations=0), "iterations must be in"), (dict(poly_n=0), "poly_n must be in"),
    (dict(poly_sigma=-1.0), "poly_sigma must be"), (dict(median=4), "median must be"),
])
def test_bad_parameters_raise_clear_errors(kw, match):
    x = torch.rand(1, 1, 40, 40)
    with pytest.raises(ValueError, match=match):
        farneback(x, x, **kw)


def test_bad_types_raise_clear_errors():
    with pytest.raises(TypeError, match="prev must be a torch.Tensor"):
        farneback(np.zeros((1, 1, 40, 40)), torch.rand(1, 1, 40, 40))
    with pytest.raises(TypeError, match="float .* or uint8"):
        farneback(torch.zeros(1, 1, 40, 40, dtype=torch.int32), torch.zeros(1, 1, 40, 40, dtype=torch.int32))
    with pytest.raises(TypeError, match="float32, float64 or uint8"):
        torch.ops.dtc.farneback(torch.zeros(1, 1, 40, 40, dtype=torch.int16), torch.zeros(1, 1, 40, 40, dtype=torch.int16))


def test_opcheck():
    g = torch.Generator().manual_seed(0)
    prev, nxt = torch.rand(2, 1, 36, 40, generator=g) * 255, torch.rand(2, 1, 36, 40, generator=g) * 255
    torch.library.opcheck(torch.ops.dtc.farneback.default, (prev, nxt, 0.5, 2, 9, 2, 5, 1.1, False, 3),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.cuda
@pytest.mark.parametrize("gaussian_window", [False, True])
def test_cuda_matches_cpu_and_opencv(synth_videos, gaussian_window):
    frames = np.concatenate([to_u8(v.frames) for v in synth_videos])
    t = torch.from_numpy(frames)[:, None]
    cpu = farneback(t[:-1], t[1:], **PARAMS, gaussian_window=gaussian_window)
    gpu = farneback(t[:-1].cuda(), t[1:].cuda(), **PARAMS, gaussian_window=gaussian_window)
    assert gpu.is_cuda
    # Same formulas; only fused multiply-adds and exp() rounding may differ.
    assert (gpu.cpu() - cpu).norm(dim=1).mean() < 1e-4
    ref = np.stack([opencv_flow(frames[i], frames[i + 1], gaussian_window, 3) for i in range(len(frames) - 1)])
    assert np.linalg.norm(gpu.cpu().numpy() - ref, axis=1).mean() < 1e-4


@pytest.mark.cuda
@pytest.mark.parametrize("overrides", [dict(), dict(gaussian_window=True), dict(levels=0, iterations=1, winsize=81)])
def test_cuda_matches_float64_reference_like_the_cpu(overrides):
    """The CPU's running sums round differently from the CUDA kernel's tap sums; both are held to the
    same stated tolerance to the float64 oracle (docs/design.md), and so to each other."""
    a, b = _textured_pair((100, 120), seed=5)
    ref = _float64_reference(a, b, **overrides)
    cpu, gpu = _raw_op(a, b, **overrides), _raw_op(a, b, device="cuda", **overrides)
    for got in (cpu, gpu):
        diff = (got - ref).norm(dim=1)
        assert diff.max() < 1e-4 and diff.mean() < 5e-6, (diff.max(), diff.mean())
    assert (gpu - cpu).norm(dim=1).max() < 2e-4


@pytest.mark.cuda
def test_cuda_bad_input_and_devices():
    x = torch.rand(1, 1, 40, 40, device="cuda")
    with pytest.raises(ValueError, match="same device"):
        torch.ops.dtc.farneback(x, x.cpu())
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        farneback(bad, x)
