"""The reproducibility record of a run: what produced the files in a run folder.

:func:`write_run_record` writes ``run_record.json`` (atomically) with the git commit of the dtc source
(asked of git when dtc runs from a checkout; for an installed copy, the commit the build embedded in
``dtc/_source_commit.json``, see cmake/SourceCommit.cmake), ``dtc.build_info()``, the versions of the packages a result depends on, the
hardware and the command line. The trainer writes it into every run folder it creates.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence

from dtc.io import atomic_write_text

RECORD_NAME = "run_record.json"
#: Written next to the installed package by the build: the commit it was built from.
SOURCE_COMMIT_FILE = "_source_commit.json"
#: Distributions whose versions can change a result; those not installed are recorded as None.
RECORDED_PACKAGES = ("dtc", "torch", "numpy", "scipy", "opencv-python", "opencv-python-headless",
                     "opencv-contrib-python", "imageio", "imageio-ffmpeg", "nibabel", "pydicom", "tqdm", "pyyaml",
                     "matplotlib")


def _git_commit(source: Path) -> Optional[dict]:
    """Commit and dirtiness of the dtc checkout whose package folder is ``source`` (``<checkout>/python/dtc``);
    None for anything else (an installed copy) or without git."""
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--show-toplevel", "HEAD"],
                                capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        top, sha = commit.stdout.splitlines()[:2]
        # An installed copy in a virtualenv inside some other repository is not that repository's code.
        if not (Path(top) / "python" / "dtc").resolve() == Path(source).resolve():
            return None
        status = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": sha, "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None,
            "from": "checkout"}


def _built_commit(package: Path) -> Optional[dict]:
    """The commit an installed copy was built from (the build's ``_source_commit.json``); None when the
    build had no checkout to ask (an sdist) or the file is missing or unreadable."""
    try:
        embedded = json.loads((package / SOURCE_COMMIT_FILE).read_text())
    except (OSError, ValueError):
        return None
    commit = embedded.get("commit") if isinstance(embedded, dict) else None
    if not isinstance(commit, str):
        return None
    return {"commit": commit, "dirty": embedded.get("dirty"), "from": "build"}


def source_commit(package: Optional[Path] = None) -> Optional[dict]:
    """``{"commit", "dirty", "from"}`` of the dtc source in use: from git when ``package`` (default: the
    imported dtc) lies in a checkout, else from the commit its build recorded ("from": "build")."""
    if package is None:
        import dtc

        package = Path(dtc.__file__).resolve().parent
    return _git_commit(package) or _built_commit(package)




def _package_versions() -> dict:
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _build_info() -> dict:
    import dtc

    try:
        return dtc.build_info()
    except Exception as err:  # a record must still be written when the compiled core cannot load
        return {"error": f"{type(err).__name__}: {err}"}


def _hardware() -> dict:
    import torch

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"name": props.name, "capability": f"{props.major}.{props.minor}",
                         "memory_gib": round(props.total_memory / 2**30, 1)})
    return {"machine": platform.machine(), "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpus": gpus, "cuda_runtime": torch.version.cuda}


def run_record(argv: Optional[Sequence[str]] = None) -> dict:
    """Everything the record holds, as a dict (``argv`` defaults to this process's command line)."""
    import dtc

    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command_line": list(sys.argv if argv is None else argv),
        "working_directory": os.getcwd(),
        "git": source_commit(Path(dtc.__file__).resolve().parent),
        "build_info": _build_info(),
        "packages": _package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hardware": _hardware(),
    }


def write_run_record(out_dir: str | os.PathLike, argv: Optional[Sequence[str]] = None) -> Path:
    """Write ``run_record.json`` into ``out_dir`` atomically and return its path."""
    path = Path(out_dir) / RECORD_NAME
    atomic_write_text(path, json.dumps(run_record(argv), indent=2, sort_keys=False) + "\n")
    return path
