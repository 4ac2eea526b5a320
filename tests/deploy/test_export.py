"""`dtc export`: the runtime's model file, the torch.export program and ONNX, each equal to the checkpoint."""
from __future__ import annotations

import json

import pytest
import torch

from dtc.cli.main import main
from dtc.deploy import Segmenter
from dtc.deploy.export import TOLERANCE, export, exported_program_module
from dtc.models.cpp_net import _nets


def frames(n, h, w, seed=3):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_export_writes_verified_runtime_and_pt2_files(write_checkpoint, tmp_path):
    ckpt = write_checkpoint()
    summary = export(ckpt, tmp_path / "exp", onnx=False)
    out = tmp_path / "exp"
    assert (out / "model.dtc").is_file() and (out / "model.pt2").is_file()
    assert json.loads((out / "export.json").read_text())["files"]["pt2"]["max_abs"] <= TOLERANCE
    assert summary["preprocess"]["train_size"] == [48, 64] and summary["preprocess"]["multiple"] == 16
    seg = Segmenter.from_checkpoint(ckpt, device="cpu")
    program = exported_program_module(out / "model.pt2")
    # Dynamic shapes: sizes and batch counts other than the probe's.
    for n, h, w in ((1, 48, 64), (3, 32, 96), (2, 80, 32)):
        x = frames(n, h, w)
        ref = seg.probabilities(x)
        with torch.no_grad():
            got = program(x)
        assert got.shape == (n, 1, h, w)
        assert float((got - ref).abs().max()) <= 1e-5
    for n, h, w in ((1, 48, 64), (3, 32, 96), (2, 80, 16)):  # the runtime file takes any multiple
        x = frames(n, h, w)
        ref = seg.probabilities(x)
        runtime = _nets().runtime_probabilities(str(out / "model.dtc"), x, "cpu")
        assert float((runtime - ref).abs().max()) <= 1e-5
        assert torch.equal(runtime > 0.5, ref > 0.5)


def test_onnx_export_runs_in_onnxruntime(write_checkpoint, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    ckpt = write_checkpoint()
    export(ckpt, tmp_path / "exp", onnx=True)
    session = ort.InferenceSession(str(tmp_path / "exp" / "model.onnx"), providers=["CPUExecutionProvider"])
    seg = Segmenter.from_checkpoint(ckpt, device="cpu")
    for n, h, w in ((1, 48, 64), (2, 32, 96)):
        x = frames(n, h, w)
        got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
        assert float((got - seg.probabilities(x)).abs().max()) <= 1e-5


def test_export_of_a_unet_writes_the_runtime_file_and_says_why_no_pt2(write_checkpoint, tmp_path, capsys):
    ckpt = write_checkpoint("unet", {"base": 2})
    assert main(["export", str(ckpt), str(tmp_path / "exp"), "--no-onnx"]) == 0
    said = capsys.readouterr().out
    assert "runtime" in said and "pt2      skipped" in said and "student only" in said
    x = frames(1, 48, 64)
    ref = Segmenter.from_checkpoint(ckpt, device="cpu").probabilities(x)
    got = _nets().runtime_probabilities(str(tmp_path / "exp" / "model.dtc"), x, "cpu")
    assert float((got - ref).abs().max()) <= 1e-5


def test_export_errors_are_clear(write_checkpoint, tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing.pt"), str(tmp_path / "exp")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    garbage = tmp_path / "garbage.dtc"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a dtc model file"):
        _nets().runtime_probabilities(str(garbage), frames(1, 48, 64))
    with pytest.raises(ValueError, match="model file not found"):
        _nets().runtime_probabilities(str(tmp_path / "nope.dtc"), frames(1, 48, 64))
    export(write_checkpoint(), tmp_path / "exp", onnx=False)
    model = str(tmp_path / "exp" / "model.dtc")
    with pytest.raises(ValueError, match="not a multiple of 16"):
        _nets().runtime_probabilities(model, frames(1, 40, 64))
    with pytest.raises(ValueError, match=r"shaped \(N, 3, H, W\)"):
        _nets().runtime_probabilities(model, torch.rand(1, 1, 48, 64))
    with pytest.raises(ValueError, match="device must be"):
        _nets().runtime_probabilities(model, frames(1, 48, 64), "tpu")
    sd = {k: v for k, v in Segmenter.from_checkpoint(write_checkpoint(), device="cpu").model.state_dict().items()}
    del sd["head.bias"]
    with pytest.raises(ValueError, match="'head.bias' was not given"):
        _nets().save_runtime_model(str(tmp_path / "x.dtc"), "student", {"base": 4}, sd, 3, [0.5] * 3, [0.5] * 3,
                                   16, [], 0.5, "{}")
    assert not (tmp_path / "x.dtc").exists()


@pytest.mark.parametrize("channels, bgr", [(1, False), (3, True), (3, False), (4, True)])
def test_the_one_pass_8bit_path_gives_the_same_bits_as_the_tensor_path(write_checkpoint, tmp_path, channels, bgr):
    export(write_checkpoint(), tmp_path / "exp", onnx=False)
    model = str(tmp_path / "exp" / "model.dtc")
    pixels = torch.randint(0, 256, (48, 64, channels), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    got = _nets().runtime_probabilities_8bit(model, pixels, bgr)
    rgb = pixels[..., :3].flip(-1) if bgr and channels > 1 else pixels[..., :3]
    x = (rgb.permute(2, 0, 1)[None].to(torch.float32) / 255).expand(-1, 3, -1, -1)
    assert torch.equal(got, _nets().runtime_probabilities(model, x.contiguous(), "cpu"))


def test_the_one_pass_8bit_path_refuses_bad_frames(write_checkpoint, tmp_path):
    export(write_checkpoint(), tmp_path / "exp", onnx=False)
    model = str(tmp_path / "exp" / "model.dtc")
    with pytest.raises(ValueError, match="not a multiple of 16"):
        _nets().runtime_probabilities_8bit(model, torch.zeros(40, 64, 1, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"channel\(s\)"):
        _nets().runtime_probabilities_8bit(model, torch.zeros(48, 64, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8 CPU tensor"):
        _nets().runtime_probabilities_8bit(model, torch.zeros(48, 64, 1))
