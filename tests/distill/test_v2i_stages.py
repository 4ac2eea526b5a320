"""The V2I-Seg stages end to end at a tiny size: S0 -> S1 -> S2 from the API, skip on rerun, the deployed
student is the image model (O-D1: same parameter count, loads as the image-model architecture), arm A1
(msi off), the TFD adapters start at identity, and bad settings."""
from __future__ import annotations

import json

import pytest
import torch

from dtc import models
from dtc.distill import v2i
from dtc.distill.tfd import FeatureAdapters, tfd_loss

TINY = v2i.V2IConfig(height=32, width=48, num_videos=6, frames=6, model_kwargs={"base": 4}, msi_d=16, msi_heads=2,
                     msi_points=2, epochs_s0=1, epochs_s1=1, epochs_s2=1, batch_size=2, max_windows=4, warmup_iters=2)


def test_stages_run_end_to_end_and_the_student_is_the_image_model(tmp_path):
    result = v2i.run_all(TINY, tmp_path)
    for stage in ("s0", "s1", "s2"):
        assert 0.0 <= result[stage]["dice"] <= 1.0 and result[stage]["flicker"] >= 0.0
        assert (tmp_path / f"{stage}.json").is_file()
    image_model, _ = models.load_checkpoint(tmp_path / "image_model.pt")
    student, meta = models.load_checkpoint(tmp_path / "student.pt")
    assert type(student) is type(image_model)
    assert models.count_parameters(student) == models.count_parameters(image_model)  # O-D1
    assert meta["name"] == "student" and meta["kwargs"] == {"base": 4}
    # a second run trains nothing and returns the recorded metrics
    before = (tmp_path / "student.pt").stat().st_mtime_ns
    again = v2i.run_all(TINY, tmp_path)
    assert again["s2"]["dice"] == result["s2"]["dice"] and (tmp_path / "student.pt").stat().st_mtime_ns == before
    # A finished stage is reused for settings it does not read (S0 for the distillation's) and refused
    # for those it does, instead of reporting old results under new settings.
    assert v2i.run_stage(TINY.replace(tfd="box", epochs_s2=3), "s0", tmp_path)["dice"] == result["s0"]["dice"]
    with pytest.raises(ValueError, match=r"v2i s0: .*s0.json was trained with other settings \(epochs_s0=1, now 2\)"):
        v2i.run_stage(TINY.replace(epochs_s0=2), "s0", tmp_path)
    with pytest.raises(ValueError, match=r"tfd='edt', now 'box'"):
        v2i.run_stage(TINY.replace(tfd="box"), "s2", tmp_path)


def test_arm_a1_without_msi_uses_the_image_model_as_teacher(tmp_path):
    cfg = TINY.replace(msi=False, tfd="box")
    result = v2i.run_all(cfg, tmp_path)
    assert json.loads((tmp_path / "s1.json").read_text())["dice"] == pytest.approx(result["s0"]["dice"])
    assert torch.load(tmp_path / "teacher.pt", weights_only=True)["msi"] is False


def test_adapters_start_at_identity_so_equal_features_give_zero_tfd():
    adapters = FeatureAdapters([4, 8], [4, 8])
    feats = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]
    assert all(torch.equal(a, f) for a, f in zip(adapters(feats), feats))
    masks = [torch.rand(2, 1, 8, 8), torch.rand(2, 1, 4, 4)]
    assert tfd_loss(adapters(feats), feats, masks).item() == pytest.approx(0.0, abs=1e-6)
    assert FeatureAdapters([4], [6]).adapters[0].weight.shape == (6, 4, 1, 1)


def test_clip_sampler_offsets_and_clamping():
    assert v2i._offsets(3, 2, False) == [-2, 0, 2] and v2i._offsets(3, 2, True) == [-4, -2, 0]
    assert v2i._offsets(5, 1, False) == [-2, -1, 0, 1, 2]
    data = v2i.ClipSampler(TINY, "train", delta=3)
    item = data[0]  # key frame 0: the earlier frame is clamped to frame 0
    assert item["image"].shape == (3, 3, 32, 48) and item["mask"].shape == (3, 1, 32, 48)
    assert torch.equal(item["image"][0], item["image"][1])


def test_bad_settings_and_missing_stages(tmp_path):
    with pytest.raises(ValueError, match="v2i.tfd must be"):
        TINY.replace(tfd="gauss")
    with pytest.raises(ValueError, match="v2i.cqd must be"):
        TINY.replace(cqd="cross")
    with pytest.raises(ValueError, match="unknown setting"):
        TINY.replace(lamda_tfd=1.0)
    with pytest.raises(FileNotFoundError, match="run the earlier stage first"):
        v2i.run_stage(TINY, "s2", tmp_path)
    with pytest.raises(ValueError, match="stage must be one of"):
        v2i.run_stage(TINY, "s3", tmp_path)


@pytest.mark.parametrize("cqd", ["random", "fixed"])
def test_cqd_trains_the_probe_in_s1_and_distils_in_s2(tmp_path, cqd):
    cfg = TINY.replace(cqd=cqd)
    result = v2i.run_all(cfg, tmp_path)
    payload = torch.load(tmp_path / "teacher.pt", weights_only=True)
    assert payload["decoder"] is not None and result["s2"]["dice"] >= 0.0
    student, _ = models.load_checkpoint(tmp_path / "student.pt")
    image_model, _ = models.load_checkpoint(tmp_path / "image_model.pt")
    assert models.count_parameters(student) == models.count_parameters(image_model)  # no decoder left (O-D1)


def test_s2_with_cqd_refuses_a_teacher_trained_without_the_probe(tmp_path):
    v2i.run_stage(TINY, "s0", tmp_path)
    v2i.run_stage(TINY, "s1", tmp_path)
    with pytest.raises(ValueError, match="needs the probe decoder"):
        v2i.run_stage(TINY.replace(cqd="random"), "s2", tmp_path)


def test_s2_composes_with_the_dtc_temporal_term(tmp_path):
    cfg = TINY.replace(lambda_con=1.0, tfd="box")
    item = v2i.ClipSampler(cfg, "train", delta=1)[3]
    assert item["flow"].shape == (3, 2, 32, 48) and torch.all(item["flow"][0] == 0)
    result = v2i.run_all(cfg, tmp_path)
    assert 0.0 <= result["s2"]["dice"] <= 1.0
