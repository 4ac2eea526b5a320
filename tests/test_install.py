"""Installing into an existing environment: no torch range pip could "fix", optional parts as extras,
build requirements in the documented command, clear messages for missing optional packages."""
from __future__ import annotations

import importlib.util
import logging
import sys
import tomllib
import types

import pytest

from tests.conftest import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _load_ci_script():
    spec = importlib.util.spec_from_file_location("existing_env", REPO_ROOT / ".ci" / "existing_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torch_dependency_has_no_version_range():
    torch_reqs = [d for d in PYPROJECT["project"]["dependencies"] if d.split("[")[0].split(";")[0].strip().startswith("torch")]
    assert torch_reqs == ["torch"], "a version range lets pip replace the user's torch"


def test_no_opencv_wheel_forced_on_users():
    assert not [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("opencv")]


@pytest.mark.parametrize("extra, package", [("video", "imageio-ffmpeg"), ("nifti", "nibabel"), ("dicom", "pydicom"),
                                            ("tensorboard", "tensorboard"), ("notebooks", "nbclient"),
                                            ("opencv", "opencv-python-headless")])
def test_optional_parts_are_extras(extra, package):
    assert any(req.startswith(package) for req in PYPROJECT["project"]["optional-dependencies"][extra])


def test_documented_install_brings_its_build_requirements_first():
    commands = _load_ci_script().readme_commands()
    build = next(i for i, c in enumerate(commands) if "--no-build-isolation" in c)
    assert any("scikit-build-core" in c and "pybind11" in c for c in commands[:build]), commands
    for requirement in PYPROJECT["build-system"]["requires"]:
        name = requirement.split(">")[0].split("=")[0]
        assert any(name in c for c in commands[:build]), f"{name} is a build requirement the README does not install"


def test_ci_runs_the_existing_environment_check():
    assert ".ci/existing_env.py" in (REPO_ROOT / ".ci" / "run").read_text()


def test_missing_tensorboard_is_said_once(monkeypatch, caplog, tmp_path):
    from dtc.engine import trainer as trainer_module

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    monkeypatch.setattr(trainer_module, "_TENSORBOARD_NOTICE_GIVEN", False)
    run = types.SimpleNamespace(out=tmp_path)
    with caplog.at_level(logging.WARNING, logger="dtc.engine.trainer"):
        trainer_module.Trainer._open_tensorboard(run)
        trainer_module.Trainer._open_tensorboard(run)
    notices = [r for r in caplog.records if "tensorboard" in r.getMessage()]
    assert len(notices) == 1 and "dtc[tensorboard]" in notices[0].getMessage()


def test_missing_opencv_says_how_to_install_one():
    import dtc

    hint = next(f for f in sys.meta_path if isinstance(f, dtc._OpenCVHint))
    # Consulted only after the path-based finder (which finds every installed cv2) has failed; other
    # tools (setuptools' vendored importers) may append their own narrow finders after it.
    from importlib.machinery import PathFinder

    assert sys.meta_path.index(hint) > sys.meta_path.index(PathFinder)
    with pytest.raises(ModuleNotFoundError, match=r"opencv-python.*dtc\[opencv\]"):
        hint.find_spec("cv2")
    assert hint.find_spec("numpy") is None
