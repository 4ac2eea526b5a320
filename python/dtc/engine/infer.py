"""Inference on user data: masks, probability maps, an overlay video and a NIfTI stack."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dtc.io import atomic_write_bytes, atomic_write_png, atomic_write_video

__all__ = ["infer", "write_overlay_video", "overlay_frame", "source_frames"]

_log = logging.getLogger(__name__)


def _records_for(input_path: Path):
    from dtc.data import index

    if input_path.is_file():
        return index.read_video_file(input_path)
    if not input_path.is_dir():
        raise FileNotFoundError(f"input not found: {input_path} (expected a frame folder or a video file)")
    if (input_path / "images").is_dir():
        return index.read_folder_index(input_path)
    # A bare folder of frames: the folder itself is the video.
    records = index.read_folder_index(input_path.parent, image_dir=input_path.name, mask_dir="\0none")
    for r in records:
        r.video_id = r.patient_id = input_path.name
    return records


def overlay_frame(image: np.ndarray, prob: np.ndarray, colour=(0, 255, 0), second: Optional[np.ndarray] = None,
                  second_colour=(255, 0, 255), truth: Optional[np.ndarray] = None, scale: int = 1) -> np.ndarray:
    """A BGR uint8 frame: ``image`` enlarged ``scale`` times with the contour of ``prob > 0.5`` (and of
    ``second``), the ground truth ``truth > 0.5`` in yellow on top.

    ``image`` is the frame to draw on: grey ``(H, W)``/``(H, W, 1)`` or RGB ``(H, W, 3)``, uint8 or float in
    [0, 1]; pass the source frame at its own resolution, not the network's input. Each map may come at
    another size (the network's): it is resized (bilinear) to the drawn frame before it is thresholded, so
    the contour is traced at the drawn resolution instead of being a blocky enlargement of a small one."""
    import cv2

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"overlay_frame: image must be (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(np.asarray(image, np.float32) * 255 + 0.5, 0, 255).astype(np.uint8)
    frame = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR if image.ndim == 2 else cv2.COLOR_RGB2BGR)
    if scale != 1:
        frame = cv2.resize(frame, (frame.shape[1] * scale, frame.shape[0] * scale), interpolation=cv2.INTER_LINEAR)
    h, w = frame.shape[:2]
    for p, c in ((prob, colour), (second, second_colour), (truth, (0, 255, 255))):
        if p is None:
            continue
        p = np.asarray(p, np.float32)
        if p.shape != (h, w):
            p = cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR)
        contours, _ = cv2.findContours((p > 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(frame, contours, -1, c, 1)
    return frame


def source_frames(dataset, video_id: str) -> Optional[dict[int, np.ndarray]]:
    """The frames of ``video_id`` as the user stored them (own size and colour, uint8), by frame number:
    what overlays are drawn on. None when ``dataset`` already serves them at their own size (no resize,
    or the simulator, whose rendered frames are the network's input)."""
    import warnings

    from dtc.data import VideoSegmentationDataset

    if not isinstance(dataset, VideoSegmentationDataset) or dataset.size is None:
        return None
    rec = next((r for r in dataset.videos if r.video_id == video_id), None)
    if rec is None:
        raise KeyError(f"video {video_id!r} is not in the dataset")
    with warnings.catch_warnings():  # the dataset has already said what it had to about this video
        warnings.simplefilter("ignore")
        native = VideoSegmentationDataset([rec], T=1, size=None, color=dataset.color, gap_policy="ignore",
                                          mask_policy=dataset.mask_policy, size_policy=dataset.size_policy,
                                          cache_videos=1)
        images = native.video(0).images
    return {f.number: images[k] for k, f in enumerate(native.videos[0].frames)}


def write_overlay_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    """An MP4 of BGR frames, H.264 where imageio-ffmpeg is installed (see :class:`dtc.io.VideoWriter`)."""
    return atomic_write_video(path, frames, fps=fps)


def infer(checkpoint, input_path, *, out=None, probs: bool = False, overlay: bool = True, nifti: bool = False,
          spacing=None, device: str = "auto", batch_size: int = 8, volume_step: float | None = None) -> dict:
    import cv2

    from dtc.data import VideoSegmentationDataset
    from dtc.engine.checkpoint import model_from_checkpoint
    from dtc.engine.inference import predict_videos, resolve_device

    input_path = Path(input_path)
    if volume_step is not None and not (math.isfinite(volume_step) and volume_step > 0):
        raise ValueError(f"--volume must be the positive distance between frames in mm, got {volume_step}")
    device = resolve_device(device)  # before the checkpoint is read: a bad --device fails at once
    model, ckpt = model_from_checkpoint(checkpoint, map_location="cpu")
    model = model.to(device)
    data_cfg = ckpt.get("config", {}).get("data", {})
    size = (int(data_cfg.get("height", 256)), int(data_cfg.get("width", 448)))
    _log.info("loaded %s: %s network %s %s, epoch %s, best validation Dice %.4f, input size %dx%d", checkpoint,
              ckpt["stage"], ckpt["model"]["name"], ckpt["model"]["kwargs"], ckpt["epoch"], ckpt["best"], size[0], size[1])
    records = _records_for(input_path)
    out = Path(out) if out is not None else input_path.with_name(input_path.stem + "_dtc")
    _prepare_output_folder(out)  # before predicting: a refused or unwritable folder fails at once
    dataset = VideoSegmentationDataset(records, T=1, size=size)
    videos = predict_videos(model, dataset, device=device, batch_size=batch_size, progress=True)
    total = 0
    for rec in dataset.videos:
        v = videos[rec.video_id]
        frames = source_frames(dataset, rec.video_id) if overlay else None
        native = next(iter(frames.values())).shape[:2] if frames else _native_size(rec)
        vdir = out / rec.video_id if len(dataset.videos) > 1 else out
        masks, overlay_frames = [], []
        for k, frame in enumerate(v["frame"]):
            prob = cv2.resize(v["prob"][k].numpy(), (native[1], native[0]), interpolation=cv2.INTER_LINEAR)
            mask = (prob > 0.5).astype(np.uint8)
            masks.append(mask)
            atomic_write_png(vdir / "masks" / f"{frame:05d}.png", mask * np.uint8(255))
            if probs:
                atomic_write_png(vdir / "probs" / f"{frame:05d}.png", np.round(prob * 65535).astype(np.uint16))
            if overlay:
                overlay_frames.append(overlay_frame(frames[frame] if frames else v["image"][k].numpy(), prob))
        if overlay and overlay_frames:
            write_overlay_video(vdir / "overlay.mp4", overlay_frames)
        if nifti:
            _write_nifti(vdir / "masks.nii.gz", np.stack(masks, axis=-1), spacing or rec.spacing)
        if volume_step is not None:
            reconstruct_sweep(vdir, np.stack(masks), spacing or rec.spacing, volume_step)
        total += len(v["frame"])
    return {"frames": total, "videos": len(dataset.videos), "out": str(out)}


def reconstruct_sweep(folder: Path, masks: np.ndarray, spacing, step_mm: float) -> dict:
    """3-D reconstruction of a segmented linear sweep: the masks (D, H, W) stacked in frame order, `step_mm`
    apart, with the frames' (row, column) pixel spacing. Writes reconstruction.json (gland volume in mL from
    the voxel count, and the mesh's) and, when the masks are not empty, surface.stl, surface.ply, surface.png."""
    import json

    from dtc.io import atomic_write_text
    from dtc.volume.mesh import mesh_volume, render_mesh, surface_mesh, write_ply, write_stl

    if spacing is None:
        raise ValueError("--volume needs the frames' pixel spacing: pass --spacing ROW_MM COL_MM")
    row, col = (float(s) for s in spacing)
    voxel = (float(step_mm), row, col)
    summary = {"frames": int(masks.shape[0]), "spacing_mm": list(voxel),
               "volume_ml": float(masks.astype(bool).sum() * step_mm * row * col / 1000.0), "mesh_volume_ml": 0.0}
    if masks.any():
        verts, faces = surface_mesh(masks, voxel)
        summary["mesh_volume_ml"] = mesh_volume(verts, faces) / 1000.0
        write_stl(folder / "surface.stl", verts, faces)
        write_ply(folder / "surface.ply", verts, faces)
        render_mesh(folder / "surface.png", verts, faces, title=f"{summary['volume_ml']:.1f} mL")
    atomic_write_text(folder / "reconstruction.json", json.dumps(summary, indent=2))
    return summary


def _prepare_output_folder(out: Path) -> None:
    """Refuse a folder holding an earlier run's outputs (its extra masks would sit beside the new ones)
    and prove the folder writable before any frame is predicted."""
    import tempfile

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: choose a folder")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"--out {out} already holds files (an earlier dtc infer?): choose a new folder or remove "
                         "it; dtc infer does not mix two runs' masks")
    out.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(out)) from None


def _native_size(rec) -> tuple[int, int]:
    """(H, W) of the video's source frames, so outputs come back at the size the user gave."""
    import cv2

    if rec.kind == "video":
        cap = cv2.VideoCapture(rec.source)
        try:
            return int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        finally:
            cap.release()
    image = cv2.imread(rec.frames[0].image, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot read frame {rec.frames[0].image}")
    return image.shape[:2]


def _write_nifti(path: Path, volume: np.ndarray, spacing) -> None:
    """Masks ``(H, W, T)`` as a NIfTI cine that opens upright in 3D Slicer and ITK-SNAP.

    Stored the way ITK stores a stack of 2-D images: voxel axis i runs along image columns, j down the
    rows, k over frames, with the direction of ITK's identity (LPS) written in NIfTI's RAS terms, so
    the affine is ``diag(-col_mm, -row_mm, 1)``. ``spacing`` is the input's (row_mm, col_mm).
    """
    try:
        import nibabel as nib
    except ImportError as exc:
        raise ImportError("--nifti needs nibabel: pip install nibabel (or the dtc[nifti] extra)") from exc
    row, col = (float(s) for s in spacing) if spacing is not None else (1.0, 1.0)
    if not (row > 0 and col > 0):
        raise ValueError(f"spacing must be two positive sizes (row_mm, col_mm), got {spacing!r}")
    affine = np.diag([-col, -row, 1.0, 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(volume.astype(np.uint8).transpose(1, 0, 2)), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    atomic_write_bytes(path, img.to_bytes() if not str(path).endswith(".gz") else _gzip(img.to_bytes()))


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data)
