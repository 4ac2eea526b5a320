"""Bring your own data: every reader is reachable from data.source, and multi-frame ultrasound DICOM
cine loops (written here with pydicom) read with the region calibration's pixel spacing."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dtc.engine import ConfigError, load_config
from dtc.engine.data import build_dataset

pydicom = pytest.importorskip("pydicom", reason="pydicom is not installed (pip install dtc[dicom]); DICOM tests skipped")

FRAMES, H, W = 6, 32, 48


def _frames(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 200, size=(FRAMES, H, W), dtype=np.uint8)
    frames[:, 8:20, 10 + seed: 30 + seed] = 250  # a bright target, as the masks say
    return frames


def _masks(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"mask_{i:03d}.png"), np.where(f == 250, 255, 0).astype(np.uint8))


def write_cine(path: Path, frames: np.ndarray, *, region=(0.02, 0.025), pixel_spacing=None, patient="P1",
               bits: int = 8) -> Path:
    """A multi-frame ultrasound DICOM as a scanner stores a cine loop (Explicit VR Little Endian)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "US", patient
    ds.NumberOfFrames, ds.Rows, ds.Columns = len(frames), frames.shape[1], frames.shape[2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if region is not None:
        doppler = pydicom.Dataset()  # a spectral strip first: calibrated in cm/s and seconds, not cm
        doppler.PhysicalUnitsXDirection, doppler.PhysicalUnitsYDirection = 4, 7
        doppler.PhysicalDeltaX, doppler.PhysicalDeltaY = 0.01, 0.5
        bmode = pydicom.Dataset()
        bmode.RegionSpatialFormat = 1
        bmode.PhysicalUnitsXDirection = bmode.PhysicalUnitsYDirection = 3  # cm
        bmode.PhysicalDeltaX, bmode.PhysicalDeltaY = region
        ds.SequenceOfUltrasoundRegions = [doppler, bmode]
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    ds.PixelData = frames.astype(np.uint8 if bits == 8 else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_cine_reads_frames_and_the_region_calibration(tmp_path):
    from dtc.data import VideoSegmentationDataset, read_dicom_cine

    frames = _frames(0)
    path = write_cine(tmp_path / "loop.dcm", frames)
    _masks(tmp_path / "masks", frames)
    (rec,) = read_dicom_cine(path, mask_dir=tmp_path / "masks")
    assert rec.kind == "dicom" and len(rec.frames) == FRAMES and rec.patient_id == "P1"
    # The B-mode region is 0.02 cm wide and 0.025 cm tall per pixel: (row, column) = (0.25, 0.2) mm.
    assert rec.spacing == pytest.approx((0.25, 0.2))
    ds = VideoSegmentationDataset([rec], T=2, size=None)
    video = ds.video(0)
    np.testing.assert_array_equal(video.images[..., 0], frames)
    np.testing.assert_array_equal(video.masks, (frames == 250).astype(np.uint8))
    assert video.valid.all()
    item = ds[0]
    assert item["image"].shape == (2, 3, H, W)
    torch.testing.assert_close(item["spacing"], torch.tensor([0.25, 0.2], dtype=torch.float64))


def test_dicom_spacing_falls_back_to_pixel_spacing_and_reads_16_bit(tmp_path):
    from dtc.data import VideoSegmentationDataset, read_dicom_cine

    frames = _frames(1).astype(np.uint16) * 16
    path = write_cine(tmp_path / "wide.dcm", frames, region=None, pixel_spacing=(0.3, 0.4), bits=16)
    (rec,) = read_dicom_cine(path)
    assert rec.spacing == pytest.approx((0.3, 0.4))
    images = VideoSegmentationDataset([rec], T=1, size=None).video(0).images[..., 0]
    expected = np.round((frames - frames.min()) / (frames.max() - frames.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(images, expected)
    (bare,) = read_dicom_cine(write_cine(tmp_path / "bare.dcm", _frames(2), region=None))
    assert bare.spacing is None


def test_dicom_without_pydicom_names_the_extra(tmp_path, monkeypatch):
    from dtc.data import read_dicom_cine

    path = write_cine(tmp_path / "loop.dcm", _frames(0))
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install dtc\[dicom\]"):
        read_dicom_cine(path)


def test_dicom_bad_files_are_named(tmp_path):
    from dtc.data import read_dicom_cine

    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all")
    with pytest.raises(ValueError, match="junk.dcm"):
        read_dicom_cine(junk)
    with pytest.raises(FileNotFoundError, match="missing.dcm"):
        read_dicom_cine(tmp_path / "missing.dcm")


def _layout(tmp_path: Path, source: str) -> list[str]:
    """Six patients' videos in ``source``'s layout; returns the data.* overrides that read them."""
    root, masks = tmp_path / "data", tmp_path / "masks"
    root.mkdir()
    for k in range(6):
        frames = _frames(k)
        stem = f"case{k}"
        if source == "dicom":
            write_cine(root / f"{stem}.dcm", frames, patient=f"P{k}")
        elif source == "video":
            writer = cv2.VideoWriter(str(root / f"{stem}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
            for f in frames:
                writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
            writer.release()
        elif source == "nifti":
            import nibabel as nib

            masks.mkdir(exist_ok=True)
            volume = np.moveaxis(frames, 0, -1).astype(np.float32)
            nib.save(nib.Nifti1Image(volume, np.diag([0.5, 0.5, 1.0, 1.0])), str(root / f"{stem}.nii.gz"))
            nib.save(nib.Nifti1Image((volume == 250).astype(np.uint8), np.eye(4)), str(masks / f"{stem}.nii.gz"))
            continue
        elif source == "stills":
            still = frames[0]
            cv2.imwrite(str(root / f"{100 + k:03d}_HC.png"), still)
            outline = np.zeros_like(still)
            cv2.ellipse(outline, (24, 16), (10, 6), 0, 0, 360, 255, 1)
            cv2.imwrite(str(root / f"{100 + k:03d}_HC_Annotation.png"), outline)
            continue
        _masks(masks / stem, frames)
    overrides = [f"data.source={source}", f"data.root={root}"]
    return overrides + ([f"data.masks={masks}"] if masks.exists() else [])


@pytest.mark.parametrize("source,kind", [("dicom", "dicom"), ("video", "video"), ("nifti", "nifti"),
                                         ("stills", "images")])
def test_every_reader_is_reachable_from_data_source(tmp_path, source, kind):
    cfg = load_config(None, ["stage=teacher", "data.height=32", "data.width=48", *_layout(tmp_path, source)])
    cfg.validate()
    seen = []
    for split in ("train", "val", "test"):
        dataset = build_dataset(cfg, split)
        assert all(v.kind == kind for v in dataset.videos)
        dataset.validate()
        seen += [v.patient_id for v in dataset.videos]
    assert len(seen) == 6 and len(set(seen)) == 6  # each patient in exactly one split
    item = build_dataset(cfg, "train")[0]
    assert item["image"].shape[-2:] == (32, 48) and bool(item["mask_valid"].all())


def test_a_teacher_trains_on_dicom_cines_from_the_cli(tmp_path):
    from dtc.cli.main import main as cli

    out = tmp_path / "run"
    code = cli(["train-teacher", *_layout(tmp_path, "dicom"), "data.height=32", "data.width=48",
                "data.batch_size=4", "data.max_windows=4", "model.kwargs={base: 4}", "optim.epochs=1",
                "run.progress=false", "run.device=cpu", f"--out={out}"])
    assert code == 0 and (out / "last.pt").is_file()


def test_unknown_sources_and_missing_mask_folders_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="data.source must be one of .*'dicom'"):
        load_config(None, ["data.source=dicom-ish", f"data.root={tmp_path}"]).validate()
    with pytest.raises(ConfigError, match="data.masks does not exist"):
        load_config(None, ["stage=teacher", "data.source=dicom", f"data.root={tmp_path}",
                           f"data.masks={tmp_path / 'nope'}"]).validate()
