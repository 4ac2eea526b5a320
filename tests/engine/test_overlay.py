"""Overlays are drawn on the user's frame at its own resolution: the prediction is resized to the frame and
its contour traced there, never the network's input enlarged with a blocky contour."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from dtc.cli.main import main
from dtc.engine import train
from dtc.engine.infer import overlay_frame


@pytest.fixture
def textured_frames(tmp_path):
    """Five 60x90 frames with fine texture (lost by any trip through the 48x64 network input) around a disc."""
    rng = np.random.default_rng(3)
    folder = tmp_path / "clip"
    folder.mkdir()
    yy, xx = np.mgrid[:60, :90]
    for i in range(5):
        frame = rng.integers(0, 120, (60, 90)).astype(np.uint8)
        frame[(yy - 30) ** 2 + (xx - 30 - 4 * i) ** 2 < 200] += 120
        cv2.imwrite(str(folder / f"frame_{i:03d}.png"), frame)
    return folder


@pytest.fixture
def captured_videos(monkeypatch):
    """Frames handed to the video writer, by file name (the writer itself is tested in tests/test_video.py)."""
    import dtc.engine.infer as infer_module

    seen = {}
    monkeypatch.setattr(infer_module, "write_overlay_video", lambda path, frames, fps=10.0: seen.setdefault(path.name, frames))
    return seen


def test_infer_overlay_is_the_source_frame_with_the_contour_of_the_written_mask(tiny_config, textured_frames,
                                                                                tmp_path, captured_videos):
    cfg = tiny_config("stage=teacher", "optim.epochs=1", out="t")
    train(cfg)
    out = tmp_path / "pred"
    assert main(["infer", cfg.run.out_dir + "/last.pt", str(textured_frames), "--out", str(out)]) == 0
    frames = captured_videos["overlay.mp4"]
    assert len(frames) == 5
    for i, drawn in enumerate(frames):
        source = cv2.imread(str(textured_frames / f"frame_{i:03d}.png"), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(out / "masks" / f"{i:05d}.png"), cv2.IMREAD_GRAYSCALE) > 0
        assert drawn.shape == (60, 90, 3)
        contour = np.zeros((60, 90), np.uint8)
        found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(contour, found, -1, 1, 1)
        green = (drawn == (0, 255, 0)).all(axis=2)
        assert np.array_equal(green, contour.astype(bool))
        # everywhere else: the user's pixels, untouched
        assert np.array_equal(drawn[~green], np.repeat(source[~green][:, None], 3, axis=1))


def test_a_small_prediction_is_traced_at_the_frame_resolution():
    yy, xx = np.mgrid[:16, :16]
    prob = (((yy - 7.5) ** 2 + (xx - 7.5) ** 2) < 25).astype(np.float32)
    drawn = overlay_frame(np.zeros((64, 64), np.uint8), prob)
    green = (drawn == (0, 255, 0)).all(axis=2)
    big = cv2.resize(prob, (64, 64), interpolation=cv2.INTER_LINEAR) > 0.5
    # a one-pixel line around the disc of radius ~20 px (a 4x enlarged contour would be 4 px thick)
    assert green.sum() < 2 * np.pi * 20 * 1.5
    assert not (green & ~big).any()  # the contour is the disc's own boundary pixels
    ys, xs = np.nonzero(green)
    assert ys.min() <= 13 and ys.max() >= 50


def test_overlay_keeps_colour_and_refuses_odd_shapes():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB
    drawn = overlay_frame(rgb, np.zeros((8, 8), np.float32))
    assert tuple(drawn[0, 0]) == (0, 0, 200)  # BGR
    with pytest.raises(ValueError, match=r"image must be \(H, W\), \(H, W, 1\) or \(H, W, 3\)"):
        overlay_frame(np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8), np.float32))


def test_worst_frames_are_drawn_on_the_source_frames(textured_frames, captured_videos, tmp_path):
    from dtc.data import VideoSegmentationDataset
    from dtc.data.index import read_folder_index
    from dtc.engine.evaluate import write_worst_frames
    from dtc.engine.inference import video_scores

    records = read_folder_index(textured_frames.parent, image_dir=textured_frames.name, mask_dir="\0none")
    dataset = VideoSegmentationDataset(records, T=1, size=(48, 64))
    vid = dataset.videos[0].video_id
    frames = [f.number for f in dataset.videos[0].frames]
    prob = torch.zeros(len(frames), 48, 64)
    prob[:, 10:30, 10:30] = 0.9
    mask = torch.zeros(len(frames), 48, 64)
    mask[:, 12:34, 8:30] = 1
    videos = {vid: {"frame": frames, "prob": prob, "mask": mask, "valid": torch.ones(len(frames), dtype=torch.bool),
                    "image": torch.full((len(frames), 48, 64), 0.5)}}
    write_worst_frames(videos, {vid: video_scores(videos[vid])}, tmp_path / "worst_frames.mp4", 3, dataset=dataset)
    drawn = captured_videos["worst_frames.mp4"]
    assert len(drawn) == 3 and all(f.shape == (60, 90, 3) for f in drawn)
    # equal Dice everywhere: the first worst frame is the video's first
    source = cv2.imread(str(textured_frames / "frame_000.png"), cv2.IMREAD_GRAYSCALE)
    plain = (drawn[0] == drawn[0][..., :1]).all(axis=2)
    plain[:20] = False  # the caption
    assert plain.sum() > 0.5 * plain.size
    assert np.array_equal(drawn[0][plain][:, 0], source[plain])
