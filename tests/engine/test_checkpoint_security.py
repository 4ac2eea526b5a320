"""A checkpoint is data, never code: every loader refuses a crafted pickle before it runs, in one line;
non-finite weights and networks of another architecture are refused at load, in one line."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dtc.cli.main import main
from dtc.engine import load_run_checkpoint
from dtc.engine.checkpoint import FORMAT, VERSION, CheckpointError, check_plain, read_checkpoint

from tests.engine.conftest import TINY

TINY_EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"


class _Plant:
    """Unpickling this calls ``open(marker, "w")``, which creates the marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "version": VERSION, "stage": "teacher", "epoch": 1, "best": 0.5,
                "model": {"name": "student", "kwargs": {"base": 4}, "state_dict": {}},
                "config": {"stage": "teacher"}, "payload": _Plant(marker)}, path)
    return path


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def _loader_commands(tmp_path: Path, evil: Path, marker: Path):
    frames = tmp_path / "frames"
    frames.mkdir(exist_ok=True)
    yield "infer", ["infer", str(evil), str(frames), "--out", str(tmp_path / "pred")]
    yield "evaluate", ["evaluate", "--checkpoint", str(evil), "-o", str(tmp_path / "eval")]
    yield "train-student --teacher", ["train-student", *TINY, "--teacher", str(evil), "--out", str(tmp_path / "s")]
    resumed = tmp_path / "resumed"
    _plant(resumed / "last.pt", marker)
    yield "--resume", ["train-teacher", *TINY, "--out", str(resumed), "--resume"]
    from dtc.experiments import load_experiment

    plan = load_experiment(TINY_EXPERIMENT, "tiny", []).plan(tmp_path / "exp")
    _plant(plan[0].out_dir / "last.pt", marker)
    yield "experiment status", ["experiment", "status", str(TINY_EXPERIMENT), "--preset", "tiny",
                                "--out", str(tmp_path / "exp")]


def test_every_loader_refuses_a_pickle_that_runs_code(tmp_path, capsys):
    marker = tmp_path / "MARKER_code_ran"
    evil = _plant(tmp_path / "evil.pt", marker)
    tried = []
    for label, argv in _loader_commands(tmp_path, evil, marker):
        code = main(argv)
        assert not marker.exists(), f"{label}: unpickling ran code"
        assert code != 0, label
        _one_line_error(capsys, "refused", "run code", "last.pt" if "resume" in label or "status" in label else "evil.pt")
        tried.append(label)
    assert len(tried) == 5


def test_the_library_loader_refuses_the_pickle_too(tmp_path):
    from dtc import models

    marker = tmp_path / "marker"
    evil = _plant(tmp_path / "evil.pt", marker)
    for load in (read_checkpoint, load_run_checkpoint, models.load_checkpoint):
        with pytest.raises(CheckpointError, match="refused"):
            load(evil)
    assert not marker.exists()


def test_a_checkpoint_with_nan_weights_is_refused_at_load(tiny_teacher, tmp_path, capsys):
    ckpt = torch.load(tiny_teacher, weights_only=True)
    first = next(k for k, v in ckpt["model"]["state_dict"].items() if v.is_floating_point())
    ckpt["model"]["state_dict"][first][...] = math.nan
    bad = tmp_path / "nan.pt"
    torch.save(ckpt, bad)
    frames = tmp_path / "frames"
    frames.mkdir()
    assert main(["infer", str(bad), str(frames), "--out", str(tmp_path / "pred")]) == 2
    _one_line_error(capsys, "non-finite weights", first, "nan.pt")
    assert not (tmp_path / "pred").exists()


def test_weights_of_another_network_give_one_line_not_every_key(tiny_teacher, tmp_path, capsys):
    ckpt = torch.load(tiny_teacher, weights_only=True)
    ckpt["model"]["kwargs"] = {"base": 8}  # the stored weights are base 4
    bad = tmp_path / "relabelled.pt"
    torch.save(ckpt, bad)
    assert main(["infer", str(bad), str(tmp_path), "--out", str(tmp_path / "pred")]) == 2
    _one_line_error(capsys, "do not fit student (base 8)", "shape mismatch")


def test_a_run_checkpoint_loads_with_plain_weights_only_torch_load(tiny_teacher):
    ckpt = torch.load(tiny_teacher, weights_only=True)  # no allow-list needed: readable by any torch
    assert ckpt["format"] == FORMAT and type(ckpt["torch_version"]) is str


def test_saving_refuses_values_the_safe_reader_could_not_rebuild(tmp_path):
    from dtc import models

    check_plain({"a": [1, 2.0, "x", None, (True,)], "t": torch.zeros(2), 3: {"b": torch.Size([2])}})
    with pytest.raises(TypeError, match=r"extra\['when'\] is a pathlib"):
        check_plain({"when": tmp_path}, "extra")
    net = models.create("student", base=4)
    with pytest.raises(TypeError, match="save_checkpoint: extra.*numpy"):
        import numpy as np

        models.save_checkpoint(tmp_path / "m.pt", net, extra={"score": np.float32(0.5)})
    assert not (tmp_path / "m.pt").exists()


def test_one_reader_serves_both_formats(tmp_path):
    from dtc import models
    from dtc.engine import model_from_checkpoint

    net = models.create("student", base=4)
    path = models.save_checkpoint(tmp_path / "m.pt", net, extra={"epoch": 3})
    model, ckpt = model_from_checkpoint(path)
    assert ckpt["model"]["name"] == "student" and ckpt["epoch"] == 3 and math.isnan(ckpt["best"])
    with pytest.raises(CheckpointError, match="not a run checkpoint"):
        load_run_checkpoint(path)
