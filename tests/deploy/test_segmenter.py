"""dtc.Segmenter: raw frames in, probabilities and masks at the frames' own size out."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dtc
from dtc.deploy import Preprocessing, Segmenter
from dtc.engine.checkpoint import model_from_checkpoint
from dtc.engine.data import IMAGE_MEAN, IMAGE_STD


def reference(model, x01, mean=IMAGE_MEAN, std=IMAGE_STD):
    """Plain-PyTorch spelling of what the network expects: float64 normalisation, then the net."""
    m = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    with torch.no_grad():
        return torch.sigmoid(model(((x01.double() - m) / s).float())[0])[:, 0].numpy()


@pytest.fixture
def video():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(5, 48, 64), dtype=np.uint8)


def test_top_level_name_is_the_deploy_class():
    assert dtc.Segmenter is Segmenter


def test_uint8_grey_frames_match_the_normalised_network(write_checkpoint, video):
    path = write_checkpoint()
    seg = Segmenter.from_checkpoint(path, device="cpu")
    out = seg(video)
    model, _ = model_from_checkpoint(path)
    x = torch.from_numpy(video).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    expected = reference(model, x)
    assert out.prob.shape == (5, 48, 64) and out.prob.dtype == np.float32
    assert np.abs(out.prob - expected).max() <= 1e-5
    np.testing.assert_array_equal(out.mask, out.prob > 0.5)
    # Without the normalisation the answer is different: the predictor is not a no-op wrapper.
    with torch.no_grad():
        raw = torch.sigmoid(model(x)[0])[:, 0].numpy()
    assert np.abs(raw - expected).max() > 1e-3


def test_push_equals_batch_inference(write_checkpoint, video):
    seg = Segmenter.from_checkpoint(write_checkpoint(), device="cpu")
    batch = seg.predict(video, batch_size=3)
    for i, frame in enumerate(video):
        one = seg.push(frame)
        assert one.prob.shape == (48, 64)
        assert np.abs(one.prob - batch.prob[i]).max() <= 1e-5
        np.testing.assert_array_equal(one.mask, batch.mask[i])
    assert seg.frames_seen == len(video)


def test_any_size_comes_back_at_its_own_resolution(write_checkpoint):
    path = write_checkpoint()
    seg = Segmenter.from_checkpoint(path, device="cpu")
    frame = np.random.default_rng(1).integers(0, 256, size=(50, 70), dtype=np.uint8)
    out = seg.push(frame)
    assert out.prob.shape == (50, 70) and out.mask.shape == (50, 70)
    model, _ = model_from_checkpoint(path)
    x = torch.from_numpy(frame).float().div(255)[None, None]
    padded = torch.nn.functional.pad(x, (0, 10, 0, 14), mode="replicate").expand(-1, 3, -1, -1)
    assert np.abs(out.prob - reference(model, padded)[0, :50, :70]).max() <= 1e-5


def test_uint8_float_grey_and_rgb_frames_agree(write_checkpoint, video):
    seg = Segmenter.from_checkpoint(write_checkpoint(), device="cpu")
    a = seg(video).prob
    b = seg(video.astype(np.float32) / 255).prob
    c = seg(np.repeat(video[..., None], 3, axis=-1)).prob
    d = seg(torch.from_numpy(video)[..., None]).prob
    for other in (b, c, d):
        assert np.abs(a - other).max() <= 1e-6


def test_recorded_preprocessing_is_used(write_checkpoint, video):
    pre = {"in_channels": 3, "mean": [0.3, 0.3, 0.3], "std": [0.2, 0.25, 0.3], "multiple": 16,
           "train_size": [48, 64], "threshold": 0.4}
    path = write_checkpoint(preprocess=pre)
    seg = Segmenter.from_checkpoint(path, device="cpu")
    assert seg.preprocess == Preprocessing.from_dict(pre)
    model, _ = model_from_checkpoint(path)
    x = torch.from_numpy(video).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    out = seg(video)
    assert np.abs(out.prob - reference(model, x, pre["mean"], pre["std"])).max() <= 1e-5
    np.testing.assert_array_equal(out.mask, out.prob > 0.4)


def test_defaults_for_older_checkpoints_record_the_training_size(write_checkpoint):
    seg = Segmenter.from_checkpoint(write_checkpoint(size=(32, 48)), device="cpu")
    assert seg.preprocess.train_size == (32, 48)
    assert seg.preprocess.mean == tuple(IMAGE_MEAN) and seg.preprocess.multiple == 16


@pytest.mark.parametrize("frames, message", [
    (np.zeros((2, 3, 48, 64), np.uint8), "shaped"),
    (np.zeros((2, 48, 64, 2), np.uint8), "C = 1"),
    (np.full((2, 48, 64), 2.0, np.float32), "in \\[0, 1\\]"),
    (np.full((2, 48, 64), np.nan, np.float32), "finite"),
    (np.zeros((2, 48, 64), np.int32), "uint8"),
    (np.zeros((0, 48, 64), np.uint8), "empty"),
])
def test_bad_frames_are_refused_with_a_clear_message(write_checkpoint, frames, message):
    seg = Segmenter.from_checkpoint(write_checkpoint(), device="cpu")
    with pytest.raises(ValueError, match=message):
        seg(frames)


def test_bad_preprocessing_and_arguments(write_checkpoint):
    with pytest.raises(ValueError, match="mean and std need 3"):
        Preprocessing(in_channels=3, mean=(0.5,), std=(0.5,), multiple=16)
    with pytest.raises(ValueError, match="unknown keys"):
        Preprocessing.from_dict({"in_channels": 1, "mean": [0], "std": [1], "multiple": 16, "colour": 1})
    seg = Segmenter.from_checkpoint(write_checkpoint(), device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        seg.predict(np.zeros((1, 48, 64), np.uint8), batch_size=0)
    with pytest.raises(ValueError, match="multiples of 16"):
        seg.probabilities(torch.zeros(1, 3, 40, 64))
    with pytest.raises(FileNotFoundError):
        Segmenter.from_checkpoint("/nonexistent/ckpt.pt")
