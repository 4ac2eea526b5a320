"""The reproducibility record every run folder gets."""
from __future__ import annotations

import json
import os
import subprocess

import torch

import dtc
from dtc.engine.record import RECORD_NAME, write_run_record


def test_record_holds_commit_build_versions_hardware_and_command(tmp_path):
    path = write_run_record(tmp_path, argv=["dtc", "train-teacher", "optim.epochs=1"])
    record = json.loads(path.read_text())
    assert path.name == RECORD_NAME
    assert record["command_line"] == ["dtc", "train-teacher", "optim.epochs=1"]
    assert record["build_info"] == json.loads(json.dumps(dtc.build_info()))
    assert record["packages"]["torch"] == torch.__version__.split("+")[0] and record["packages"]["numpy"]
    assert record["hardware"]["cpu_count"] == os.cpu_count()
    assert len(record["hardware"]["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    # The commit of the dtc source in use: known when dtc runs from a git checkout (40 hex digits), none
    # for an installed copy (as `make test` runs it), asked of git independently here.
    source = os.path.dirname(dtc.__file__)
    probe = subprocess.run(["git", "-C", source, "rev-parse", "HEAD"], capture_output=True, text=True)
    if probe.returncode == 0:
        assert record["git"] is not None and record["git"]["commit"] == probe.stdout.strip()
    else:
        assert record["git"] is None
    assert not list(tmp_path.glob(".*.tmp"))  # written through the atomic writer


def test_record_without_git_says_none(tmp_path, monkeypatch):
    from dtc.engine import record as record_module

    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable to be found
    assert record_module._git_commit(tmp_path) is None


def test_trainer_writes_the_record_into_its_run_folder(tiny_teacher):
    run_dir = os.path.dirname(tiny_teacher)
    record = json.loads(open(os.path.join(run_dir, RECORD_NAME)).read())
    assert record["build_info"]["torch_version"] == dtc.build_info()["torch_version"]
    assert record["command_line"]
