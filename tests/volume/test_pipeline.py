"""The XDim-KD pipeline end to end on tiny simulated volumes: teacher, pseudo-labels, the three student
modes, chunked inference writing NIfTI with the input's affine, meshes and metrics."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dtc.data.synth3d import Synth3DConfig, read_volume, write_synth3d_dataset
from dtc.volume import pipeline


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("xdim")
    cfg = Synth3DConfig(height=64, width=64, planes=20)
    write_synth3d_dataset(root / "train", 2, cfg, seed=0, progress=False)
    write_synth3d_dataset(root / "test", 1, cfg, seed=1, progress=False)
    return root


def test_pipeline_end_to_end(data, tmp_path):
    run = tmp_path / "run"
    logs = []
    settings = pipeline.train_teacher(data / "train", run, ratio=0.05, seed=0, size=32, encoder_kwargs={"base": 4},
                                      encoder_epochs=1, epochs=1, batch=4, chunk=8, log=logs.append)
    labelled = json.loads((run / "labelled.json").read_text())
    assert sum(len(v) for v in labelled.values()) == 2 and all(labelled.values())  # round(0.05 * 40), one per volume
    assert settings["size"] == 32 and (run / "teacher.pt").is_file() and (run / "encoder.pt").is_file()
    names = pipeline.write_pseudo_labels(run, draws=2, log=logs.append)
    assert names == ["vol000", "vol001"]
    pseudo = np.load(run / "pseudo" / "vol000.npz")
    assert pseudo["prob"].dtype == np.float16 and pseudo["prob"].shape == (20, 64, 64)
    for mode in pipeline.STUDENT_MODES:
        out = pipeline.train_student(run, mode, epochs=1, batch=2, base=4, chunks_per_epoch=2, n_points=16,
                                     log=logs.append)
        assert len(out["history"]) == 1 and np.isfinite(out["history"][0])
    for model in ("student-full", "teacher"):
        summary = pipeline.infer(run, data / "test", tmp_path / model, model=model, mesh=True, log=logs.append)
        pred = tmp_path / model / "vol000.nii.gz"
        image = read_volume(data / "test" / "images" / "vol000.nii.gz")
        back = read_volume(data / "test" / "images" / "vol000.nii.gz", pred)  # same shape and affine, 0/1
        assert np.allclose(back.affine, image.affine)
        assert set(summary["mean"]) == {"dice", "hd95_mm", "volume_error"}
        assert json.loads((tmp_path / model / "metrics.json").read_text())["volumes"][0]["volume"] == "vol000"
    with pytest.raises(ValueError, match="model must be"):
        pipeline.infer(run, data / "test", tmp_path / "x", model="student-bogus")
    with pytest.raises(ValueError, match="run.json"):
        pipeline.write_pseudo_labels(tmp_path / "nothing")


class _Copy(torch.nn.Module):
    """A 'student' whose logits are the input (so chunk blending can be checked exactly)."""

    def forward(self, x):
        return torch.logit(x[:, 0].clamp(1e-6, 1 - 1e-6)), None


@pytest.mark.parametrize("D, overlap", [(40, 8), (37, 8), (16, 4), (9, 8), (37, 0), (5, 0)])
def test_chunked_inference_covers_every_slice_once_in_effect(D, overlap):
    """With a network that copies its input, blending any chunk layout returns the volume itself."""
    g = torch.Generator().manual_seed(D)
    image = 0.2 + 0.7 * torch.rand(D, 16, 16, generator=g)
    prob = pipeline.predict_volume(_Copy(), image, size=16, z=16 if D >= 16 else 8, overlap=min(overlap, 7 if D < 16 else overlap))
    assert torch.allclose(prob, image, atol=1e-5)


@pytest.mark.cuda
def test_a_network_on_the_gpu_segments_a_volume_held_on_the_cpu():
    # `dtc bench xdim` on an H200 passed a CPU volume to a CUDA student and failed on a device mismatch.
    from dtc.models import StudentKD

    torch.manual_seed(0)
    student = StudentKD(base=4, kd_channels=8).eval()
    image = torch.rand(20, 24, 24, generator=torch.Generator().manual_seed(3))
    expected = pipeline.predict_volume(student, image, size=32, overlap=8)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # float32 convolutions, so CPU and GPU agree to ~1e-6
    try:
        prob = pipeline.predict_volume(student.cuda(), image, size=32, overlap=8)
        on_gpu = pipeline.predict_volume(student, image.cuda(), size=32, overlap=8)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert prob.device == image.device and on_gpu.is_cuda
    torch.testing.assert_close(prob, expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(on_gpu.cpu(), expected, rtol=0, atol=1e-4)


def test_chunk_weights_ramp():
    w = pipeline.chunk_weights(16, 8)
    assert w[0] == pytest.approx(1 / 9) and w[7] == pytest.approx(8 / 9) and w[8] == pytest.approx(8 / 9)
    assert torch.equal(pipeline.chunk_weights(16, 0), torch.ones(16, dtype=torch.float64))
    with pytest.raises(ValueError, match="overlap"):
        pipeline.predict_volume(_Copy(), torch.rand(4, 8, 8), size=8, z=4, overlap=4)


def test_experiment_file_and_smoke_run(tmp_path):
    from pathlib import Path

    from dtc.cli.main import main
    from dtc.volume.experiment import load_spec

    path = Path(__file__).resolve().parents[2] / "experiments" / "xdim.yaml"
    cpu = load_spec(path, "cpu")
    assert cpu["ratios"] == [0.001, 0.005, 0.01] and cpu["seeds"] == [0, 1, 2]
    assert cpu["arms"] == ["sparse", "teacher2d", "pseudo", "full"]
    small = load_spec(path, "cpu-small")
    assert small["ratios"] == [0.005] and small["seeds"] == [0, 1, 2]
    with pytest.raises(ValueError, match="no preset"):
        load_spec(path, "nope")
    from dtc.volume.experiment import run_experiment

    with pytest.raises(ValueError, match="not among"):
        run_experiment(path, "smoke", tmp_path / "x", ratios=[0.5])
    assert main(["xdim", "experiment", str(path), "--preset", "smoke", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "results.md").read_text()
    for label in ("sparse labels only", "slice by slice", "pseudo-labels only", "pseudo-labels + correlation"):
        assert label in table
    assert "At ρ = 0.5 %, full XDim-KD" in table
    csv = (tmp_path / "results.csv").read_text().splitlines()
    assert len(csv) == 5 and csv[0].startswith("ratio,arm,seeds,dice_mean")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.pt")}
    assert main(["xdim", "experiment", str(path), "--preset", "smoke", "--out", str(tmp_path)]) == 0
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.pt")} == before  # finished steps are skipped
    # The same folder under changed settings would mix old students into the new table: refused.
    changed = tmp_path / "changed.yaml"
    changed.write_text(path.read_text().replace("student: {epochs: 1, base: 4", "student: {epochs: 2, base: 4"))
    with pytest.raises(ValueError, match="other student settings"):
        run_experiment(changed, "smoke", tmp_path)


def test_cli_errors_are_one_line(tmp_path, capsys):
    from dtc.cli.main import main

    assert main(["xdim", "pseudo", "--run", str(tmp_path / "none")]) == 2
    assert "not an XDim-KD run folder" in capsys.readouterr().err
    assert main(["xdim", "train-teacher", "--data", str(tmp_path), "--run", str(tmp_path / "r")]) == 2
    assert "images/" in capsys.readouterr().err
