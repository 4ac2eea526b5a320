"""Videos dtc writes (the demo's overlay, dtc infer's, evaluation's worst frames): H.264 in yuv420p that
browsers play, even-sided, written atomically, with a clear warning when imageio-ffmpeg is missing."""
from __future__ import annotations

import logging
import sys

import cv2
import numpy as np
import pytest
import torch

from dtc.io import VideoWriter, atomic_write_video
from tests.conftest import probe_video


def _predictions(n: int, size=(32, 48)):
    """What the demo's evaluation hands its overlay writer: per model and video, frames, images, probabilities
    and masks at the network's size (a disc drifting to the right; the baseline a little off)."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    images, masks = [], []
    for k in range(n):
        disc = ((yy - h / 2) ** 2 + (xx - 12 - 2 * k) ** 2 < 60).astype(np.float32)
        masks.append(disc)
        images.append(0.3 + 0.4 * disc)
    images, masks = torch.tensor(np.stack(images)), torch.tensor(np.stack(masks))
    video = {"frame": list(range(n)), "image": images, "mask": masks}
    return {"dtc": {"v0": {**video, "prob": masks * 0.9}},
            "baseline": {"v0": {**video, "prob": torch.roll(masks, 2, dims=2) * 0.8}}}


def test_demo_overlay_decodes_as_h264_with_every_frame(tmp_path):
    from dtc.engine.demo import _overlay

    _overlay(_predictions(7), tmp_path)
    info = probe_video(tmp_path / "overlay.mp4")
    assert info == {"codec": "h264", "pix_fmt": "yuv420p", "size": (96, 64), "frames": 7}
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.mp4"]  # no temporary file left behind


def test_odd_sized_frames_are_padded_not_scaled(tmp_path):
    rng = np.random.default_rng(0)
    frames = [np.full((33, 47, 3), 40 * k, np.uint8) for k in range(4)]
    for f in frames:
        f[10:20, 5:15] = rng.integers(0, 255, 3, dtype=np.uint8)
    path = atomic_write_video(tmp_path / "odd.mp4", frames, fps=5)
    assert probe_video(path) == {"codec": "h264", "pix_fmt": "yuv420p", "size": (48, 34), "frames": 4}
    cap = cv2.VideoCapture(str(path))
    for f in frames:
        ok, decoded = cap.read()
        assert ok
        # the picture is where it was drawn (lossy, so compared on average)
        assert np.abs(decoded[:33, :47].astype(int) - f).mean() < 4
    cap.release()


def test_grey_frames_are_accepted(tmp_path):
    path = atomic_write_video(tmp_path / "grey.mp4", [np.full((16, 16), v, np.uint8) for v in (0, 128, 255)])
    assert probe_video(path)["frames"] == 3


def test_without_imageio_ffmpeg_the_fallback_is_said_and_still_written(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails as if not installed
    with caplog.at_level(logging.WARNING, logger="dtc.io"):
        with VideoWriter(tmp_path / "v.mp4", fps=4) as writer:
            for k in range(3):
                writer.write(np.full((20, 30, 3), 60 * k, np.uint8))
    assert writer.codec == "mp4v"
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "imageio-ffmpeg" in said[0] and "dtc[video]" in said[0] and "browsers" in said[0]
    cap = cv2.VideoCapture(str(tmp_path / "v.mp4"))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3


def test_a_failed_write_leaves_the_earlier_file_and_no_temporary(tmp_path):
    path = tmp_path / "keep.mp4"
    atomic_write_video(path, [np.zeros((8, 8, 3), np.uint8)] * 2)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"frame 1 is 10x8, the video is 8x8"):
        atomic_write_video(path, [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.mp4"]


@pytest.mark.parametrize("frame, message", [(np.zeros((8, 8, 3), np.float32), r"uint8 \(H, W, 3\) BGR"),
                                            (np.zeros((8, 8, 4), np.uint8), r"uint8 \(H, W, 3\) BGR"),
                                            (np.zeros((1, 8, 3), np.uint8), "at least 2x2")])
def test_bad_frames_are_refused_by_name(tmp_path, frame, message):
    with pytest.raises(ValueError, match=message):
        atomic_write_video(tmp_path / "bad.mp4", [frame])
    assert not list(tmp_path.iterdir())


def test_no_frames_and_bad_fps_are_refused(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        atomic_write_video(tmp_path / "empty.mp4", [])
    with pytest.raises(ValueError, match="fps must be a positive number"):
        VideoWriter(tmp_path / "x.mp4", fps=0)
    assert not list(tmp_path.iterdir())


def test_every_video_dtc_writes_goes_through_the_one_writer():
    from tests.conftest import REPO_ROOT

    offenders = []
    for path in (REPO_ROOT / "python" / "dtc").rglob("*.py"):
        text = path.read_text()
        if "VideoWriter_fourcc" in text and path.name != "io.py":
            # the stream benchmark's motion-JPEG input clip is an input, not a result
            if path.name == "stream.py" and text.count("VideoWriter_fourcc") == 1 and '"MJPG"' in text:
                continue
            offenders.append(path.name)
    assert not offenders, offenders
