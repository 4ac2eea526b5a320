"""Atomic file writes: a reader (or a crash) never sees a half-written file, and nothing a user
already has is replaced by a truncated one. Every writer in dtc goes through here."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_png", "atomic_write_npy", "atomic_torch_save",
           "atomic_write_figure", "atomic_output", "VideoWriter", "atomic_write_video"]

_log = logging.getLogger(__name__)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """Yields a temporary path beside ``path`` for a writer that needs a file name (an encoder in another
    process, say); on success the file is synced and renamed into place, on failure it is removed. The
    temporary name keeps ``path``'s suffix, since some writers choose the format from it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


class VideoWriter:
    """An MP4 of BGR uint8 frames (``(H, W, 3)``, or ``(H, W)`` grey), written frame by frame and moved
    into place atomically when closed without error; every video dtc writes goes through here.

    Encoded as H.264 in yuv420p with the ffmpeg that imageio-ffmpeg ships in its wheel, so the file
    plays in browsers and slide decks. yuv420p needs even sides: an odd height or width is padded by
    repeating the last row or column (nothing is scaled, so contours stay where they were drawn).
    Without imageio-ffmpeg the video is written with OpenCV's MPEG-4 Part 2 encoder instead, after a
    warning, because a video that only desktop players open is still better than none.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 10.0):
        if not (isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        self.path, self.fps = Path(path), float(fps)
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (H, W) of the frames given
        self.codec: str | None = None  # "h264" or "mp4v" once the first frame is written
        self._output = atomic_output(self.path)
        self._tmp = self._output.__enter__()
        self._encoder = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self._abandon(kind, value, traceback)

    def write(self, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)):
            raise ValueError(f"VideoWriter.write: frame must be uint8 (H, W, 3) BGR or (H, W) grey, got "
                             f"{frame.dtype} {frame.shape}")
        if frame.ndim == 2:
            frame = np.repeat(frame[..., None], 3, axis=2)
        if self.size is None:
            if min(frame.shape[:2]) < 2:
                raise ValueError(f"VideoWriter.write: frames must be at least 2x2 pixels, got {frame.shape[:2]}")
            self.size = frame.shape[:2]
            self._open()
        elif frame.shape[:2] != self.size:
            raise ValueError(f"VideoWriter.write: frame {self.frames} is {frame.shape[1]}x{frame.shape[0]}, the "
                             f"video is {self.size[1]}x{self.size[0]}")
        h, w = self.size
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if self.codec == "h264":
            self._encoder.send(np.ascontiguousarray(frame))
        else:
            self._encoder.write(frame)
        self.frames += 1

    def close(self) -> Path:
        """Finishes the file and moves it into place; a video needs at least one frame."""
        if self._output is None:
            return self.path
        if self._encoder is None:
            self._abandon(None, None, None)
            raise ValueError(f"no frames were written to {self.path}: a video needs at least one")
        try:
            if self.codec == "h264":
                self._encoder.close()  # waits for ffmpeg and raises if it failed
            else:
                self._encoder.release()
        except BaseException as exc:
            self._abandon(type(exc), exc, exc.__traceback__)
            raise
        output, self._output = self._output, None
        output.__exit__(None, None, None)
        return self.path

    def _abandon(self, kind, value, traceback) -> None:
        if self._output is None:
            return
        if self._encoder is not None:
            try:
                self._encoder.close() if self.codec == "h264" else self._encoder.release()
            except Exception:  # noqa: BLE001  (the first error is the one to report)
                pass
        output, self._output = self._output, None
        output.__exit__(kind or RuntimeError, value or RuntimeError("abandoned"), traceback)

    def _open(self) -> None:
        h, w = self.size
        size = (w + w % 2, h + h % 2)
        try:
            import imageio_ffmpeg
        except ImportError:
            import cv2

            _log.warning("imageio-ffmpeg is not installed: writing %s as MPEG-4 Part 2 with OpenCV, which "
                         "browsers do not play; pip install imageio-ffmpeg (or dtc[video]) for H.264", self.path)
            self.codec = "mp4v"
            self._encoder = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size)
            if not self._encoder.isOpened():
                raise RuntimeError(f"OpenCV cannot write an MP4 video to {self._tmp}")
            return
        self.codec = "h264"
        # macro_block_size=1: imageio-ffmpeg would otherwise rescale to a multiple of 16 pixels.
        # +faststart puts the index first, so a browser starts playing before the whole file arrives.
        self._encoder = imageio_ffmpeg.write_frames(
            str(self._tmp), size, fps=self.fps, codec="libx264", pix_fmt_in="bgr24", pix_fmt_out="yuv420p",
            macro_block_size=1, quality=None, ffmpeg_log_level="error",
            output_params=["-crf", "18", "-movflags", "+faststart"])
        self._encoder.send(None)


def atomic_write_video(path: str | os.PathLike, frames, fps: float = 10.0) -> Path:
    """Writes BGR uint8 frames as an MP4 through :class:`VideoWriter` (H.264 when imageio-ffmpeg is there)."""
    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return Path(path)
