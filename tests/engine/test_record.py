"""The reproducibility record every run folder gets."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import dtc
from dtc.engine.record import RECORD_NAME, SOURCE_COMMIT_FILE, source_commit, write_run_record
from tests.conftest import REPO_ROOT


def test_record_holds_commit_build_versions_hardware_and_command(tmp_path):
    path = write_run_record(tmp_path, argv=["dtc", "train-teacher", "optim.epochs=1"])
    record = json.loads(path.read_text())
    assert path.name == RECORD_NAME
    assert record["command_line"] == ["dtc", "train-teacher", "optim.epochs=1"]
    assert record["build_info"] == json.loads(json.dumps(dtc.build_info()))
    assert record["packages"]["torch"] == torch.__version__.split("+")[0] and record["packages"]["numpy"]
    assert record["hardware"]["cpu_count"] == os.cpu_count()
    assert len(record["hardware"]["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    # The commit of the dtc source in use: asked of git when dtc runs from a checkout (40 hex digits); an
    # installed copy (as `make test` runs it) carries the commit its build recorded.
    source = os.path.dirname(dtc.__file__)
    probe = subprocess.run(["git", "-C", source, "rev-parse", "HEAD"], capture_output=True, text=True)
    if probe.returncode == 0:
        assert record["git"]["commit"] == probe.stdout.strip() and record["git"]["from"] == "checkout"
    else:
        embedded = json.loads((Path(source) / SOURCE_COMMIT_FILE).read_text())
        assert embedded["commit"] is not None, "the installed copy was built without recording its commit"
        assert record["git"] == {**embedded, "from": "build"}
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


def test_an_installed_copy_reports_the_commit_its_build_recorded(tmp_path):
    package = tmp_path / "site-packages" / "dtc"
    package.mkdir(parents=True)
    assert source_commit(package) is None  # no checkout, nothing recorded
    (package / SOURCE_COMMIT_FILE).write_text('{"commit": null, "dirty": null}\n')
    assert source_commit(package) is None  # built from an sdist: nothing to report
    (package / SOURCE_COMMIT_FILE).write_text('{"commit": "' + "ab" * 20 + '", "dirty": false}\n')
    assert source_commit(package) == {"commit": "ab" * 20, "dirty": False, "from": "build"}


def test_a_copy_inside_another_repository_is_not_given_its_commit(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("needs git")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "a user's project"], check=True)
    package = tmp_path / "venv" / "lib" / "dtc"
    package.mkdir(parents=True)
    assert source_commit(package) is None


def test_the_build_script_records_the_commit_of_a_checkout_and_none_elsewhere(tmp_path):
    cmake, git = shutil.which("cmake"), shutil.which("git")
    if cmake is None or git is None:
        pytest.skip("needs cmake and git")
    script = REPO_ROOT / "cmake" / "SourceCommit.cmake"

    def record(source):
        out = tmp_path / "commit.json"
        subprocess.run([cmake, f"-DSOURCE_DIR={source}", f"-DOUTPUT={out}", "-P", str(script)], check=True)
        return json.loads(out.read_text())

    head = subprocess.run([git, "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        recorded = record(REPO_ROOT)
        assert recorded["commit"] == head.stdout.strip() and isinstance(recorded["dirty"], bool)
        # a folder inside the checkout is not the checkout's top: not given its commit
        assert record(REPO_ROOT / "python") == {"commit": None, "dirty": None}
    unpacked = tmp_path / "dtc-0.1"  # an sdist unpacked somewhere: no commit
    unpacked.mkdir()
    assert record(unpacked) == {"commit": None, "dirty": None}


def test_the_build_installs_the_recorded_commit_next_to_the_package():
    cmakelists = (REPO_ROOT / "CMakeLists.txt").read_text()
    assert "cmake/SourceCommit.cmake" in cmakelists and "_source_commit.json" in cmakelists
    assert "install(FILES ${DTC_SOURCE_COMMIT_FILE} DESTINATION dtc)" in cmakelists
