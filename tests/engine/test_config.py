"""Configs: YAML + overrides, typed coercion, and errors that name the key before training starts."""
from __future__ import annotations

import pytest

from dtc.engine import ConfigError, TrainConfig, apply_overrides, load_config


def test_overrides_are_typed_and_nested(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stage: teacher\noptim:\n  lr: 0.01\ndata:\n  batch_size: 4\n")
    cfg = load_config(path, ["optim.lr=1e-3", "data.height=64", "optim.grad_clip=null", "model.kwargs={width: 8}"])
    assert cfg.stage == "teacher"
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.data.batch_size == 4 and cfg.data.height == 64
    assert cfg.optim.grad_clip is None
    assert cfg.model.kwargs == {"width": 8}
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("overrides,pattern", [
    (["optim.lrr=1"], r"unknown config key\(s\) \['optim.lrr'\]"),
    (["data.batch_size=two"], r"data.batch_size must be an integer"),
    (["optim.amp=fp8"], r"optim.amp must be one of \['off', 'bf16', 'fp16'\], got 'fp8'"),
    (["data.T=1"], r"data.T must be >= 2 for stage 2"),
    (["data.height=100"], r"multiples of 16"),
    (["optim.lr=-1"], r"lr > 0"),
    (["model.name=resnet"], r"model.name: unknown network 'resnet'"),
    (["model.kwargs={bogus: 4}"], r"model.kwargs.bogus: student takes no argument 'bogus'"),
    (["flow.provider=magic"], r"flow.provider must be one of"),
    (["loss.no_such_switch=1"], r"loss: .*no_such_switch"),
    (["run.device=tpu"], r"run.device must be"),
    (["data.source=csv"], r"data.root is required"),
    (["loss.occlusion_check=true", "flow.provider=cached:gt", "flow.cache_dir=/tmp/x"], r"cached:gt' is not supported"),
])
def test_bad_values_are_reported_by_key(overrides, pattern, tmp_path):
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"x")
    cfg_overrides = [f"teacher_checkpoint={teacher}", *overrides]
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, cfg_overrides).validate()


def test_missing_paths_are_reported_before_training(tmp_path):
    with pytest.raises(ConfigError, match="teacher_checkpoint is required"):
        load_config(None, ["stage=student"]).validate()
    with pytest.raises(ConfigError, match="teacher_checkpoint does not exist"):
        load_config(None, [f"teacher_checkpoint={tmp_path / 'none.pt'}"]).validate()
    with pytest.raises(ConfigError, match="data.root does not exist"):
        load_config(None, ["stage=teacher", "data.source=sunseg", f"data.root={tmp_path / 'nope'}"]).validate()
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"optim": 3}, ["optim.lr=1"])


def test_yaml_boolean_words_in_string_fields(tmp_path):
    """`optim.amp=off` (and `amp: off` in a file) is YAML's boolean false; the string field takes the word."""
    assert load_config(None, ["optim.amp=off"]).optim.amp == "off"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("optim:\n  amp: off\n")
    assert load_config(cfg_file).optim.amp == "off"
    with pytest.raises(ConfigError, match="optim.amp must be one of"):
        load_config(None, ["optim.amp=yes"]).validate()  # read as true -> "on", not a choice
