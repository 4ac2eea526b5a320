"""dtc::farneback_opencv (OpenCV C++ Farnebäck over a batch, GIL released) and the OpenCVFlow
provider's C++ backend. Skipped, with the reason, where dtc was built without OpenCV C++."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
import torch

import dtc
from dtc.flow import OpenCVFlow, farneback_opencv, make_flow_provider

from .conftest import to_u8
from .test_farneback import opencv_flow
from .test_providers import window_batch

PARAMS = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2)

pytestmark = pytest.mark.skipif(not dtc.build_info()["opencv"],
                                reason="dtc was built without OpenCV C++ (libopencv-dev not found at build time)")


def _same_opencv() -> bool:
    # The op links the system's OpenCV C++; the test's cv2 may be another release with other
    # SIMD code paths, which changes float rounding (not the algorithm).
    return dtc.build_info()["opencv_version"] == cv2.__version__.split("-")[0]


def assert_matches_cv2(got: np.ndarray, ref: np.ndarray):
    if _same_opencv():
        np.testing.assert_array_equal(got, ref)
    else:
        # Same code, different rounding: a few ill-conditioned pixels (flat regions, no median)
        # move by up to ~3e-2 px; measured across OpenCV 4.6 (C++) and 5.0 (cv2): mean <= 2.2e-6 px.
        diff = np.linalg.norm(got - ref, axis=-3)
        print(f"cross-version difference: mean {diff.mean():.2e}, p99.9 {np.percentile(diff, 99.9):.2e}, "
              f"max {diff.max():.2e} px")
        assert diff.mean() < 1e-5, diff.mean()
        assert np.percentile(diff, 99.9) < 1e-3


@pytest.mark.parametrize("gaussian_window", [False, True])
@pytest.mark.parametrize("median", [0, 3, 5])
def test_matches_python_cv2_on_several_pairs(synth_videos, gaussian_window, median):
    frames = np.concatenate([to_u8(v.frames) for v in synth_videos])
    t = torch.from_numpy(frames)[:, None]
    got = torch.ops.dtc.farneback_opencv(t[:-1], t[1:], 0.5, 3, 15, 3, 5, 1.2, gaussian_window, median).numpy()
    ref = np.stack([opencv_flow(frames[i], frames[i + 1], gaussian_window, median) for i in range(len(frames) - 1)])
    assert got.shape == (len(frames) - 1, 2) + frames.shape[1:]
    assert_matches_cv2(got, ref)


def test_float_input_is_used_on_the_0_255_scale(synth_videos):
    v = synth_videos[1]
    a, b = (v.frames[i].astype(np.float32) for i in (0, 1))
    got = farneback_opencv(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None], **PARAMS, median=3)
    ref = opencv_flow(a * np.float32(255), b * np.float32(255), median=3)
    assert_matches_cv2(got[0].numpy(), ref)


def test_batch_equals_pairs_one_by_one(synth_videos):
    frames = np.concatenate([to_u8(v.frames) for v in synth_videos])
    t = torch.from_numpy(frames)[:, None]
    batched = farneback_opencv(t[:-1], t[1:])
    for i in range(len(frames) - 1):
        assert torch.equal(batched[i:i + 1], farneback_opencv(t[i:i + 1], t[i + 1:i + 2]))


def test_agrees_with_dtc_farneback(synth_videos):
    t = torch.from_numpy(to_u8(synth_videos[0].frames))[:, None]
    diff = (farneback_opencv(t[:-1], t[1:]) - dtc.flow.farneback(t[:-1], t[1:])).norm(dim=1)
    assert diff.mean() < 1e-4


def test_releases_the_gil():
    """A Python thread keeps running while the op works: its longest stall is far below the call."""
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.avg_pool2d(torch.rand(33, 1, 260, 452, generator=g) * 255, 5, 1)
    prev, nxt = base[:-1].contiguous(), base[1:].contiguous()
    stamps, stop = [], threading.Event()

    def ticker():
        while not stop.is_set():
            stamps.append(time.perf_counter())
            time.sleep(0.001)

    thread = threading.Thread(target=ticker)
    thread.start()
    try:
        time.sleep(0.05)
        t0 = time.perf_counter()
        torch.ops.dtc.farneback_opencv(prev, nxt)
        t1 = time.perf_counter()
    finally:
        stop.set()
        thread.join()
    during = np.array([s for s in stamps if t0 <= s <= t1])
    call = t1 - t0
    assert call > 0.2, f"the call took {call:.3f} s, too short to tell"
    gaps = np.diff(np.concatenate([[t0], during, [t1]]))
    # Holding the GIL would stall the ticker for the whole call (one gap ≈ call).
    assert gaps.max() < 0.5 * call, (gaps.max(), call)
    assert len(during) >= 10


def test_output_layout_and_empty_batch():
    x = (torch.rand(3, 1, 40, 50) * 255).to(torch.uint8)
    out = torch.ops.dtc.farneback_opencv(x, x.flip(0))
    assert out.shape == (3, 2, 40, 50) and out.dtype == torch.float32 and out.is_contiguous()
    assert torch.ops.dtc.farneback_opencv(x[:0], x[:0]).shape == (0, 2, 40, 50)


def test_non_contiguous_input(synth_videos):
    t = torch.from_numpy(to_u8(synth_videos[0].frames))[:, None]
    wide = torch.cat([t, torch.zeros_like(t)], dim=3)[..., :t.shape[-1]]
    assert not wide.is_contiguous()
    assert torch.equal(torch.ops.dtc.farneback_opencv(wide[:-1], wide[1:]), torch.ops.dtc.farneback_opencv(t[:-1], t[1:]))


@pytest.mark.parametrize("prev,next,exc,match", [
    (torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 65), ValueError, "same shape"),
    (torch.rand(1, 1, 31, 64), torch.rand(1, 1, 31, 64), ValueError, "at least 32x32"),
    (torch.rand(1, 2, 64, 64), torch.rand(1, 2, 64, 64), ValueError, r"greyscale batch \[N, 1, H, W\]"),
    (torch.rand(64, 64), torch.rand(64, 64), ValueError, r"greyscale batch \[N, 1, H, W\]"),
    (torch.zeros(1, 1, 40, 40, dtype=torch.int16), torch.zeros(1, 1, 40, 40, dtype=torch.int16), TypeError,
     "float32, float64 or uint8"),
])
def test_bad_input_raises_clear_errors(prev, next, exc, match):
    with pytest.raises(exc, match=match):
        torch.ops.dtc.farneback_opencv(prev, next)


@pytest.mark.parametrize("kw,match", [
    (dict(pyr_scale=1.0), "pyr_scale must be in"), (dict(levels=-1), "levels must be in"),
    (dict(winsize=0), "winsize must be in"), (dict(iterations=0), "iterations must be in"),
    (dict(poly_n=0), "poly_n must be in"), (dict(median=4), "median must be"),
])
def test_bad_parameters_raise_clear_errors(kw, match):
    x = torch.rand(1, 1, 40, 40)
    with pytest.raises(ValueError, match=match):
        farneback_opencv(x, x, **kw)


def test_nan_is_rejected():
    good = torch.rand(2, 1, 40, 40)
    bad = good.clone()
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="prev contains NaN or Inf"):
        torch.ops.dtc.farneback_opencv(bad, good)


@pytest.mark.cuda
def test_cuda_tensors_are_rejected_by_the_op_and_moved_by_the_wrapper():
    x = torch.rand(1, 1, 40, 40, device="cuda")
    with pytest.raises(ValueError, match="must be CPU tensors"):
        torch.ops.dtc.farneback_opencv(x, x)
    assert farneback_opencv(x, x).device == x.device


def test_opcheck():
    g = torch.Generator().manual_seed(0)
    prev, nxt = torch.rand(2, 1, 36, 40, generator=g) * 255, torch.rand(2, 1, 36, 40, generator=g) * 255
    torch.library.opcheck(torch.ops.dtc.farneback_opencv.default, (prev, nxt, 0.5, 2, 9, 2, 5, 1.1, False, 3),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("preset", ["dtc", "reference"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_provider_cpp_backend_matches_the_python_loop(synth_videos, preset, direction):
    images, batch = window_batch(synth_videos[0], T=3, B=2)
    cpp = OpenCVFlow(preset=preset, direction=direction, backend="cpp")
    python = OpenCVFlow(preset=preset, direction=direction, backend="python")
    a, b = cpp(images, batch), python(images, batch)
    assert cpp.backend_used == "cpp" and python.backend_used == "python"
    assert a.shape == b.shape and torch.count_nonzero(a[:, 0]) == 0
    # The 'dtc' preset's grey comes from torch here and from cv2.cvtColor in the loop (rounding
    # differences of the input); 'reference' feeds both the same uint8 frames.
    tol = 1e-4 if preset == "dtc" else 1e-6
    assert (a - b).norm(dim=2).mean() < tol


def test_make_flow_provider_opencv_picks_the_cpp_backend(synth_videos):
    provider = make_flow_provider("opencv")
    images, batch = window_batch(synth_videos[1], T=2, B=1)
    flows = provider(images, batch)
    assert provider.backend_used == "cpp" and flows.shape == (1, 2, 2) + images.shape[-2:]
    with pytest.raises(ValueError, match="backend must be one of"):
        OpenCVFlow(backend="gpu")
