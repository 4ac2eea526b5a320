"""The reproducibility record of a run: what produced the files in a run folder.

:func:`write_run_record` writes ``run_record.json`` (atomically) with the git commit of the dtc source
when it is a checkout, ``dtc.build_info()``, the versions of the packages a result depends on, the
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
#: Distributions whose versions can change a result; those not installed are recorded as None.
RECORDED_PACKAGES = ("dtc", "torch", "numpy", "scipy", "opencv-python", "opencv-python-headless",
                     "opencv-contrib-python", "imageio", "imageio-ffmpeg", "nibabel", "pydicom", "tqdm", "pyyaml",
                     "matplotlib")


def _git_commit(source: Path) -> Optional[dict]:
    """Commit and dirtiness of the checkout holding ``source``; None outside a git checkout or without git."""
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


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
        "git": _git_commit(Path(dtc.__file__).resolve().parent),
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
