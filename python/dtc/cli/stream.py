"""`dtc stream MODEL INPUT ...`: runs the C++ runtime's dtc-stream executable (see `dtc stream --help`)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def find_dtc_stream() -> Path:
    """The dtc-stream executable: $DTC_STREAM, the one installed with this package (dtc/bin/), else PATH."""
    candidates = []
    if os.environ.get("DTC_STREAM"):
        candidates.append(Path(os.environ["DTC_STREAM"]))
    candidates.append(Path(__file__).resolve().parents[1] / "bin" / "dtc-stream")
    on_path = shutil.which("dtc-stream")
    if on_path:
        candidates.append(Path(on_path))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise FileNotFoundError(
        "the dtc-stream executable was not found (looked at $DTC_STREAM, "
        f"{candidates[-1] if not on_path else candidates[-2]} and PATH); it is built with the package when "
        "OpenCV's videoio and imgcodecs are installed (libopencv-dev): reinstall, or `make dev` in a checkout")


def register(subparsers) -> None:
    p = subparsers.add_parser("stream", help="segment a video, camera, frame folder or stdin with the C++ runtime",
                              add_help=False)
    p.add_argument("args", nargs="*", help="dtc-stream's arguments (dtc stream --help lists them)")
    p.set_defaults(func=lambda args: passthrough(args.args))


def passthrough(argv: list[str]) -> int:
    """`dtc stream ...` hands everything after `stream` to dtc-stream unparsed (its options are its own)."""
    try:
        exe = find_dtc_stream()
    except FileNotFoundError as exc:
        print(f"dtc stream: error: {exc}", file=sys.stderr)
        return 2
    return subprocess.run([str(exe), *argv], check=False).returncode
