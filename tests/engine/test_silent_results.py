"""Inputs that used to give silently wrong results now give a clear error (or the right result)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from dtc.cli.main import main

from tests.engine.conftest import TINY


def _one_line(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def _write_case(root, name, masks):
    folder = root / name
    folder.mkdir(parents=True)
    for i, mask in enumerate(masks):
        cv2.imwrite(str(folder / f"{i:03d}.png"), mask)


def test_evaluate_reads_masks_stored_as_0_1(tmp_path, capsys):
    mask = np.zeros((32, 48), np.uint8)
    mask[8:20, 10:30] = 1
    _write_case(tmp_path / "gt", "case", [mask] * 4)
    _write_case(tmp_path / "pred", "case", [mask * 255] * 4)  # a perfect prediction
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "-o", str(tmp_path / "out"),
                 "--no-plots"]) == 0
    overall = (tmp_path / "out" / "overall.csv").read_text().splitlines()
    header, values = overall[0].split(","), overall[1].split(",")
    assert float(values[header.index("Dice@0.5")]) == pytest.approx(1.0)


@pytest.mark.parametrize("threshold", ["2", "nan", "0", "1", "-0.5"])
def test_evaluate_refuses_a_threshold_outside_0_1(threshold, tmp_path, capsys):
    mask = np.zeros((32, 48), np.uint8)
    mask[8:20, 10:30] = 255
    _write_case(tmp_path / "gt", "case", [mask] * 2)
    _write_case(tmp_path / "pred", "case", [mask] * 2)
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "-o", str(tmp_path / "out"),
                 "--threshold", threshold, "--no-plots"]) == 2
    _one_line(capsys, "--threshold", "strictly between 0 and 1")


def test_evaluate_names_the_binary_columns_after_the_threshold_used(tmp_path, capsys):
    mask = np.zeros((32, 48), np.uint8)
    mask[8:20, 10:30] = 255
    pred = (mask // 255 * 100).astype(np.uint8)  # probability 0.39: foreground at 0.3, background at 0.5
    _write_case(tmp_path / "gt", "case", [mask] * 3)
    _write_case(tmp_path / "pred", "case", [pred] * 3)
    out = tmp_path / "out"
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "-o", str(out), "--threshold", "0.3",
                 "--no-plots", "--no-normalize"]) == 0
    printed = capsys.readouterr().out
    assert "Dice@0.3" in printed and "@0.5" not in printed
    for name in ("overall.csv", "overall.md", "per_video.csv", "per_video.md", "per_frame.csv"):
        text = (out / name).read_text()
        assert "@0.5" not in text and "Dice@0.3" in text, name
    lines = (out / "overall.csv").read_text().splitlines()
    header, values = lines[0].split(","), lines[1].split(",")
    assert float(values[header.index("Dice@0.3")]) == pytest.approx(1.0)


def test_too_few_synthetic_videos_for_a_validation_split_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train-teacher", *TINY, "data.num_videos=4", "optim.epochs=1", "--out", str(out)]) == 2
    _one_line(capsys, "data.num_videos=4 leaves no synthetic video for the 'val' split", ">= 5")
    assert not (out / "last.pt").exists()


def test_data_synth_with_no_videos_is_an_error(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "ds"), "--videos", "0"]) == 2
    _one_line(capsys, "--videos", ">= 1")


@pytest.fixture
def teacher_ckpt(tiny_config):
    from dtc.engine import train

    cfg = tiny_config("stage=teacher", "optim.epochs=1", out="t")
    train(cfg)
    return cfg.run.out_dir + "/last.pt"


@pytest.fixture
def frames(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 255, (48, 64), dtype=np.uint8))
    return folder


def test_infer_refuses_a_folder_holding_an_earlier_run_and_an_unwritable_one_before_predicting(
        teacher_ckpt, frames, tmp_path, capsys, monkeypatch):
    out = tmp_path / "pred"
    assert main(["infer", teacher_ckpt, str(frames), "--out", str(out), "--no-overlay"]) == 0
    (out / "masks" / "00099.png").write_bytes(b"an earlier clip's extra mask")
    capsys.readouterr()
    import dtc.engine.inference

    def no_prediction(*args, **kwargs):
        raise AssertionError("predicted before checking the output folder")

    monkeypatch.setattr(dtc.engine.inference, "predict_videos", no_prediction)
    assert main(["infer", teacher_ckpt, str(frames), "--out", str(out)]) == 2
    _one_line(capsys, f"--out {out} already holds files", "new folder")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["infer", teacher_ckpt, str(frames), "--out", str(blocker / "sub")]) == 2
    _one_line(capsys, "a_file")
