"""`dtc infer` on a frame folder and a video file, and the training CLI's validation path."""
from __future__ import annotations

import math

import cv2
import numpy as np

import pytest

from dtc.cli.main import main
from dtc.data import SyntheticTRUSDataset
from dtc.engine import train
from tests.conftest import probe_video


@pytest.fixture
def frames_dir(tmp_path):
    data = SyntheticTRUSDataset(num_videos=2, frames=5, size=(60, 90), T=1, split="all")
    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(5):
        cv2.imwrite(str(folder / f"frame_{i:03d}.png"), np.round(data[i]["image"][0, 0].numpy() * 255).astype(np.uint8))
    return folder


@pytest.fixture
def teacher_ckpt(tiny_config):
    cfg = tiny_config("stage=teacher", "optim.epochs=1", out="t")
    train(cfg)
    return cfg.run.out_dir + "/last.pt"


def test_infer_on_a_frame_folder_writes_masks_probs_overlay_and_nifti(teacher_ckpt, frames_dir, tmp_path, capsys):
    pytest.importorskip("nibabel")
    out = tmp_path / "pred"
    code = main(["infer", teacher_ckpt, str(frames_dir), "--out", str(out), "--probs", "--nifti",
                 "--spacing", "0.2", "0.3"])
    assert code == 0
    said = capsys.readouterr().out
    assert "teacher network student" in said and "input size 48x64" in said
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == 5
    # Outputs come back at the size of the user's frames (60x90), not the network's (48x64).
    assert cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED).shape == (60, 90)
    prob = cv2.imread(str(sorted((out / "probs").glob("*.png"))[0]), cv2.IMREAD_UNCHANGED)
    assert prob.dtype == np.uint16
    assert probe_video(out / "overlay.mp4") == {"codec": "h264", "pix_fmt": "yuv420p", "size": (90, 60), "frames": 5}
    import nibabel as nib

    vol = nib.load(str(out / "masks.nii.gz"))
    # i along columns, j along rows (ITK's layout of 2-D images), the input's spacing on each
    assert vol.shape == (90, 60, 5)
    assert vol.header.get_zooms()[:2] == pytest.approx((0.3, 0.2))
    first = cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED) > 0
    assert np.array_equal(np.asarray(vol.dataobj)[:, :, 0].T > 0, first)


def test_infer_reports_missing_and_corrupt_inputs(teacher_ckpt, tmp_path, capsys):
    assert main(["infer", teacher_ckpt, str(tmp_path / "nothing")]) == 2
    assert "input not found" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    assert main(["infer", str(bad), str(tmp_path)]) == 2
    assert "could not be read" in capsys.readouterr().err
    assert main(["infer", str(tmp_path / "missing.pt"), str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_train_cli_dry_run_and_errors(tmp_path, capsys):
    assert main(["train-teacher", "--dry-run", "optim.lr=0.02", "--out", str(tmp_path / "r")]) == 0
    assert "lr: 0.02" in capsys.readouterr().out
    assert main(["train-student", "--dry-run"]) == 2
    assert "teacher_checkpoint is required" in capsys.readouterr().err
    assert main(["train-teacher", "optim.bogus=1"]) == 2
    assert "unknown config key(s) ['optim.bogus']" in capsys.readouterr().err


def test_evaluate_checkpoint_on_its_test_split(teacher_ckpt, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", teacher_ckpt, "--split", "test", "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "| videos | frames | Sα |" in said and "FPS (batch 1" in said
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] > 0 and summary["FPS"] > 0 and 0 <= summary["Dice@0.5"] <= 1
    # The simulator's exact flow reaches the flow-compensated metrics; its calm benchmark has no event frame.
    assert 0 <= summary["warp_IoU"] <= 1 and 0 <= summary["worst_Dice"] <= summary["Dice@0.5"] + 1e-12
    assert summary["Dice_calm"] == pytest.approx(summary["Dice@0.5"]) and math.isnan(summary["Dice_event"])
    assert (out / "per_frame.csv").is_file() and (out / "overall.md").is_file()
    worst = probe_video(out / "worst_frames.mp4")
    assert worst["codec"] == "h264" and worst["frames"] == min(16, summary["frames"])
    # Another dataset through data overrides; a bad one is refused by name.
    assert main(["evaluate", "--checkpoint", teacher_ckpt, "-o", str(tmp_path / "e2"), "data.source=sunseg",
                 f"data.root={tmp_path / 'missing'}"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["evaluate", "-o", str(tmp_path / "e3"), "only-one-folder"]) == 2


def test_dtc_bench_dispatches_to_the_benchmark_modules(capsys):
    assert main(["bench", "warp", "--size", "1,1,32,32", "--repeat", "1"]) == 0
    assert "| 1,1,32,32 | fwd+bwd |" in capsys.readouterr().out
    assert main(["bench", "no-such-bench"]) == 2
    assert "expected one of" in capsys.readouterr().err


def test_stage2_step_benchmark_reports_every_part(capsys):
    args = ["bench", "step", "--device", "cpu", "--model", "student", "--kwargs", '{"base": 4}', "--B", "1",
            "--H", "48", "--W", "64", "--repeat", "1", "--flow", "gt", "--amp", "off"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for part in ("| flow |", "| teacher + pseudo-labels |", "| student forward |", "| losses |",
                 "| backward + optimiser |", "| **step** |"):
        assert part in out, part


def test_nifti_output_affine_orients_like_itk(tmp_path):
    """Voxel (column c, row r, frame t) lies at (-c·col_mm, -r·row_mm, t) in RAS: ITK's identity direction
    (LPS), so Slicer and ITK-SNAP show the frame upright with the input's pixel size."""
    import nibabel as nib

    from dtc.engine.infer import _write_nifti

    masks = np.zeros((6, 9, 2), np.uint8)
    masks[1, 7, 0] = 1  # row 1, column 7: an asymmetric marker
    _write_nifti(tmp_path / "m.nii.gz", masks, (0.5, 0.25))
    vol = nib.load(str(tmp_path / "m.nii.gz"))
    assert nib.aff2axcodes(vol.affine) == ("L", "P", "S")
    assert vol.header.get_zooms() == pytest.approx((0.25, 0.5, 1.0))
    i, j, k = np.argwhere(np.asarray(vol.dataobj) > 0)[0]
    assert (i, j, k) == (7, 1, 0)
    assert nib.affines.apply_affine(vol.affine, (i, j, k)) == pytest.approx((-7 * 0.25, -1 * 0.5, 0.0))
    assert int(vol.header["qform_code"]) == 1 and int(vol.header["sform_code"]) == 1
    with pytest.raises(ValueError, match="spacing"):
        _write_nifti(tmp_path / "bad.nii.gz", masks, (0.0, 1.0))


def test_infer_volume_reconstructs_a_sweep(teacher_ckpt, frames_dir, tmp_path):
    import json

    out = tmp_path / "rec"
    assert main(["infer", teacher_ckpt, str(frames_dir), "--out", str(out), "--no-overlay", "--volume", "0.5",
                 "--spacing", "0.2", "0.3"]) == 0
    summary = json.loads((out / "reconstruction.json").read_text())
    masks = np.stack([cv2.imread(str(p), cv2.IMREAD_UNCHANGED) > 0 for p in sorted((out / "masks").glob("*.png"))])
    assert summary["frames"] == 5 and summary["spacing_mm"] == [0.5, 0.2, 0.3]
    assert summary["volume_ml"] == pytest.approx(masks.sum() * 0.5 * 0.2 * 0.3 / 1000)
    if masks.any():
        assert (out / "surface.stl").is_file() and (out / "surface.ply").is_file() and (out / "surface.png").is_file()
        assert summary["mesh_volume_ml"] > 0
    assert main(["infer", teacher_ckpt, str(frames_dir), "--out", str(tmp_path / "r2"), "--volume", "0.5"]) == 2


def test_reconstruct_sweep_volume_of_a_known_body(tmp_path):
    from dtc.engine.infer import reconstruct_sweep

    z, y, x = np.meshgrid(np.arange(24), np.arange(40), np.arange(44), indexing="ij")
    body = (((z - 11.5) / 9) ** 2 + ((y - 19.5) / 14) ** 2 + ((x - 21.5) / 16) ** 2 <= 1).astype(np.uint8)
    summary = reconstruct_sweep(tmp_path, body, (0.25, 0.3), 1.5)
    assert summary["volume_ml"] == pytest.approx(body.sum() * 1.5 * 0.25 * 0.3 / 1000)
    assert summary["mesh_volume_ml"] == pytest.approx(summary["volume_ml"], rel=0.02)
    assert (tmp_path / "surface.stl").is_file()
