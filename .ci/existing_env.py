#!/usr/bin/env python3
"""CI: the README's "existing PyTorch environment" install, run verbatim in a fresh venv that already has
torch, must build dtc, leave that torch untouched and give a working `import dtc`.

The fresh venv gets the project venv's torch (and the packages torch itself needs) through a .pth file
pointing at a folder of links, so no second CUDA stack is downloaded and pip sees torch as installed
but outside the venv: were pip to "fix" it, it would install another torch into the venv (which this
check catches) rather than touch the original. The build uses its own build folder under build/, so
ccache makes repeated runs cheap.

Usage: python .ci/existing_env.py [--python PY] [--keep]   (PY: the interpreter whose torch to reuse)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README_BLOCK_START = "Into an existing PyTorch environment instead"

# Run in the environment that owns torch: the distributions torch needs at run time, with their files.
_CLOSURE = r'''
import json, re, sys
from importlib import metadata
from packaging.requirements import Requirement
todo, seen, out = ["torch"], set(), {}
while todo:
    name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
    if name in seen:
        continue
    seen.add(name)
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        continue
    out[name] = sorted({str(f).split("/")[0] for f in dist.files or [] if not str(f).startswith("..")})
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)
print(json.dumps({"site": str(metadata.distribution("torch").locate_file("")), "dists": out}))
'''

_FINGERPRINT = r'''
import hashlib, json, os, torch
from importlib import metadata
dist = metadata.distribution("torch")
# The fresh venv reaches the project's torch through links: the real path is what must not change.
print(json.dumps({"version": torch.__version__, "file": os.path.realpath(torch.__file__),
                  "record": hashlib.sha256((dist.read_text("RECORD") or "").encode()).hexdigest()}))
'''


def readme_commands() -> list[str]:
    """The shell commands of the README's existing-environment block, exactly as documented."""
    text = (REPO / "README.md").read_text()
    start = text.index(README_BLOCK_START)
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def torch_files_digest(site: Path) -> str:
    """Names, sizes and modification times of every file of the torch package: any rewrite changes it."""
    digest = hashlib.sha256()
    for path in sorted((site / "torch").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            st = path.stat()
            digest.update(f"{path.relative_to(site)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def run(cmd, **kw) -> str:
    print("+", cmd if isinstance(cmd, str) else " ".join(map(str, cmd)), flush=True)
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter whose torch to reuse")
    parser.add_argument("--keep", action="store_true", help="keep the temporary venv")
    args = parser.parse_args()

    closure = json.loads(run([args.python, "-c", _CLOSURE]))
    site = Path(closure["site"])
    before = json.loads(run([args.python, "-c", _FINGERPRINT]))
    files_before = torch_files_digest(site)

    work = Path(tempfile.mkdtemp(prefix="dtc-existing-env-"))
    started = time.monotonic()
    try:
        shared = work / "torch-site"
        shared.mkdir()
        for entries in closure["dists"].values():
            for entry in entries:
                if not (shared / entry).exists() and (site / entry).exists():
                    (shared / entry).symlink_to(site / entry)
        run([sys.executable, "-m", "venv", str(work / "venv")])
        venv_py = work / "venv" / "bin" / "python"
        venv_site = Path(run([str(venv_py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
        (venv_site / "torch-from-project-venv.pth").write_text(f"{shared}\n")

        env = dict(os.environ, PATH=f"{venv_py.parent}{os.pathsep}{os.environ['PATH']}", VIRTUAL_ENV=str(work / "venv"),
                   SKBUILD_BUILD_DIR=str(REPO / "build" / "existing-env"), CCACHE_BASEDIR=str(REPO),
                   CCACHE_NOHASHDIR="true")
        env.pop("PYTHONPATH", None)
        for command in readme_commands():
            out = run(["bash", "-c", command], cwd=REPO, env=env)
            print(out[-2000:], flush=True)

        after = json.loads(run([str(venv_py), "-c", _FINGERPRINT], cwd=work, env=env))
        problems = []
        if after != before:
            problems.append(f"torch changed: before {before}, after {after}")
        if torch_files_digest(site) != files_before:
            problems.append(f"files of the torch package in {site} changed")
        second = sorted(p for p in Path(venv_site).glob("torch*") if p.name != "torch-from-project-venv.pth")
        if second:
            problems.append(f"pip installed a second torch into the venv: {second}")
        info = json.loads(run([str(venv_py), "-c", "import json, dtc; print(json.dumps(dtc.build_info()))"],
                              cwd=work, env=env))
        if str(info.get("torch_version", before["version"])).split("+")[0] != before["version"].split("+")[0]:
            problems.append(f"dtc._C built against torch {info.get('torch_version')}, not {before['version']}")
        installed = run([str(venv_py), "-m", "pip", "show", "-f", "dtc"], cwd=work, env=env)
        shipped_data = [line for line in installed.splitlines() if "fixtures" in line or line.strip().startswith("tests/")]
        if shipped_data:
            problems.append(f"the wheel ships test data: {shipped_data[:5]}")
        if problems:
            print("FAIL existing-environment install:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        print(f"OK existing-environment install: torch {after['version']} untouched, dtc {info} "
              f"({time.monotonic() - started:.0f} s)")
        return 0
    except subprocess.CalledProcessError as err:
        print(f"FAIL: {err.cmd} exited {err.returncode}\n{err.stdout[-4000:]}\n{err.stderr[-4000:]}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
