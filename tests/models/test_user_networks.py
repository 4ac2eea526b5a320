"""Bring your own network: registry, import paths, validated kwargs, taps from the config, checkpoints,
Trainer(model=, teacher=), logits-only students, and the CLI (train-teacher, train-student, an
experiment arm, --resume) on a plain-PyTorch U-Net dtc has never seen (tests/models/user_unet.py)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from dtc import models
from dtc.cli.main import main as cli
from dtc.engine import ConfigError, Trainer, load_config, load_run_checkpoint, model_from_checkpoint
from tests.models.user_unet import TinyUNet, build_unet

USER_NET = "tests.models.user_unet:build_unet"
TAPS = ["model.taps.local=decoder.1", "model.taps.global=bottleneck"]
# Tiny on purpose: 32x64 frames, a couple of windows, one or two epochs, so CI stays fast.
TINY = ["data.height=32", "data.width=64", "data.num_videos=6", "data.frames=6", "data.batch_size=2",
        "data.max_windows=2", "run.progress=false", "run.device=cpu", "optim.lr=1e-2", f"model.name={USER_NET}",
        "model.kwargs={width: 4}"]


def _x():
    return torch.randn(2, 3, 32, 64, generator=torch.Generator().manual_seed(3))


def test_register_and_import_path_build_a_users_net():
    models.register("my-unet", build_unet)
    try:
        assert "my-unet" in models.names()
        assert isinstance(models.create("my-unet", width=4), TinyUNet)
        with pytest.raises(ValueError, match="already registered"):
            models.register("my-unet", TinyUNet)
        with pytest.raises(ValueError, match="built-in"):
            models.register("unet", build_unet)
    finally:
        models.unregister("my-unet")
    assert "my-unet" not in models.names()
    net = models.create(USER_NET, width=4)
    assert net(_x()).shape == (2, 1, 32, 64)
    with pytest.raises(ValueError, match="cannot import module 'no_such_pkg.nets'"):
        models.create("no_such_pkg.nets:build")
    with pytest.raises(ValueError, match="no attribute 'nope'"):
        models.create("tests.models.user_unet:nope")
    with pytest.raises(ValueError, match="unknown network 'resnet'"):
        models.create("resnet")


@pytest.mark.parametrize("kwargs,message", [
    ({"base": 4}, r"model.kwargs.base: .* takes no argument 'base'"),
    ({"width": "four"}, r"model.kwargs.width: .* expects int, got 'four'"),
    ({"width": 4.5}, r"model.kwargs.width: .* expects int, got 4.5"),
])
def test_kwargs_are_checked_against_the_factory_before_training(kwargs, message):
    with pytest.raises(TypeError, match=message):
        models.check_kwargs(USER_NET, kwargs)
    cfg = load_config(None, [f"model.name={USER_NET}", f"model.kwargs={json.dumps(kwargs)}", "stage=teacher"])
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_cli_reports_a_bad_kwarg_in_one_line(tmp_path, capsys):
    # The example: a kwarg the factory does not take reached the constructor as a raw traceback.
    code = cli(["train-teacher", *TINY, "model.name=student", "model.kwargs={bogus: 4}", f"--out={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert code == 2 and "model.kwargs.bogus" in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_taps_from_the_config_and_bad_tap_names(tmp_path):
    net = models.build(USER_NET, {"width": 4}, {"local": "decoder.1", "global": "bottleneck"})
    logits, local, global_ = net(_x())
    assert logits.shape == (2, 1, 32, 64) and local.shape == (2, 4, 32, 64) and global_.shape == (2, 16, 8, 16)
    cfg = load_config(None, ["stage=teacher", *TINY, "model.taps.local=decoder.9", f"run.out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="model.taps: .*'decoder.9' is not a submodule name"):
        Trainer(cfg)
    with pytest.raises(ConfigError, match=r"model.taps: unknown key\(s\) \['middle'\]"):
        load_config(None, ["stage=teacher", *TINY, "model.taps.middle=bottleneck"]).validate()


def test_model_checkpoints_of_user_nets_round_trip(tmp_path):
    torch.manual_seed(0)
    plain = TinyUNet(width=4)
    plain(_x())  # move the running statistics away from their defaults
    path = models.save_checkpoint(tmp_path / "plain.pt", plain, kwargs={"width": 4})
    loaded, meta = models.load_checkpoint(path)
    assert meta["name"] == "tests.models.user_unet:TinyUNet" and type(loaded) is TinyUNet
    torch.testing.assert_close(loaded.eval()(_x()), plain.eval()(_x()))

    tapped = models.build(USER_NET, {"width": 4}, {"local": "decoder.1"})
    path = models.save_checkpoint(tmp_path / "tapped.pt", tapped, name=USER_NET, kwargs={"width": 4})
    loaded, meta = models.load_checkpoint(path)
    assert isinstance(loaded, models.FeatureTaps) and meta["taps"] == {"local": "decoder.1"}
    assert loaded.local_name == "decoder.1"

    class Local(torch.nn.Module):
        def forward(self, x):
            return x[:, :1]

    with pytest.raises(ValueError, match="pass name="):
        models.save_checkpoint(tmp_path / "local.pt", Local())


def test_trainer_takes_model_and_teacher_modules_and_warns_once_without_taps(tmp_path):
    torch.manual_seed(0)
    cfg = load_config(None, ["stage=student", *TINY, "optim.epochs=2", f"run.out_dir={tmp_path / 's'}"])
    teacher = build_unet(width=4)
    student = build_unet(width=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(cfg, model=student, teacher=teacher)
        assert trainer.model is student and trainer.student_init == "teacher copy"
        summary = trainer.fit()
    skipped = [w for w in caught if "prototype term is skipped" in str(w.message)]
    assert len(skipped) == 1, [str(w.message) for w in caught]
    assert summary["epochs"] == 2 and all(row["train_proto"] == 0.0 for row in summary["history"])
    assert all(row["train_con"] > 0 for row in summary["history"])
    with pytest.raises(ConfigError, match="teacher= is for stage 2"):
        Trainer(load_config(None, ["stage=teacher", *TINY, f"run.out_dir={tmp_path / 't'}"]), teacher=teacher)


def _runs(tmp_path: Path):
    return tmp_path / "teacher", tmp_path / "student"


def test_cli_trains_a_users_unet_through_both_stages_and_an_experiment_arm_with_resume(tmp_path, capsys):
    teacher_dir, student_dir = _runs(tmp_path)
    common = [*TINY, *TAPS]
    assert cli(["train-teacher", *common, "optim.epochs=1", "optim.scheduler=poly", f"--out={teacher_dir}"]) == 0
    assert cli(["train-teacher", *common, "optim.epochs=2", "optim.scheduler=poly", f"--out={teacher_dir}",
                "--resume", "--allow-change", "optim.epochs"]) == 0
    ckpt = load_run_checkpoint(teacher_dir / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["model"]["name"] == USER_NET
    assert ckpt["model"]["taps"] == {"local": "decoder.1", "global": "bottleneck"}
    teacher, _ = model_from_checkpoint(teacher_dir / "last.pt")
    assert isinstance(teacher, models.FeatureTaps) and isinstance(teacher.model, TinyUNet)

    student = [*common, "optim.epochs=1", "flow.provider=gt", f"--teacher={teacher_dir / 'best.pt'}",
               f"--out={student_dir}"]
    assert cli(["train-student", *student]) == 0
    assert cli(["train-student", *student[:-4], "optim.epochs=2", *student[-3:], "--resume",
                "--allow-change", "optim.epochs"]) == 0
    history = load_run_checkpoint(student_dir / "last.pt")["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(row["train_proto"] > 0 for row in history)  # the taps feed the prototype term
    capsys.readouterr()

    spec = {
        "name": "byo-net", "seeds": [0],
        "base": {"data": {"source": "synthetic", "height": 32, "width": 64, "num_videos": 6, "frames": 6,
                          "batch_size": 2, "max_windows": 2},
                 "model": {"name": USER_NET, "kwargs": {"width": 4}, "taps": {"local": "decoder.1"}},
                 "run": {"device": "cpu", "progress": False, "threads": 1}},
        "teacher": {"optim": {"lr": 1e-2, "epochs": 1, "scheduler": "poly"}},
        "student": {"optim": {"lr": 1e-3, "epochs": 1}, "flow.provider": "gt"},
        "grid": {"full": {"label": "full"},
                 "logits-only": {"label": "no taps", "model.taps": {}}},
        "evaluation": {"baseline": "logits-only"},
    }
    path = tmp_path / "byo.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "exp"
    assert cli(["experiment", "run", str(path), f"--out={out}"]) == 0
    capsys.readouterr()
    arm = load_run_checkpoint(out / "byo-net" / "default" / "seed0" / "full" / "last.pt")
    assert arm["model"]["name"] == USER_NET and arm["epoch"] == 1
    folder = out / "byo-net" / "default"
    latex = (folder / "results.tex").read_text()
    assert r"\begin{tabular}" in latex and "$p$ (Dice@0.5)" in latex and "Wilcoxon" in latex
    assert "metric" in (folder / "paired_videos.csv").read_text()
    # Running it again resumes nothing and retrains nothing: every run is finished.
    assert cli(["experiment", "run", str(path), f"--out={out}"]) == 0
    assert "all 3 runs finished" in capsys.readouterr().out
