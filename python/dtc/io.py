"""Atomic file writes: a reader (or a crash) never sees a half-written file, and nothing a user
already has is replaced by a truncated one. Every writer in dtc goes through here."""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_png", "atomic_write_npy", "atomic_torch_save",
           "atomic_write_figure"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    import cv2

    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"could not encode {path} as PNG (image of shape {image.shape}, dtype {image.dtype})")
    return atomic_write_bytes(path, buf.tobytes())


def atomic_write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    bio = io.BytesIO()
    np.save(bio, array)
    return atomic_write_bytes(path, bio.getvalue())


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    import torch

    bio = io.BytesIO()
    torch.save(obj, bio)
    return atomic_write_bytes(path, bio.getvalue())


def atomic_write_figure(path: str | os.PathLike, fig, dpi: int = 110) -> Path:
    """Saves a matplotlib figure as PNG. Build it with ``matplotlib.figure.Figure`` (not pyplot) so
    writing plots never switches the process's backend (which would stop figures showing in a notebook)."""
    bio = io.BytesIO()
    fig.savefig(bio, format="png", dpi=dpi)
    return atomic_write_bytes(path, bio.getvalue())
