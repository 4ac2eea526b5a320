"""A common index of videos -> frames, and readers that build it from the layouts dtc supports.

Every reader returns a list of `VideoRecord`; `VideoSegmentationDataset` consumes that list.
Readers check that every referenced file exists (FileNotFoundError naming it) but decode nothing;
decoding errors are raised, naming the file, when a video is first loaded (or by `validate()`).

Readers:
    read_csv_index        the authors' CSV (patient_id, frame_num, image_paths, mask_paths) with
                          the TRUS-V (`{id}_{frame}_{view}.png`) or SUN (`<case>/..._image0001.jpg`)
                          path scheme; optional `flow_paths`, `spacing_mm` columns (dtc data synth).
    read_sunseg_tree      the official SUN-SEG `Frame/<case>/*.jpg` + `GT/<case>/*.png` tree.
    read_folder_index     a folder of frames (+ masks), or a folder of such folders (one per video).
    read_video_file       an mp4/avi (decoded with OpenCV) with an optional mask folder.
    read_ellipse_stills   still images with ellipse-outline annotations (HC18 style) + pixel size.
    read_nifti            a NIfTI volume (+ mask volume): slices along an axis are the frames.
"""
from __future__ import annotations

import csv
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TRUS_NAME = re.compile(r"^(?P<id>.+)_(?P<frame>\d+)_(?P<view>axi|sag)$")
TRAILING_NUMBER = re.compile(r"(\d+)(?!.*\d)")


class DataWarning(UserWarning):
    """A data problem that was handled by a policy (reported, never silent)."""


@dataclass
class FrameRef:
    """One frame of a video: its number in the source and where its pixels come from.

    number: frame number as given by the source (gaps in it are detected).
    image: image file, or None for frames of a video file / volume (then `position` indexes it).
    mask: mask file, or None when this frame is unlabelled.
    flow: `.npy` ground-truth backward flow (2, H, W) from the previous frame, or None.
    """

    number: int
    image: str | None = None
    mask: str | None = None
    flow: str | None = None
    position: int | None = None


@dataclass
class VideoRecord:
    """A video: an ordered list of frames plus what is known about it.

    kind: "images" (one file per frame), "video" (frames of `source`, a video file), "nifti"
    (slices of the volume `source` along `axis`, masks from `mask_source`) or "dicom" (frames of the
    multi-frame DICOM cine `source`).
    mask_kind: "binary" (a mask image) or "ellipse_outline" (a 1-pixel outline to fill).
    spacing: (row, column) mm per pixel of the source images, or None.
    """

    video_id: str
    frames: list[FrameRef]
    patient_id: str
    view: str | None = None
    spacing: tuple[float, float] | None = None
    kind: str = "images"
    source: str | None = None
    mask_source: str | None = None
    axis: int = -1
    mask_kind: str = "binary"
    meta: dict = field(default_factory=dict)


def _require(path: Path | str, what: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    return str(p)


def _frame_number(stem: str, where: str) -> int:
    m = TRAILING_NUMBER.search(stem)
    if not m:
        raise ValueError(f"cannot read a frame number from file name {stem!r} in {where}")
    return int(m.group(1))


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def apply_gap_policy(record: VideoRecord, policy: str = "split") -> list[VideoRecord]:
    """Check frame numbers for gaps and duplicates; apply `policy` to gaps.

    policy: "error" raises; "split" warns and splits the video into contiguous segments
    (`<id>@<k>`); "ignore" warns and treats listed frames as consecutive (ground-truth flows are then
    dropped, since they do not describe the jumps).
    """
    if policy not in ("error", "split", "ignore"):
        raise ValueError(f"gap_policy must be 'error', 'split' or 'ignore', got {policy!r}")
    frames = sorted(record.frames, key=lambda f: f.number)
    numbers = [f.number for f in frames]
    dup = sorted({n for n in numbers if numbers.count(n) > 1})
    if dup:
        raise ValueError(f"video {record.video_id!r}: duplicate frame numbers {dup[:10]}")
    cuts = [i for i in range(1, len(frames)) if numbers[i] != numbers[i - 1] + 1]
    record = replace(record, frames=frames)
    if not cuts:
        return [record]
    missing = [(numbers[i - 1] + 1, numbers[i] - 1) for i in cuts]
    desc = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in missing[:8])
    if policy == "error":
        raise ValueError(f"video {record.video_id!r}: missing frame numbers {desc} (gap_policy='error')")
    if policy == "ignore":
        warnings.warn(f"video {record.video_id!r}: missing frame numbers {desc}; treating listed frames as "
                      "consecutive (gap_policy='ignore'); its ground-truth flows are dropped", DataWarning, stacklevel=2)
        return [replace(record, frames=[replace(f, flow=None) for f in frames], meta={**record.meta, "gaps": missing})]
    warnings.warn(f"video {record.video_id!r}: missing frame numbers {desc}; split into {len(cuts) + 1} "
                  "segments (gap_policy='split')", DataWarning, stacklevel=2)
    bounds = [0, *cuts, len(frames)]
    out = []
    for k in range(len(bounds) - 1):
        seg = frames[bounds[k]:bounds[k + 1]]
        seg = [replace(seg[0], flow=None), *seg[1:]]  # the first frame's flow points across the gap
        out.append(replace(record, video_id=f"{record.video_id}@{k}", frames=seg,
                           meta={**record.meta, "segment_of": record.video_id}))
    return out


# ------------------------------------------------------------------------------------------------
# CSV (authors' layout)

def read_csv_index(csv_path: str | os.PathLike, root: str | os.PathLike | None = None,
                   scheme: str = "auto") -> list[VideoRecord]:
    """The authors' CSV: columns `patient_id` (the video id), `frame_num`, `image_paths`, `mask_paths`.

    Relative paths are taken relative to `root` (default: the CSV's folder). `scheme` reads the
    patient and view from the file names: "trus" (`{id}_{frame}_{view}.png`, patient = id), "sun"
    (`<case>/..._image0001.jpg`, patient = case) or "auto" (trus if the name matches, else sun).
    An empty `mask_paths` cell marks an unlabelled frame. Optional columns: `flow_paths`,
    `spacing_mm` (one number, square pixels), `split`.
    """
    csv_path = Path(_require(csv_path, "CSV index"))
    root = Path(root) if root is not None else csv_path.parent
    if scheme not in ("auto", "trus", "sun"):
        raise ValueError(f"scheme must be 'auto', 'trus' or 'sun', got {scheme!r}")
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"patient_id", "frame_num", "image_paths", "mask_paths"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise ValueError(f"{csv_path}: expected columns {sorted(need)}, got {reader.fieldnames}")
        rows = list(reader)
    videos: dict[str, VideoRecord] = {}
    for line, row in enumerate(rows, start=2):
        vid = row["patient_id"].strip()
        try:
            number = int(row["frame_num"])
        except ValueError:
            raise ValueError(f"{csv_path}:{line}: frame_num must be an integer, got {row['frame_num']!r}") from None
        image = _require(root / row["image_paths"].strip(), f"image ({csv_path}:{line})")
        mask = row["mask_paths"].strip()
        mask = _require(root / mask, f"mask ({csv_path}:{line})") if mask else None
        flow = (row.get("flow_paths") or "").strip()
        flow = _require(root / flow, f"flow ({csv_path}:{line})") if flow else None
        stem = Path(image).stem
        m = TRUS_NAME.match(stem)
        if scheme == "trus" and not m:
            raise ValueError(f"{csv_path}:{line}: image name {stem!r} does not follow the TRUS scheme "
                             "{id}_{frame}_{view} with view axi|sag")
        if m and scheme != "sun":
            patient, view = m.group("id"), m.group("view")
        else:
            patient, view = Path(image).parent.name, None
        rec = videos.get(vid)
        if rec is None:
            spacing = row.get("spacing_mm")
            spacing = (float(spacing), float(spacing)) if spacing else None
            rec = videos[vid] = VideoRecord(video_id=vid, frames=[], patient_id=patient, view=view,
                                            spacing=spacing, meta={"split": row.get("split")})
        rec.frames.append(FrameRef(number=number, image=image, mask=mask, flow=flow))
    return list(videos.values())


# ------------------------------------------------------------------------------------------------
# SUN-SEG official tree, generic folders

def read_sunseg_tree(root: str | os.PathLike, frame_dir: str = "Frame", gt_dir: str = "GT") -> list[VideoRecord]:
    """The official SUN-SEG tree: `root/Frame/<case>/<name>.jpg` with `root/GT/<case>/<name>.png`.

    Frames are matched to masks by file stem; a frame without a mask is unlabelled.
    """
    root = Path(root)
    frames_root, gt_root = root / frame_dir, root / gt_dir
    if not frames_root.is_dir():
        raise FileNotFoundError(f"SUN-SEG frame folder not found: {frames_root}")
    out = []
    for case in sorted(p for p in frames_root.iterdir() if p.is_dir()):
        masks = {p.stem: p for p in _list_images(gt_root / case.name)} if (gt_root / case.name).is_dir() else {}
        frames = [FrameRef(number=_frame_number(p.stem, str(case)), image=str(p),
                           mask=str(masks[p.stem]) if p.stem in masks else None) for p in _list_images(case)]
        out.append(VideoRecord(video_id=case.name, frames=frames, patient_id=case.name))
    if not out:
        raise ValueError(f"no case folders under {frames_root}")
    return out


def read_folder_index(root: str | os.PathLike, image_dir: str = "images", mask_dir: str = "masks",
                      mask_suffix: str = "") -> list[VideoRecord]:
    """Generic folders. `root/images` (+ `root/masks`) is one video; otherwise every subfolder of
    root holding `images/` is a video. Masks match frames by stem (+ `mask_suffix`, e.g. "_mask");
    frame numbers come from the trailing digits of the stem.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"folder not found: {root}")
    dirs = [root] if (root / image_dir).is_dir() else sorted(p for p in root.iterdir() if (p / image_dir).is_dir())
    if not dirs:
        raise ValueError(f"{root}: expected an '{image_dir}/' folder, or subfolders that hold one")
    out = []
    for d in dirs:
        masks = {}
        if (d / mask_dir).is_dir():
            masks = {p.stem: p for p in _list_images(d / mask_dir)}
        frames = []
        for p in _list_images(d / image_dir):
            mk = masks.get(p.stem + mask_suffix)
            frames.append(FrameRef(number=_frame_number(p.stem, str(d / image_dir)), image=str(p),
                                   mask=str(mk) if mk else None))
        out.append(VideoRecord(video_id=d.name, frames=frames, patient_id=d.name))
    return out


# ------------------------------------------------------------------------------------------------
# video files

def count_video_frames(path: str | os.PathLike) -> int:
    """Decode-free frame count (grabbing), because container frame counts are unreliable."""
    path = _require(path, "video file")
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise ValueError(f"cannot open video file {path} (corrupt or unsupported codec)")
        n = 0
        while cap.grab():
            n += 1
    finally:
        cap.release()
    return n


def decode_video_frames(path: str | os.PathLike, color: str = "grey") -> list:
    """Every frame of a video file, in order: (H, W) uint8 for ``color="grey"``, (H, W, 3) RGB for ``"rgb"``."""
    path = _require(path, "video file")
    conversion = {"grey": cv2.COLOR_BGR2GRAY, "rgb": cv2.COLOR_BGR2RGB}[color]
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise ValueError(f"cannot open video file {path} (corrupt or unsupported codec)")
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                return frames
            frames.append(cv2.cvtColor(frame, conversion) if frame.ndim == 3 else frame)
    finally:
        cap.release()


def _masks_by_frame(mask_dir, n: int, source) -> dict:
    """Mask files of a folder by frame number (0-based, from the file names) for a source of ``n`` frames;
    {} without a folder. A mask for a frame the source does not have is an error naming both."""
    if mask_dir is None:
        return {}
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise FileNotFoundError(f"mask folder not found: {mask_dir}")
    masks = {_frame_number(p.stem, str(mask_dir)): str(p) for p in _list_images(mask_dir)}
    beyond = sorted(k for k in masks if k >= n)
    if beyond:
        raise ValueError(f"{mask_dir}: masks for frames {beyond[:5]} but {source} has only {n} frames")
    return masks


def read_video_file(path: str | os.PathLike, mask_dir: str | os.PathLike | None = None,
                    video_id: str | None = None, spacing: tuple[float, float] | None = None) -> list[VideoRecord]:
    """A video file (anything OpenCV decodes: mp4, avi, ...) with optional per-frame masks.

    Masks in `mask_dir` are matched by the trailing number of their stem = 0-based frame index.
    """
    path = Path(_require(path, "video file"))
    n = count_video_frames(path)
    if n == 0:
        raise ValueError(f"video file {path} has no decodable frames (empty or corrupt)")
    masks = _masks_by_frame(mask_dir, n, path)
    frames = [FrameRef(number=i, position=i, mask=masks.get(i)) for i in range(n)]
    vid = video_id or path.stem
    return [VideoRecord(video_id=vid, frames=frames, patient_id=vid, kind="video", source=str(path), spacing=spacing)]


# ------------------------------------------------------------------------------------------------
# stills with ellipse outlines (HC18), NIfTI

def read_ellipse_stills(image_dir: str | os.PathLike, spacing_csv: str | os.PathLike | None = None,
                        annotation_suffix: str = "_Annotation") -> list[VideoRecord]:
    """Still images with ellipse-outline annotations (HC18 layout: `NNN_HC.png` +
    `NNN_HC_Annotation.png`; `NNN_2HC` is another frame of subject NNN). Each image is a one-frame
    video; the patient is the leading number. The outline is filled into a mask on loading.
    `spacing_csv` (columns `filename`, `pixel size(mm)`) gives the square pixel size.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    sizes = {}
    if spacing_csv is not None:
        with open(_require(spacing_csv, "pixel size CSV"), newline="") as fh:
            rows = list(csv.DictReader(fh))
        key = next((k for k in (rows[0].keys() if rows else []) if k.lower().startswith("pixel size")), None)
        if key is None or "filename" not in rows[0]:
            raise ValueError(f"{spacing_csv}: expected columns 'filename' and 'pixel size(mm)'")
        sizes = {r["filename"]: float(r[key]) for r in rows}
    out = []
    for p in _list_images(image_dir):
        if p.stem.endswith(annotation_suffix):
            continue
        ann = p.with_name(p.stem + annotation_suffix + p.suffix)
        mask = str(ann) if ann.exists() else None  # an image without annotation is an unlabelled frame
        px = sizes.get(p.name)
        if sizes and px is None:
            raise ValueError(f"{spacing_csv}: no pixel size for {p.name}")
        patient = re.match(r"^(\d+)", p.stem)
        out.append(VideoRecord(video_id=p.stem, frames=[FrameRef(number=0, image=str(p), mask=mask)],
                               patient_id=patient.group(1) if patient else p.stem,
                               spacing=(px, px) if px else None, mask_kind="ellipse_outline"))
    if not out:
        raise ValueError(f"no images in {image_dir}")
    return out


def read_nifti(volume: str | os.PathLike, mask: str | os.PathLike | None = None, axis: int = -1,
               video_id: str | None = None) -> list[VideoRecord]:
    """A 3-D NIfTI volume as a video of 2-D slices along `axis` (nibabel). The mask volume, if given,
    must have the same shape. Spacing comes from the header's voxel sizes of the two in-plane axes.
    """
    try:
        import nibabel as nib
    except ImportError as exc:  # optional dependency
        raise ImportError("reading NIfTI needs nibabel: pip install nibabel") from exc
    volume = _require(volume, "NIfTI volume")
    img = nib.load(volume)
    shape = img.shape
    if len(shape) != 3:
        raise ValueError(f"{volume}: expected a 3-D volume, got shape {shape}")
    ax = axis % 3
    if mask is not None:
        mask = _require(mask, "NIfTI mask")
        mshape = nib.load(mask).shape
        if mshape != shape:
            raise ValueError(f"mask/image size mismatch: {mask} has shape {mshape}, {volume} has {shape}")
    zooms = [float(z) for i, z in enumerate(img.header.get_zooms()[:3]) if i != ax]
    vid = video_id or Path(volume).name.split(".")[0]
    frames = [FrameRef(number=i, position=i, mask=None) for i in range(shape[ax])]
    return [VideoRecord(video_id=vid, frames=frames, patient_id=vid, kind="nifti", source=volume,
                        mask_source=mask, axis=ax, spacing=(zooms[0], zooms[1]))]


# ------------------------------------------------------------------------------------------------
# multi-frame ultrasound DICOM (cine loops)

# DICOM PS3.3 C.8.5.5.1.1: the Physical Units X/Y Direction code for centimetres.
_DICOM_UNITS_CM = 3


def _pydicom():
    try:
        import pydicom
    except ImportError as exc:  # optional dependency
        raise ImportError("reading DICOM needs pydicom: pip install dtc[dicom] (or pip install pydicom)") from exc
    return pydicom


def dicom_spacing(ds) -> tuple[float, float] | None:
    """(row, column) mm per pixel of a DICOM data set: the ultrasound region calibration
    (SequenceOfUltrasoundRegions, PhysicalDeltaY/X in cm) when present, else PixelSpacing (mm), else None.

    Of several regions the first whose units are centimetres on both axes is used (scanners put the
    B-mode image first; Doppler strips are calibrated in cm/s or seconds and are skipped that way).
    """
    for region in getattr(ds, "SequenceOfUltrasoundRegions", None) or []:
        units = (getattr(region, "PhysicalUnitsYDirection", None), getattr(region, "PhysicalUnitsXDirection", None))
        dy, dx = getattr(region, "PhysicalDeltaY", None), getattr(region, "PhysicalDeltaX", None)
        if units == (_DICOM_UNITS_CM, _DICOM_UNITS_CM) and dy and dx:
            return (abs(float(dy)) * 10.0, abs(float(dx)) * 10.0)
    spacing = getattr(ds, "PixelSpacing", None)
    if spacing is not None and len(spacing) == 2:
        return (float(spacing[0]), float(spacing[1]))
    return None


def read_dicom_cine(path: str | os.PathLike, mask_dir: str | os.PathLike | None = None,
                    video_id: str | None = None) -> list[VideoRecord]:
    """A multi-frame ultrasound DICOM (a cine loop, as scanners store them) as one video (pydicom, the
    optional extra ``dtc[dicom]``). A single-frame file is a one-frame video.

    Spacing: :func:`dicom_spacing`. Patient: the PatientID tag when set, else the file's stem. Masks in
    `mask_dir` are matched by the trailing number of their stem = 0-based frame index.
    """
    pydicom = _pydicom()
    path = Path(_require(path, "DICOM file"))
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001  (pydicom raises many kinds for foreign or truncated files)
        raise ValueError(f"cannot read DICOM file {path}: {type(exc).__name__}: {exc}") from exc
    if "Rows" not in ds or "Columns" not in ds:
        raise ValueError(f"DICOM file {path} holds no image (no Rows/Columns)")
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    masks = _masks_by_frame(mask_dir, n, path)
    vid = video_id or path.stem
    patient = str(getattr(ds, "PatientID", "") or "").strip() or vid
    frames = [FrameRef(number=i, position=i, mask=masks.get(i)) for i in range(n)]
    return [VideoRecord(video_id=vid, frames=frames, patient_id=patient, kind="dicom", source=str(path),
                        spacing=dicom_spacing(ds), meta={"modality": str(getattr(ds, "Modality", ""))})]


# ------------------------------------------------------------------------------------------------
# one entry point per data.source

#: ``data.source`` values that name files on disk, and the file endings each reads from a folder.
SOURCES = ("csv", "sunseg", "folder", "video", "nifti", "stills", "dicom")
_ENDINGS = {"video": (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".wmv", ".mpg", ".mpeg"),
            "nifti": (".nii", ".nii.gz"), "dicom": (".dcm", ".dicom")}


def _files(root: Path, source: str) -> list[Path]:
    endings = _ENDINGS[source]
    if root.is_file():
        return [root]
    found = sorted(p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(endings))
    if not found:
        raise ValueError(f"data.root {root}: no {source} files (ending in {', '.join(endings)})")
    return found


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


def read_source(source: str, root: str | os.PathLike, masks: str | os.PathLike | None = None,
                spacing_csv: str | os.PathLike | None = None) -> list[VideoRecord]:
    """The videos of ``data.source`` under ``data.root``: one reader per source.

    * ``csv``: an index CSV (:func:`read_csv_index`); ``sunseg``: a SUN-SEG tree; ``folder``: per-video
      image/mask folders (:func:`read_folder_index`).
    * ``video`` / ``nifti`` / ``dicom``: one file, or a folder of such files, each a video (DICOM: a
      multi-frame cine). Masks: for video and DICOM files, ``masks/<stem>/`` holds per-frame mask images
      (numbered by frame index); for NIfTI, ``masks/<file name>`` is the mask volume. Without ``masks``
      (or without a match in it) a video is unlabelled.
    * ``stills``: ellipse-annotated stills (HC18 layout), each a one-frame video; ``spacing_csv`` gives
      their pixel sizes.
    """
    if source not in SOURCES:
        raise ValueError(f"data.source must be one of {list(SOURCES)} for files on disk, got {source!r}")
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data.root not found: {root}")
    masks = Path(masks) if masks is not None else None
    if masks is not None and not masks.is_dir():
        raise FileNotFoundError(f"data.masks folder not found: {masks}")
    if source == "csv":
        return read_csv_index(root)
    if source == "sunseg":
        return read_sunseg_tree(root)
    if source == "folder":
        return read_folder_index(root)
    if source == "stills":
        return read_ellipse_stills(root, spacing_csv=spacing_csv)
    records = []
    for path in _files(root, source):
        if source == "nifti":
            mask = masks / path.name if masks is not None and (masks / path.name).is_file() else None
            records += read_nifti(path, mask=mask, video_id=_stem(path))
            continue
        mask_dir = masks / _stem(path) if masks is not None and (masks / _stem(path)).is_dir() else None
        reader = read_video_file if source == "video" else read_dicom_cine
        records += reader(path, mask_dir=mask_dir, video_id=_stem(path))
    return records
