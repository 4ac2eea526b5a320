"""Window datasets over videos: files on disk (`VideoSegmentationDataset`) and the in-memory simulator
(`SyntheticTRUSDataset`). Both return the same window dictionary.

Convention (one item = one window of T frames):
    "image"        (T, 3, H, W) float32 in [0, 1], RGB channel order (OpenCV decodes BGR; converted
                   here); grey input is replicated to 3 channels.
    "mask"         (T, 1, H, W) float32 in {0, 1}; zeros where the frame is unlabelled.
    "mask_valid"   (T,) bool: which frames carry a label.
    "flow"         (T, 2, H, W) float32, pixels, channel 0 = dx, channel 1 = dy, BACKWARD flow of the
                   pair (window frame t-1, t): frame_t(p) ~ frame_{t-1}(p - flow[t](p)); flow[0] = 0.
                   Present only when the source has ground-truth flow.
    "video_id"     str;  "frame_index" (T,) int64 frame numbers in the source.
    "spacing"      (2,) float64 mm per pixel (row, column) at the returned size, when known.
Default size H x W = 256 x 448 (docs/method.md). Windows start every `stride` frames and take every
`frame_gap`-th frame; videos with fewer than (T-1)*frame_gap+1 frames yield no window and are reported
in `short_videos` (with a warning).
"""
from __future__ import annotations

import math
from typing import Optional
import warnings
from collections import OrderedDict

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from dtc.data.index import DataWarning, VideoRecord, apply_gap_policy

DEFAULT_SIZE = (256, 448)


# ------------------------------------------------------------------------------------------------
# decoding

def _read_image(path: str, color: str) -> np.ndarray:
    data = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if data is None:
        raise ValueError(f"cannot read image {path} (missing, corrupt or unsupported format)")
    if data.dtype == np.uint16:
        data = (data / 257.0).round().astype(np.uint8)
    if data.ndim == 3 and data.shape[2] == 4:
        data = data[..., :3]
    if color == "grey":
        return cv2.cvtColor(data, cv2.COLOR_BGR2GRAY) if data.ndim == 3 else data
    # OpenCV decodes colour as BGR: convert explicitly to RGB; grey is replicated
    return cv2.cvtColor(data, cv2.COLOR_BGR2RGB) if data.ndim == 3 else np.repeat(data[..., None], 3, axis=2)


def fill_ellipse_outline(outline: np.ndarray, where: str = "annotation") -> np.ndarray:
    """Fill an ellipse annotation into a binary mask (uint8 {0,1}).

    A closed outline has its holes filled; an annotation that is already a solid region (some HC18
    copies ship filled ellipses) is kept; an open outline (e.g. cut by the image border) is filled
    by fitting an ellipse to its pixels, with a warning."""
    from scipy.ndimage import binary_fill_holes

    ring = outline > (outline.max() / 2 if outline.max() > 0 else 0)
    if ring.ndim == 3:
        ring = ring.any(axis=2)
    if ring.sum() < 5:
        raise ValueError(f"{where}: ellipse annotation has fewer than 5 pixels")
    filled = binary_fill_holes(ring)
    if filled.sum() > 2 * ring.sum():
        return filled.astype(np.uint8)
    ys, xs = np.nonzero(ring)
    bbox = (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
    if ring.sum() > 0.6 * bbox:  # solid: already a filled ellipse
        return ring.astype(np.uint8)
    warnings.warn(f"{where}: ellipse outline is not closed; filled by fitting an ellipse", DataWarning, stacklevel=2)
    pts = np.argwhere(ring)[:, ::-1].astype(np.float32)
    mask = np.zeros(ring.shape, np.uint8)
    cv2.ellipse(mask, cv2.fitEllipse(pts), 1, thickness=-1)
    return mask


def _binarise(mask: np.ndarray, where: str, policy: str) -> np.ndarray:
    values = np.unique(mask)
    if len(values) <= 2 and values.min() == 0 or len(values) == 1:
        return (mask > 0).astype(np.uint8)
    if policy == "error":
        raise ValueError(f"mask {where} is not binary: {len(values)} distinct values "
                         f"(e.g. {values[:6].tolist()}); mask_policy='error'")
    thr = 127 if mask.dtype == np.uint8 else (float(values.max()) / 2)
    warnings.warn(f"mask {where} is not binary ({len(values)} distinct values); thresholded at > {thr} "
                  "(mask_policy='threshold')", DataWarning, stacklevel=3)
    return (mask > thr).astype(np.uint8)


class _LoadedVideo:
    """Decoded frames of one video at the dataset's size: images uint8 (N, H, W, C), masks uint8
    (N, H, W), valid bool (N,), flows float32 (N, 2, H, W) or None, spacing or None."""

    def __init__(self, images, masks, valid, flows, spacing):
        self.images, self.masks, self.valid, self.flows, self.spacing = images, masks, valid, flows, spacing


def _resize_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = flow.shape[1:]
    if (h, w) == size:
        return flow
    out = np.stack([cv2.resize(c, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for c in flow])
    out[0] *= size[1] / w  # displacements scale with the image
    out[1] *= size[0] / h
    return out


def compose_backward_flows(later: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    """Backward flow a->c from b->c (`later`) and a->b (`earlier`): F(p) = F_bc(p) + F_ab(p - F_bc(p))."""
    h, w = later.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    mx, my = xs - later[0], ys - later[1]
    moved = np.stack([cv2.remap(c, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for c in earlier])
    return later + moved


# ------------------------------------------------------------------------------------------------

class VideoSegmentationDataset(Dataset):
    """Windows of T frames over indexed videos (see the module docstring for the item layout).

    videos: VideoRecords from `dtc.data.index` readers.
    size: (H, W) output size (images bilinear, masks nearest, flows resized and rescaled,
        spacing rescaled); None keeps each video's own size.
    color: "grey" (decode grey, replicate to 3 channels) or "rgb" (colour kept, RGB order).
    gap_policy: frame-number gaps: "split" (default, warn), "ignore" (warn) or "error".
    mask_policy: non-binary masks: "threshold" (default, warn) or "error".
    size_policy: mask/image size mismatch: "error" (default) or "resize" (warn, nearest).
    empty_policy: videos without frames: "error" (default) or "skip" (warn, listed in `skipped`).
    require_labels: drop windows in which no frame is labelled (e.g. supervised stage 1).
    cache_videos: decoded videos kept (LRU); each frame is decoded once per video, not per window.
    """

    def __init__(self, videos: list[VideoRecord], T: int = 3, stride: int = 1, frame_gap: int = 1,
                 size: tuple[int, int] | None = DEFAULT_SIZE, color: str = "grey", gap_policy: str = "split",
                 mask_policy: str = "threshold", size_policy: str = "error", empty_policy: str = "error",
                 require_labels: bool = False, cache_videos: int = 8, augment=None):
        if T < 1 or stride < 1 or frame_gap < 1:
            raise ValueError(f"T, stride and frame_gap must be >= 1, got {T}, {stride}, {frame_gap}")
        if color not in ("grey", "rgb"):
            raise ValueError(f"color must be 'grey' or 'rgb', got {color!r}")
        if mask_policy not in ("threshold", "error") or size_policy not in ("error", "resize") \
                or empty_policy not in ("error", "skip"):
            raise ValueError("mask_policy must be threshold|error, size_policy error|resize, empty_policy error|skip")
        self.T, self.stride, self.frame_gap = T, stride, frame_gap
        self.size, self.color = (tuple(size) if size is not None else None), color
        self.mask_policy, self.size_policy = mask_policy, size_policy
        self.augment = augment
        self.skipped: list[str] = []
        self.short_videos: list[tuple[str, int]] = []
        self.videos: list[VideoRecord] = []
        for rec in videos:
            if not rec.frames:
                if empty_policy == "error":
                    raise ValueError(f"video {rec.video_id!r} ({rec.source or 'files'}) has no frames")
                warnings.warn(f"video {rec.video_id!r} has no frames; skipped (empty_policy='skip')", DataWarning, stacklevel=2)
                self.skipped.append(rec.video_id)
                continue
            self.videos.extend(apply_gap_policy(rec, gap_policy))
        span = (T - 1) * frame_gap + 1
        self.windows: list[tuple[int, int]] = []
        for vi, rec in enumerate(self.videos):
            n = len(rec.frames)
            if n < span:
                self.short_videos.append((rec.video_id, n))
                continue
            # A NIfTI video's labels are its mask volume (every slice), not per-frame files.
            volume_labels = rec.kind == "nifti" and rec.mask_source is not None
            for start in range(0, n - span + 1, stride):
                if require_labels and not volume_labels and \
                        not any(rec.frames[start + k * frame_gap].mask for k in range(T)):
                    continue
                self.windows.append((vi, start))
        if self.short_videos:
            names = ", ".join(f"{v} ({n} frames)" for v, n in self.short_videos[:5])
            warnings.warn(f"{len(self.short_videos)} video(s) shorter than a window of {span} frames give no "
                          f"window: {names}", DataWarning, stacklevel=2)
        self._cache: OrderedDict[int, _LoadedVideo] = OrderedDict()
        self._cache_size = max(1, cache_videos)
        self.decode_count = 0  # frames decoded so far (tests check the once-per-video caching)

    def __len__(self) -> int:
        return len(self.windows)

    # -- loading -------------------------------------------------------------------------------
    def _target_size(self, native: tuple[int, int]) -> tuple[int, int]:
        return self.size if self.size is not None else native

    def _load_mask(self, rec: VideoRecord, path: str, native: tuple[int, int], image_path: str) -> np.ndarray:
        raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise ValueError(f"cannot read mask {path} (missing, corrupt or unsupported format)")
        if rec.mask_kind == "ellipse_outline":
            mask = fill_ellipse_outline(raw, path)
        else:
            if raw.ndim == 3:
                raw = raw.max(axis=2)
            mask = _binarise(raw, path, self.mask_policy)
        if mask.shape != native:
            if self.size_policy == "error":
                raise ValueError(f"mask/image size mismatch: {path} is {mask.shape[1]}x{mask.shape[0]}, "
                                 f"{image_path} is {native[1]}x{native[0]} (size_policy='error')")
            warnings.warn(f"mask {path} resized from {mask.shape} to the image size {native} (size_policy='resize')",
                          DataWarning, stacklevel=3)
            mask = cv2.resize(mask, (native[1], native[0]), interpolation=cv2.INTER_NEAREST)
        return mask

    def _decode(self, rec: VideoRecord) -> _LoadedVideo:
        images, masks, valid, flows = [], [], [], []
        if rec.kind == "video":
            raw_frames = self._decode_video_file(rec)
        elif rec.kind == "nifti":
            raw_frames, raw_masks = self._decode_nifti(rec)
        elif rec.kind == "dicom":
            raw_frames = self._decode_dicom(rec)
        native = None
        for k, fr in enumerate(rec.frames):
            if rec.kind == "images":
                img = _read_image(fr.image, self.color)
                where = fr.image
            elif rec.kind in ("video", "dicom"):
                img = raw_frames[fr.position]
                where = f"{rec.source} frame {fr.position}"
            else:
                img = raw_frames[fr.position]
                where = f"{rec.source} slice {fr.position}"
            self.decode_count += 1
            shape = img.shape[:2]
            if native is None:
                native = shape
            elif shape != native:
                raise ValueError(f"frame size changes within video {rec.video_id!r}: {where} is "
                                 f"{shape[1]}x{shape[0]}, earlier frames are {native[1]}x{native[0]}")
            if rec.kind == "nifti" and raw_masks is not None:
                mask, ok = _binarise(raw_masks[fr.position], f"{rec.mask_source} slice {fr.position}", self.mask_policy), True
            elif fr.mask is not None:
                mask, ok = self._load_mask(rec, fr.mask, shape, where), True
            else:
                mask, ok = np.zeros(shape, np.uint8), False
            out = self._target_size(native)
            if out != shape:
                img = cv2.resize(img, (out[1], out[0]), interpolation=cv2.INTER_AREA if out[0] < shape[0] else cv2.INTER_LINEAR)
                mask = cv2.resize(mask, (out[1], out[0]), interpolation=cv2.INTER_NEAREST)
            images.append(img if img.ndim == 3 else img[..., None])
            masks.append(mask)
            valid.append(ok)
            if fr.flow is not None:
                fl = np.load(fr.flow)
                if fl.ndim != 3 or fl.shape[0] != 2 or fl.shape[1:] != shape:
                    raise ValueError(f"flow {fr.flow} must have shape (2, {shape[0]}, {shape[1]}), got {fl.shape}")
                flows.append(_resize_flow(fl.astype(np.float32), out))
            else:
                flows.append(None)
        has_flow = any(f is not None for f in flows[1:])
        if has_flow and any(f is None for f in flows[1:]):
            missing = [rec.frames[k].number for k in range(1, len(flows)) if flows[k] is None]
            raise ValueError(f"video {rec.video_id!r}: ground-truth flow missing for frames {missing[:5]}")
        flow_arr = None
        if has_flow:
            out = self._target_size(native)
            flow_arr = np.stack([np.zeros((2, *out), np.float32), *flows[1:]])
        spacing = None
        if rec.spacing is not None:
            out = self._target_size(native)
            spacing = (rec.spacing[0] * native[0] / out[0], rec.spacing[1] * native[1] / out[1])
        return _LoadedVideo(np.stack(images), np.stack(masks), np.array(valid), flow_arr, spacing)

    def _decode_video_file(self, rec: VideoRecord) -> list[np.ndarray]:
        from dtc.data.index import decode_video_frames

        frames = decode_video_frames(rec.source, "grey" if self.color == "grey" else "rgb")
        need = max(f.position for f in rec.frames) + 1
        if len(frames) < need:
            raise ValueError(f"video file {rec.source}: decoded {len(frames)} frames, index expects {need} (corrupt?)")
        return frames

    def _decode_dicom(self, rec: VideoRecord) -> np.ndarray:
        from dtc.data.index import _pydicom

        pydicom = _pydicom()
        ds = pydicom.dcmread(rec.source)
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # noqa: BLE001  (compressed without a decoder, truncated pixel data, ...)
            raise ValueError(f"DICOM file {rec.source}: cannot decode its pixels ({type(exc).__name__}: {exc}); "
                             "compressed transfer syntaxes need a pydicom pixel handler (e.g. pip install "
                             "pylibjpeg pylibjpeg-libjpeg)") from exc
        n = int(getattr(ds, "NumberOfFrames", 1) or 1)
        samples = int(getattr(ds, "SamplesPerPixel", 1))
        if n == 1:
            pixels = pixels[None]
        if samples == 3 and str(getattr(ds, "PhotometricInterpretation", "")).startswith("YBR"):
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, ds.PhotometricInterpretation, "RGB", per_frame=True)
        if pixels.dtype != np.uint8:
            # Wider than 8 bits: map the stored range to 0..255 as one window for the whole loop, so the
            # frames keep their relative brightness.
            lo, hi = float(pixels.min()), float(pixels.max())
            pixels = np.round((pixels.astype(np.float32) - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)
        if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":  # 0 is white
            pixels = 255 - pixels
        if samples == 1 and self.color == "rgb":
            pixels = np.repeat(pixels[..., None], 3, axis=-1)
        elif samples == 3 and self.color == "grey":
            pixels = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in pixels])
        need = max(f.position for f in rec.frames) + 1
        if len(pixels) < need:
            raise ValueError(f"DICOM file {rec.source}: {len(pixels)} frames, the index expects {need}")
        return pixels

    def _decode_nifti(self, rec: VideoRecord):
        import nibabel as nib

        vol = np.asarray(nib.load(rec.source).dataobj, dtype=np.float32)
        vol = np.moveaxis(vol, rec.axis, 0)
        lo, hi = np.percentile(vol, [0.5, 99.5])
        vol = np.clip((vol - lo) / max(hi - lo, 1e-6), 0, 1)
        frames = (vol * 255).round().astype(np.uint8)
        if self.color == "rgb":
            frames = np.repeat(frames[..., None], 3, axis=-1)
        masks = None
        if rec.mask_source is not None:
            masks = np.moveaxis(np.asarray(nib.load(rec.mask_source).dataobj), rec.axis, 0)
        return frames, masks

    def video(self, index: int) -> _LoadedVideo:
        """Decoded video `index` (cached, LRU)."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        loaded = self._decode(self.videos[index])
        self._cache[index] = loaded
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return loaded

    def validate(self) -> None:
        """Decode every video once (raises on the first unreadable or inconsistent file)."""
        for i in range(len(self.videos)):
            self.video(i)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.windows):
            raise IndexError(f"window index {index} out of range [0, {len(self.windows)})")
        vi, start = self.windows[index]
        rec, vid = self.videos[vi], self.video(vi)
        idx = [start + k * self.frame_gap for k in range(self.T)]
        img = torch.from_numpy(vid.images[idx]).permute(0, 3, 1, 2).float().div_(255.0)
        if img.shape[1] == 1:
            img = img.expand(-1, 3, -1, -1).contiguous()
        item = {
            "image": img,
            "mask": torch.from_numpy(vid.masks[idx]).float()[:, None],
            "mask_valid": torch.from_numpy(vid.valid[idx]),
            "video_id": rec.video_id,
            "frame_index": torch.tensor([rec.frames[i].number for i in idx], dtype=torch.int64),
        }
        if vid.flows is not None:
            flows = [np.zeros_like(vid.flows[0])]
            for a, b in zip(idx[:-1], idx[1:]):
                f = vid.flows[a + 1]
                for j in range(a + 2, b + 1):  # compose over the skipped frames (frame_gap > 1)
                    f = compose_backward_flows(vid.flows[j], f)
                flows.append(f)
            item["flow"] = torch.from_numpy(np.stack(flows))
        if vid.spacing is not None:
            item["spacing"] = torch.tensor(vid.spacing, dtype=torch.float64)
        if self.augment is not None:
            item = self.augment(item)
        return item


# ------------------------------------------------------------------------------------------------

def patient_split(patients: list, seed: int, fractions=(0.7, 0.15, 0.15)) -> dict:
    """Deterministic patient-level split: {patient: "train"|"val"|"test"}.

    Every split with a positive fraction gets at least one patient when there are enough patients."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    order = list(patients)
    np.random.default_rng(np.random.SeedSequence([seed, 0x5911])).shuffle(order)
    n = len(order)
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    if n >= 3:
        n_val = max(n_val, 1 if fractions[1] > 0 else 0)
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
    n_train = n - n_val - n_test
    names = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    return dict(zip(order, names))


def patient_folds(patients: list, seed: int, folds: int, fold: int, val_fraction: float = 0.15) -> dict:
    """Patient-level k-fold cross-validation: {patient: "train"|"val"|"test"} for fold ``fold`` of ``folds``.

    The patients are shuffled once (by ``seed``) and dealt round-robin into ``folds`` groups; group ``fold``
    is the test split, so over the folds every patient is tested exactly once. Validation (model
    selection) takes ``val_fraction`` of the remaining patients (at least one), never a test patient."""
    if not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    if not isinstance(fold, int) or not 0 <= fold < folds:
        raise ValueError(f"fold must be an integer in [0, {folds}), got {fold!r}")
    order = list(patients)
    if len(order) < folds + 2:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds + 2} patients (a test fold each, "
                         f"one validation and one training patient), got {len(order)}")
    np.random.default_rng(np.random.SeedSequence([seed, 0x5911, folds])).shuffle(order)
    test = set(order[fold::folds])
    rest = [p for p in order if p not in test]
    n_val = max(1, int(round(val_fraction * len(rest))))
    val = set(rest[:n_val])
    return {p: "test" if p in test else "val" if p in val else "train" for p in order}


class SyntheticTRUSDataset(Dataset):
    """In-memory windows from the simulator: nothing touches disk. Deterministic in `seed`.

    num_videos videos (patient p has views `config.views`, one video per view), split by patient
    (`split` = "train" | "val" | "test" | "all", fractions `split_fractions`). Windows of T frames
    with `stride` and `frame_gap`; each item is rendered on demand (a frame costs a few ms) from a
    cached scene, so random access is cheap. Items follow the module docstring, with "flow" always
    present (exact, from the simulator), every frame labelled, and "event" (T,) bool: the frames a
    transient event of the simulator touched (``SynthConfig.*_rate``; all False when events are off).
    """

    def __init__(self, num_videos: int = 8, frames: int = 48, size: tuple[int, int] = DEFAULT_SIZE, T: int = 3,
                 seed: int = 0, split: str = "all", stride: int = 1, frame_gap: int = 1,
                 split_fractions=(0.7, 0.15, 0.15), config=None, cache_scenes: int = 16, augment=None,
                 folds: Optional[tuple[int, int]] = None):
        from dtc.data.synth import SynthConfig

        if split not in ("train", "val", "test", "all"):
            raise ValueError(f"split must be 'train', 'val', 'test' or 'all', got {split!r}")
        if num_videos < 1:
            raise ValueError(f"num_videos must be >= 1, got {num_videos}")
        if T < 1 or stride < 1 or frame_gap < 1:
            raise ValueError(f"T, stride and frame_gap must be >= 1, got {T}, {stride}, {frame_gap}")
        span = (T - 1) * frame_gap + 1
        if frames < span:
            raise ValueError(f"frames={frames} is shorter than one window of T={T}, frame_gap={frame_gap} ({span} frames)")
        base = config or SynthConfig()
        self.config = SynthConfig(**{**base.to_dict(), "height": int(size[0]), "width": int(size[1]),
                                     "frames": int(frames), "views": tuple(base.views)})
        self.T, self.stride, self.frame_gap, self.seed, self.split = T, stride, frame_gap, seed, split
        self.augment = augment
        self.all_videos = synthetic_video_table(num_videos, self.config.views, seed)
        patients = sorted({v["patient_id"] for v in self.all_videos})
        # folds = (k, fold): patient-level k-fold cross-validation instead of the fixed fractions.
        assign = patient_folds(patients, seed, *folds) if folds is not None else \
            patient_split(patients, seed, split_fractions)
        for v in self.all_videos:
            v["split"] = assign[v["patient_id"]]
        self.videos = [v for v in self.all_videos if split == "all" or v["split"] == split]
        self.windows = [(vi, s) for vi in range(len(self.videos)) for s in range(0, frames - span + 1, stride)]
        self._scenes: OrderedDict[int, object] = OrderedDict()
        self._cache_size = max(1, cache_scenes)

    def __len__(self) -> int:
        return len(self.windows)

    def scene(self, vi: int):
        from dtc.data.synth import TRUSScene

        if vi in self._scenes:
            self._scenes.move_to_end(vi)
            return self._scenes[vi]
        v = self.videos[vi]
        sc = TRUSScene(self.config, v["seed"], v["view"])
        self._scenes[vi] = sc
        while len(self._scenes) > self._cache_size:
            self._scenes.popitem(last=False)
        return sc

    def flow_between(self, video_id: str, frame_from: int, frame_to: int) -> np.ndarray:
        """The simulator's exact backward flow (2, H, W) float32 from frame ``frame_from`` to ``frame_to``
        of ``video_id``, in the items' convention (what the flow-compensated metrics of a single-frame
        evaluation need between consecutive evaluated frames)."""
        for vi, v in enumerate(self.videos):
            if v["video_id"] == video_id:
                return self.scene(vi).render(int(frame_to), flow_from=int(frame_from))[2]
        raise KeyError(f"video {video_id!r} is not in the {self.split!r} split")

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.windows):
            raise IndexError(f"window index {index} out of range [0, {len(self.windows)})")
        vi, start = self.windows[index]
        sc = self.scene(vi)
        idx = [start + k * self.frame_gap for k in range(self.T)]
        frames, masks, flows = [], [], []
        event = torch.tensor([bool(sc.active_events(t)) for t in idx], dtype=torch.bool)
        for k, t in enumerate(idx):
            f, m, fl, _ = sc.render(t, flow_from=idx[k - 1] if k else None)
            frames.append(f)
            masks.append(m)
            flows.append(fl if k else np.zeros((2, *f.shape), np.float32))
        img = torch.from_numpy(np.stack(frames))[:, None].expand(-1, 3, -1, -1).contiguous()
        item = {
            "image": img,
            "mask": torch.from_numpy(np.stack(masks)).float()[:, None],
            "mask_valid": torch.ones(self.T, dtype=torch.bool),
            "flow": torch.from_numpy(np.stack(flows)),
            "video_id": self.videos[vi]["video_id"],
            "frame_index": torch.tensor(idx, dtype=torch.int64),
            "spacing": torch.tensor(self.config.spacing, dtype=torch.float64),
            "event": event,
        }
        if self.augment is not None:
            item = self.augment(item)
        return item


def synthetic_video_table(num_videos: int, views, seed: int) -> list[dict]:
    """Video ids, patients, views and per-video seeds of a synthetic dataset (shared by the
    in-memory dataset and `dtc data synth`, so both split identically)."""
    views = tuple(views)
    out = []
    for i in range(num_videos):
        patient, view = i // len(views), views[i % len(views)]
        vseed = int(np.random.SeedSequence([seed, patient]).generate_state(1)[0])
        out.append({"video_id": f"{patient:03d}_{view[:3]}", "patient_id": f"{patient:03d}", "view": view,
                    "seed": vseed, "index": i})
    return out
