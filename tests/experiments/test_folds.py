"""Patient-level k-fold cross-validation and the cross-validated ensemble of `dtc experiment`."""
from __future__ import annotations

import csv

import pytest
import yaml

from dtc.data import patient_folds
from dtc.engine import load_config
from dtc.engine.data import build_dataset
from dtc.experiments import load_experiment


def test_patient_folds_test_every_patient_once_and_never_train_or_select_on_it():
    patients = [f"p{i}" for i in range(11)]
    tested = []
    for fold in range(3):
        assign = patient_folds(patients, seed=4, folds=3, fold=fold)
        test = {p for p, s in assign.items() if s == "test"}
        assert test and {s for s in assign.values()} == {"train", "val", "test"}
        tested += sorted(test)
    assert sorted(tested) == sorted(patients)
    with pytest.raises(ValueError, match="fold must be an integer in \\[0, 3\\)"):
        patient_folds(patients, 0, 3, 3)
    with pytest.raises(ValueError, match="at least 4 patients"):
        patient_folds(patients[:3], 0, 2, 0)


def test_synthetic_folds_keep_test_patients_out_of_train_and_val():
    def patients(fold, split):
        cfg = load_config(None, ["stage=teacher", "data.height=32", "data.width=64", "data.num_videos=8",
                                 "data.frames=4", "data.folds=2", f"data.fold={fold}"])
        return {v["patient_id"] for v in build_dataset(cfg, split).videos}

    for fold in (0, 1):
        assert not patients(fold, "test") & (patients(fold, "train") | patients(fold, "val"))
    assert not patients(0, "test") & patients(1, "test")


def test_two_fold_experiment_writes_the_ensemble_and_latex_tables(tmp_path):
    from dtc.cli.main import main as cli

    spec = {
        "name": "cv", "seeds": [0, 1], "folds": 2,
        "base": {"data": {"source": "synthetic", "height": 32, "width": 64, "num_videos": 8, "frames": 4,
                          "batch_size": 4, "max_windows": 2},
                 "model": {"name": "student", "kwargs": {"base": 4}},
                 "run": {"device": "cpu", "progress": False, "threads": 1}},
        "teacher": {"optim": {"lr": 1e-2, "epochs": 1, "scheduler": "poly"}},
        "student": {"optim": {"lr": 1e-3, "epochs": 1}, "flow.provider": "gt"},
        "grid": {"base": {"label": "+ KD", "loss.ablation": "seg+kd"}, "full": {"label": "full"}},
        "evaluation": {"baseline": "base", "flip_tta": True},
    }
    path = tmp_path / "cv.yaml"
    path.write_text(yaml.safe_dump(spec))
    experiment = load_experiment(path)
    assert experiment.folds == 2 and experiment.seed_keys == ["run.seed"]
    assert [r.run_id for r in experiment.plan(tmp_path)][:2] == ["seed0/fold0/teacher", "seed0/fold1/teacher"]
    assert cli(["experiment", "run", str(path), f"--out={tmp_path / 'out'}"]) == 0
    folder = tmp_path / "out" / "cv" / "default"
    rows = list(csv.DictReader((folder / "ensemble.csv").open()))
    for arm in ("teacher", "base", "full"):
        mine = [r for r in rows if r["arm"] == arm]
        # Every patient's videos scored once (each by its own fold's ensemble of the two seeds' models).
        assert len(mine) == 8 and len({r["video"] for r in mine}) == 8 and {r["models"] for r in mine} == {"2"}
        assert {r["fold"] for r in mine} == {"0", "1"} and {r["flip_tta"] for r in mine} == {"True"}
    assert r"\begin{tabular}" in (folder / "ensemble.tex").read_text()
    assert "flip TTA" in (folder / "ensemble.md").read_text()
    latex = (folder / "results.tex").read_text()
    assert "$p$ (Dice@0.5)" in latex and "full" in latex


def test_folds_are_checked(tmp_path):
    from dtc.experiments import ExperimentError

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"folds": 1, "grid": {"a": {}}}))
    with pytest.raises(ExperimentError, match="folds must be an integer >= 2"):
        load_experiment(path)
    path.write_text(yaml.safe_dump({"folds": 2, "seed_keys": ["run.seed", "data.seed"], "grid": {"a": {}}}))
    with pytest.raises(ExperimentError, match="drop it from seed_keys"):
        load_experiment(path)
