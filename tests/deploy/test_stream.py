"""dtc-stream, the C++ runtime's executable: equal to Python inference, and its error paths."""
from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest

from dtc.cli.main import main
from dtc.deploy import Segmenter
from dtc.deploy.export import export

try:
    from dtc.cli.stream import find_dtc_stream

    EXE = str(find_dtc_stream())
except FileNotFoundError:  # built only with OpenCV's videoio/imgcodecs
    EXE = None

pytestmark = pytest.mark.skipif(EXE is None, reason="dtc-stream was not built (OpenCV videoio/imgcodecs missing)")


def run(*args, stdin=None):
    return subprocess.run([EXE, *map(str, args)], input=stdin, capture_output=True, timeout=300)


@pytest.fixture
def simulated_video():
    """Eight 48x64 grey frames of the simulator, as uint8."""
    from dtc.data import SyntheticTRUSDataset

    data = SyntheticTRUSDataset(num_videos=1, frames=8, size=(48, 64), T=1, split="all")
    return np.stack([np.round(data[i]["image"][0, 0].numpy() * 255).astype(np.uint8) for i in range(8)])


@pytest.fixture
def exported(write_checkpoint, tmp_path):
    ckpt = write_checkpoint()
    export(ckpt, tmp_path / "exp", onnx=False)
    return ckpt, tmp_path / "exp" / "model.dtc"


def write_folder(folder, frames):
    folder.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"f{i:03d}.png"), f)
    return folder


def read_outputs(out, n):
    probs = np.stack([np.load(out / "probs" / f"{i:06d}.npy") for i in range(n)])
    masks = np.stack([cv2.imread(str(out / "masks" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED) for i in range(n)])
    return probs, masks


def test_runtime_equals_python_inference_on_a_simulated_video(exported, simulated_video, tmp_path):
    ckpt, model = exported
    expected = Segmenter.from_checkpoint(ckpt, device="cpu")(simulated_video)
    folder = write_folder(tmp_path / "frames", simulated_video)
    r = run(model, folder, "--out", tmp_path / "out", "--probs", "--masks", "--threads", 1, "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    probs, masks = read_outputs(tmp_path / "out", len(simulated_video))
    assert probs.shape == expected.prob.shape and probs.dtype == np.float32
    assert np.abs(probs - expected.prob).max() <= 1e-5
    np.testing.assert_array_equal(masks == 255, expected.mask)
    assert set(np.unique(masks)) <= {0, 255}
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["frames"] == 8 and report["fps"] > 0 and report["threads"] == 1
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p95"] <= report["latency_ms"]["p99"]
    overlay = cv2.VideoCapture(str(tmp_path / "out" / "overlay.mp4"))
    assert overlay.isOpened() and int(overlay.get(cv2.CAP_PROP_FRAME_COUNT)) == 8


def test_realtime_feed_paces_the_frames_and_keeps_the_results(exported, simulated_video, tmp_path):
    ckpt, model = exported
    expected = Segmenter.from_checkpoint(ckpt, device="cpu")(simulated_video)
    folder = write_folder(tmp_path / "frames", simulated_video)
    r = run(model, folder, "--out", tmp_path / "out", "--probs", "--realtime", "--fps", 20, "--threads", 2, "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    probs = np.stack([np.load(tmp_path / "out" / "probs" / f"{i:06d}.npy") for i in range(8)])
    assert np.abs(probs - expected.prob).max() <= 1e-5
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    # Frame k is handed over no earlier than k / 20 s after the start: 8 frames take at least 0.35 s.
    assert report["wall_s"] >= 7 / 20 and report["threads"] == 2
    assert report["adaptive_threads"] is True
    assert set(report["frames_per_thread_count"]) <= {"1", "2"} and sum(report["frames_per_thread_count"].values()) == 8


def test_drop_late_segments_the_newest_frame_when_the_network_falls_behind(exported, simulated_video, tmp_path):
    ckpt, model = exported
    expected = Segmenter.from_checkpoint(ckpt, device="cpu")(simulated_video)
    folder = write_folder(tmp_path / "frames", simulated_video)
    # 10000 frames per second: all eight arrive while the first is still being segmented.
    r = run(model, folder, "--out", tmp_path / "out", "--probs", "--realtime", "--fps", 10000, "--drop-late",
            "--no-overlay", "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["skipped_frames"] >= 1 and report["frames"] + report["skipped_frames"] == 8
    written = sorted(int(p.stem) for p in (tmp_path / "out" / "probs").glob("*.npy"))
    assert len(written) == report["frames"] and written[-1] == 7  # the newest frame is never skipped
    for i in written:
        assert np.abs(np.load(tmp_path / "out" / "probs" / f"{i:06d}.npy") - expected.prob[i]).max() <= 1e-5


def test_fixed_threads_run_every_frame_with_the_count_given(exported, simulated_video, tmp_path):
    ckpt, model = exported
    folder = write_folder(tmp_path / "frames", simulated_video)
    r = run(model, folder, "--out", tmp_path / "out", "--threads", 2, "--fixed-threads", "--no-overlay", "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["adaptive_threads"] is False and report["thread_switches"] == 0
    assert report["frames_per_thread_count"] == {"2": 8}


def test_raw_frames_on_stdin_equal_python_inference(exported, simulated_video, tmp_path):
    ckpt, model = exported
    rgb = np.repeat(simulated_video[..., None], 3, axis=-1)
    rgb[..., 0] //= 2  # a colour frame, so the channel order matters (stdin carries BGR, as OpenCV)
    expected = Segmenter.from_checkpoint(ckpt, device="cpu")(rgb)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    r = run(model, "-", "--raw", "64x48x3", "--out", tmp_path / "out", "--probs", "--masks", "--no-overlay",
            stdin=bgr.tobytes())
    assert r.returncode == 0, r.stderr.decode()
    probs, masks = read_outputs(tmp_path / "out", 8)
    assert np.abs(probs - expected.prob).max() <= 1e-5
    np.testing.assert_array_equal(masks == 255, expected.mask)
    assert not (tmp_path / "out" / "overlay.mp4").exists()


def test_video_file_input_and_padding(exported, simulated_video, tmp_path):
    _, model = exported
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48), isColor=False)
    for f in simulated_video:
        writer.write(f)
    writer.release()
    r = run(model, path, "--masks", "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    assert len(list((tmp_path / "clip.avi_dtc" / "masks").glob("*.png"))) == 8
    # A size that is not a multiple: refused by default, padded on request (masks at the frame's size).
    odd = write_folder(tmp_path / "odd", simulated_video[:2, :40, :60])
    r = run(model, odd, "--out", tmp_path / "o1")
    assert r.returncode == 1 and b"60x40 (WxH) is not a multiple of 16" in r.stderr
    r = run(model, odd, "--out", tmp_path / "o2", "--pad", "--masks")
    assert r.returncode == 0, r.stderr.decode()
    assert cv2.imread(str(tmp_path / "o2" / "masks" / "000000.png"), cv2.IMREAD_UNCHANGED).shape == (40, 60)


def test_error_paths_give_a_message_and_a_nonzero_exit(exported, simulated_video, tmp_path, write_checkpoint):
    _, model = exported
    folder = write_folder(tmp_path / "frames", simulated_video[:2])
    bad_video = tmp_path / "broken.mp4"
    bad_video.write_bytes(b"this is not a video")
    garbage = tmp_path / "garbage.dtc"
    garbage.write_bytes(b"not a model either")
    cases = [
        ((tmp_path / "missing.dtc", folder), 1, "model file not found"),
        ((garbage, folder), 1, "is not a dtc model file"),
        ((model, tmp_path / "nowhere"), 1, "input not found"),
        ((model, bad_video), 1, "broken.mp4"),
        ((model, 97), 1, "camera 97 does not open"),
        ((model, folder, "--threads", "0"), 2, "--threads must be an integer >= 1"),
        ((model, folder, "--bogus"), 2, "unknown option --bogus"),
        ((model,), 2, "expected MODEL and INPUT"),
        ((model, "-"), 2, "needs --raw"),
        ((model, folder, "--device", "tpu"), 2, "--device must be cpu or cuda"),
        ((model, tmp_path / "empty_dir"), 1, "holds no frames"),
    ]
    (tmp_path / "empty_dir").mkdir()
    for args, code, message in cases:
        r = run(*args, "--out", tmp_path / "err")
        assert r.returncode == code, (args, r.returncode, r.stderr.decode())
        assert message.encode() in r.stderr, (args, r.stderr.decode())
        assert b"Traceback" not in r.stderr and b"terminate called" not in r.stderr
    # Raw frames whose byte count does not match --raw: reported, not silently dropped.
    r = run(model, "-", "--raw", "64x48x1", "--out", tmp_path / "e2", stdin=b"\0" * (64 * 48 + 10))
    assert r.returncode == 1 and b"stdin ended inside a frame" in r.stderr


def test_help_and_the_dtc_stream_subcommand(exported, capfd):
    r = run("--help")
    assert r.returncode == 0 and b"usage: dtc-stream MODEL INPUT" in r.stdout
    assert main(["stream", "--help"]) == 0
    assert "--no-overlay" in capfd.readouterr().out
