"""Readers, windows, caching and bad input. Every reader is tested on a tree written here; HC18 on
the real fixture."""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dtc.data import (DataWarning, SequenceAugment, SyntheticTRUSDataset, VideoSegmentationDataset,
                      read_csv_index, read_ellipse_stills, read_folder_index, read_nifti, read_sunseg_tree,
                      read_video_file, write_synth_dataset)
from dtc.data.synth import SynthConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HC18 = FIXTURES / "hc18-ultrasound"


def _frames(n, h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    imgs, masks = [], []
    for t in range(n):
        img = (rng.random((h, w)) * 200).astype(np.uint8)
        img[:, :4] = 10 * t  # frame tag: lets tests check which frame came back
        m = np.zeros((h, w), np.uint8)
        cv2.circle(m, (20 + t, 20), 8, 255, -1)
        imgs.append(img)
        masks.append(m)
    return imgs, masks


def _write_trus_csv(root: Path, patients=("p1", "p2"), n=5, with_mask=lambda t: True):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    imgs, masks = _frames(n)
    for pid in patients:
        for view in ("axi", "sag"):
            for t in range(n):
                name = f"{pid}_{t}_{view}.png"
                cv2.imwrite(str(root / "images" / name), imgs[t])
                cv2.imwrite(str(root / "masks" / name), masks[t])
                rows.append({"patient_id": f"{pid}_{view}", "frame_num": t, "image_paths": f"images/{name}",
                             "mask_paths": f"masks/{name}" if with_mask(t) else ""})
    with open(root / "index.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / "index.csv", imgs, masks


def test_csv_trus_scheme_windows_and_items(tmp_path):
    path, imgs, masks = _write_trus_csv(tmp_path, with_mask=lambda t: t != 2)
    recs = read_csv_index(path)
    assert sorted(r.video_id for r in recs) == ["p1_axi", "p1_sag", "p2_axi", "p2_sag"]
    assert {r.patient_id for r in recs} == {"p1", "p2"} and {r.view for r in recs} == {"axi", "sag"}
    ds = VideoSegmentationDataset(recs, T=3, stride=1, size=None)
    assert len(ds) == 4 * 3
    item = ds[1]
    assert item["image"].shape == (3, 3, 40, 56) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (3, 1, 40, 56) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert item["frame_index"].tolist() == [1, 2, 3]
    assert item["mask_valid"].tolist() == [True, False, True]  # frame 2 is unlabelled
    assert item["mask"][1].sum() == 0
    # pixel-exact content, grey replicated to 3 channels
    np.testing.assert_allclose(item["image"][0, 0].numpy(), imgs[1] / 255.0, atol=1e-6)
    assert torch.equal(item["image"][:, 0], item["image"][:, 2])
    np.testing.assert_array_equal(item["mask"][2, 0].numpy(), masks[3] > 0)
    assert "flow" not in item and "spacing" not in item


def test_frames_decoded_once_per_video(tmp_path):
    path, _, _ = _write_trus_csv(tmp_path, n=6)
    ds = VideoSegmentationDataset(read_csv_index(path), T=3, stride=1, size=(32, 48))
    for i in range(len(ds)):
        ds[i]
    for i in range(len(ds)):
        ds[i]
    assert ds.decode_count == 4 * 6  # not 4 windows x 3 frames per video, nor twice
    assert ds[0]["image"].shape == (3, 3, 32, 48)


def test_stride_frame_gap_and_short_videos(tmp_path):
    path, _, _ = _write_trus_csv(tmp_path, n=5)
    recs = read_csv_index(path)
    ds = VideoSegmentationDataset(recs, T=2, stride=2, frame_gap=2, size=None)
    assert [ds[i]["frame_index"].tolist() for i in range(2)] == [[0, 2], [2, 4]]
    assert len(ds) == 4 * 2
    with pytest.warns(DataWarning, match="shorter than a window"):
        short = VideoSegmentationDataset(recs, T=4, frame_gap=2, size=None)
    assert len(short) == 0 and len(short.short_videos) == 4


def test_sun_scheme_csv_and_official_tree(tmp_path):
    imgs, masks = _frames(4)
    for case in ("case1", "case2"):
        for sub in ("Frame", "GT"):
            (tmp_path / sub / case).mkdir(parents=True)
        for t in range(4):
            name = f"case_M_2019_image{t + 1:04d}"
            cv2.imwrite(str(tmp_path / "Frame" / case / f"{name}.jpg"), cv2.cvtColor(imgs[t], cv2.COLOR_GRAY2BGR))
            if t != 3:
                cv2.imwrite(str(tmp_path / "GT" / case / f"{name}.png"), masks[t])
    recs = read_sunseg_tree(tmp_path)
    assert [r.video_id for r in recs] == ["case1", "case2"]
    assert [f.number for f in recs[0].frames] == [1, 2, 3, 4]
    ds = VideoSegmentationDataset(recs, T=4, size=None, color="rgb")
    item = ds[0]
    assert item["mask_valid"].tolist() == [True, True, True, False]
    # the same frames through an authors'-style CSV with the SUN path scheme
    with open(tmp_path / "sun.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "frame_num", "image_paths", "mask_paths"])
        for f in recs[1].frames:
            w.writerow(["case2", f.number, Path(f.image).relative_to(tmp_path),
                        Path(f.mask).relative_to(tmp_path) if f.mask else ""])
    recs2 = read_csv_index(tmp_path / "sun.csv", scheme="sun")
    assert recs2[0].patient_id == "case2" and recs2[0].view is None
    item2 = VideoSegmentationDataset(recs2, T=4, size=None, color="rgb")[0]
    assert torch.equal(item2["image"], VideoSegmentationDataset([recs[1]], T=4, size=None, color="rgb")[0]["image"])


def test_colour_is_rgb_not_bgr(tmp_path):
    d = tmp_path / "v" / "images"
    d.mkdir(parents=True)
    img = np.zeros((8, 8, 3), np.uint8)
    img[..., 2] = 255  # pure red in OpenCV's BGR order
    cv2.imwrite(str(d / "f_0.png"), img)
    item = VideoSegmentationDataset(read_folder_index(tmp_path / "v"), T=1, size=None, color="rgb")[0]
    assert item["image"][0, 0].mean() == 1.0 and item["image"][0, 2].mean() == 0.0  # R channel first
    grey = VideoSegmentationDataset(read_folder_index(tmp_path / "v"), T=1, size=None, color="grey")[0]
    assert torch.equal(grey["image"][0, 0], grey["image"][0, 1])


def test_generic_folder_tree(tmp_path):
    imgs, masks = _frames(3)
    for vid in ("a", "b"):
        (tmp_path / vid / "images").mkdir(parents=True)
        (tmp_path / vid / "masks").mkdir()
        for t in range(3):
            cv2.imwrite(str(tmp_path / vid / "images" / f"frame{t:03d}.png"), imgs[t])
            cv2.imwrite(str(tmp_path / vid / "masks" / f"frame{t:03d}_mask.png"), masks[t])
    recs = read_folder_index(tmp_path, mask_suffix="_mask")
    assert [r.video_id for r in recs] == ["a", "b"]
    item = VideoSegmentationDataset(recs, T=3, size=None)[1]
    assert item["video_id"] == "b" and item["mask_valid"].all()
    np.testing.assert_array_equal(item["mask"][2, 0].numpy(), masks[2] > 0)


def _write_video(path, frames, fps=10):
    h, w = frames[0].shape[:2]
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert wr.isOpened()
    for f in frames:
        wr.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    wr.release()


def test_video_file_with_mask_folder(tmp_path):
    frames = [np.full((48, 64), 20 + 40 * t, np.uint8) for t in range(5)]
    _write_video(tmp_path / "clip.avi", frames)
    (tmp_path / "masks").mkdir()
    _, masks = _frames(5, 48, 64)
    for t in (0, 3):
        cv2.imwrite(str(tmp_path / "masks" / f"{t:05d}.png"), masks[t])
    recs = read_video_file(tmp_path / "clip.avi", tmp_path / "masks")
    assert len(recs[0].frames) == 5
    ds = VideoSegmentationDataset(recs, T=5, size=None)
    item = ds[0]
    assert item["mask_valid"].tolist() == [True, False, False, True, False]
    means = item["image"][:, 0].mean(dim=(1, 2)).numpy() * 255
    np.testing.assert_allclose(means, [20 + 40 * t for t in range(5)], atol=4)  # order preserved (lossy codec)


def test_corrupt_and_empty_video_files(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x01 definitely not a video" * 10)
    with pytest.raises(ValueError, match="broken.mp4"):
        read_video_file(bad)
    with pytest.raises(FileNotFoundError, match="nothere.avi"):
        read_video_file(tmp_path / "nothere.avi")


def test_hc18_real_fixture_ellipses_and_spacing():
    recs = read_ellipse_stills(HC18 / "training_set", HC18 / "training_set_pixel_size_and_HC.csv")
    assert len(recs) == 36
    assert {r.patient_id for r in recs if r.video_id.startswith("014_")} == {"014"}
    with open(HC18 / "training_set_pixel_size_and_HC.csv") as fh:
        hc = {r["filename"]: float(r["head circumference (mm)"]) for r in csv.DictReader(fh)}
    ds = VideoSegmentationDataset(recs, T=1, size=None)
    errors = []
    for i in range(0, 36, 5):
        item = ds[i]
        assert item["image"].shape == (1, 3, 540, 800)
        mask = item["mask"][0, 0].numpy().astype(np.uint8)
        cnts, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        assert len(cnts) == 1
        (_, _), (a, b), _ = cv2.fitEllipse(cnts[0])
        a, b = a / 2, b / 2
        perim = np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))  # Ramanujan
        px = float(item["spacing"][0])
        errors.append(abs(perim * px - hc[recs[i].video_id + ".png"]) / hc[recs[i].video_id + ".png"])
    assert max(errors) < 0.03, errors  # the filled mask measures the published head circumference
    # resizing rescales the spacing
    small = VideoSegmentationDataset(recs[:1], T=1, size=(270, 400))[0]
    np.testing.assert_allclose(small["spacing"].numpy(), np.array(recs[0].spacing) * 2, rtol=1e-9)


def test_ellipse_outline_is_filled(tmp_path):
    outline = np.zeros((60, 80, 3), np.uint8)
    cv2.ellipse(outline, (40, 30), (25, 15), 20, 0, 360, (255, 255, 255), 1)
    cv2.imwrite(str(tmp_path / "001_HC_Annotation.png"), outline)
    cv2.imwrite(str(tmp_path / "001_HC.png"), np.full((60, 80), 90, np.uint8))
    item = VideoSegmentationDataset(read_ellipse_stills(tmp_path), T=1, size=None)[0]
    area = item["mask"].sum().item()
    assert abs(area - np.pi * 25 * 15) / (np.pi * 25 * 15) < 0.08
    assert item["mask"][0, 0, 30, 40] == 1 and item["mask"][0, 0, 2, 2] == 0


def test_nifti_volume(tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = np.zeros((30, 20, 6), np.float32)
    for z in range(6):
        vol[:, :, z] = z * 10.0
    mask = np.zeros((30, 20, 6), np.uint8)
    mask[5:15, 5:10, 2:4] = 1
    aff = np.diag([0.5, 0.7, 2.0, 1.0])
    nib.save(nib.Nifti1Image(vol, aff), str(tmp_path / "vol.nii.gz"))
    nib.save(nib.Nifti1Image(mask, aff), str(tmp_path / "seg.nii.gz"))
    recs = read_nifti(tmp_path / "vol.nii.gz", tmp_path / "seg.nii.gz", axis=2)
    assert len(recs[0].frames) == 6
    np.testing.assert_allclose(recs[0].spacing, (0.5, 0.7), rtol=1e-6)
    ds = VideoSegmentationDataset(recs, T=6, size=None)
    item = ds[0]
    assert item["image"].shape == (6, 3, 30, 20)
    assert item["mask"][:, 0].sum(dim=(1, 2)).tolist() == [0, 0, 50, 50, 0, 0]
    assert (item["image"][1:, 0].mean(dim=(1, 2)) > item["image"][:-1, 0].mean(dim=(1, 2))).all()
    nib.save(nib.Nifti1Image(mask[:, :, :5], aff), str(tmp_path / "short.nii.gz"))
    with pytest.raises(ValueError, match="size mismatch"):
        read_nifti(tmp_path / "vol.nii.gz", tmp_path / "short.nii.gz")


# ------------------------------------------------------------------------------------------------
# bad input

def test_missing_files_are_named(tmp_path):
    path, _, _ = _write_trus_csv(tmp_path)
    (tmp_path / "masks" / "p2_3_sag.png").unlink()
    with pytest.raises(FileNotFoundError, match="p2_3_sag.png"):
        read_csv_index(path)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_csv_index(tmp_path / "nope.csv")


def test_unreadable_image_is_named(tmp_path):
    path, _, _ = _write_trus_csv(tmp_path)
    (tmp_path / "images" / "p1_1_axi.png").write_bytes(b"garbage")
    ds = VideoSegmentationDataset(read_csv_index(path), T=2, size=None)
    with pytest.raises(ValueError, match="p1_1_axi.png"):
        ds.validate()


def test_mask_image_size_mismatch(tmp_path):
    path, _, _ = _write_trus_csv(tmp_path)
    cv2.imwrite(str(tmp_path / "masks" / "p1_2_axi.png"), np.zeros((10, 10), np.uint8))
    recs = read_csv_index(path)
    with pytest.raises(ValueError, match="p1_2_axi.png.*size_policy"):
        VideoSegmentationDataset(recs, T=2, size=None).validate()
    with pytest.warns(DataWarning, match="resized"):
        VideoSegmentationDataset(recs, T=2, size=None, size_policy="resize").validate()


def test_frame_number_gaps_policies(tmp_path):
    path, _, _ = _write_trus_csv(tmp_path, patients=("p1",), n=7)
    rows = [r for r in csv.DictReader(open(path)) if not (r["patient_id"] == "p1_axi" and r["frame_num"] == "3")]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    recs = read_csv_index(path)
    with pytest.raises(ValueError, match="p1_axi.*missing frame numbers 3"):
        VideoSegmentationDataset(recs, T=2, gap_policy="error", size=None)
    with pytest.warns(DataWarning, match="split into 2 segments"):
        ds = VideoSegmentationDataset(recs, T=2, gap_policy="split", size=None)
    ids = sorted({v.video_id for v in ds.videos})
    assert ids == ["p1_axi@0", "p1_axi@1", "p1_sag"]
    assert all(ds[i]["frame_index"].tolist() != [2, 4] for i in range(len(ds)))
    with pytest.warns(DataWarning, match="consecutive"):
        ds = VideoSegmentationDataset(recs, T=2, gap_policy="ignore", size=None)
    assert any(ds[i]["frame_index"].tolist() == [2, 4] for i in range(len(ds)))


def test_empty_video_and_non_binary_masks(tmp_path):
    from dtc.data.index import VideoRecord

    with pytest.raises(ValueError, match="'ghost' .*no frames"):
        VideoSegmentationDataset([VideoRecord("ghost", [], "ghost")], T=1)
    with pytest.warns(DataWarning, match="ghost"):
        ds = VideoSegmentationDataset([VideoRecord("ghost", [], "ghost")], T=1, empty_policy="skip")
    assert ds.skipped == ["ghost"]
    path, _, masks = _write_trus_csv(tmp_path)
    soft = cv2.GaussianBlur(masks[1], (7, 7), 2)  # JPEG-like soft edges: many grey levels
    cv2.imwrite(str(tmp_path / "masks" / "p1_1_axi.png"), soft)
    recs = read_csv_index(path)
    with pytest.raises(ValueError, match="p1_1_axi.png is not binary"):
        VideoSegmentationDataset(recs, T=2, size=None, mask_policy="error").validate()
    ds = VideoSegmentationDataset(recs, T=2, size=None)
    with pytest.warns(DataWarning, match="p1_1_axi.png is not binary"):
        item = ds[0]
    np.testing.assert_array_equal(item["mask"][1, 0].numpy(), soft > 127)


# ------------------------------------------------------------------------------------------------
# simulator on disk and in memory

def test_synth_roundtrip_on_disk(tmp_path):
    cfg = SynthConfig(height=64, width=112, frames=5)
    summary = write_synth_dataset(tmp_path, 6, cfg, seed=3, progress=False)
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert names[0] == "000_0000_axi.png" and len(names) == 30
    splits = {}
    for name in ("train", "val", "test"):
        for r in read_csv_index(tmp_path / f"{name}.csv"):
            splits.setdefault(r.patient_id, set()).add(name)
    assert all(len(s) == 1 for s in splits.values())  # patient-level split
    assert set(summary["split"].values()) == {"train", "val", "test"}
    disk = VideoSegmentationDataset(read_csv_index(tmp_path / "all.csv"), T=3, size=None)
    mem = SyntheticTRUSDataset(num_videos=6, frames=5, size=(64, 112), T=3, seed=3)
    a, b = disk[0], mem[0]
    assert a["video_id"] == b["video_id"] == "000_axi"
    np.testing.assert_allclose(a["image"].numpy(), b["image"].numpy(), atol=0.5 / 255 + 1e-6)  # PNG quantisation
    assert torch.equal(a["mask"], b["mask"]) and torch.allclose(a["flow"], b["flow"])
    np.testing.assert_allclose(a["spacing"].numpy(), cfg.spacing)


def test_synthetic_dataset_split_gap_and_determinism():
    kw = dict(num_videos=8, frames=9, size=(64, 112), T=3, seed=5)
    train, val = SyntheticTRUSDataset(split="train", **kw), SyntheticTRUSDataset(split="val", **kw)
    tp = {v["patient_id"] for v in train.videos}
    assert tp and not tp & {v["patient_id"] for v in val.videos}
    x, y = SyntheticTRUSDataset(split="train", **kw)[4], train[4]
    assert torch.equal(x["image"], y["image"]) and torch.equal(x["flow"], y["flow"])
    assert (x["flow"][0] == 0).all() and x["mask_valid"].all()
    gap = SyntheticTRUSDataset(frame_gap=2, **kw)
    item = gap[0]
    assert item["frame_index"].tolist() == [0, 2, 4]
    # the gap-2 flow composes two one-frame flows
    one = SyntheticTRUSDataset(T=5, **{k: v for k, v in kw.items() if k != "T"})[0]
    from dtc.data import compose_backward_flows
    composed = compose_backward_flows(one["flow"][2].numpy(), one["flow"][1].numpy())
    assert np.abs(composed - item["flow"][1].numpy()).max() < 0.02


def test_augmentation_keeps_masks_and_flow_consistent():
    import importlib.util

    # the warp oracle lives beside this file (pytest runs with --import-mode=importlib)
    spec = importlib.util.spec_from_file_location("_synth_tests", Path(__file__).with_name("test_synth.py"))
    oracle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(oracle)
    backward_warp, iou = oracle.backward_warp, oracle.iou

    ds = SyntheticTRUSDataset(num_videos=1, frames=6, size=(96, 160), T=3, seed=2,
                              config=SynthConfig(motion=2.0))
    item = ds[2]
    aug = SequenceAugment(hflip=1.0, rotate=15, scale=0.1, shift=0.05, brightness=0.2, contrast=0.2,
                          photometric="per_frame", generator=torch.Generator().manual_seed(0))
    out = aug(item)
    assert out["image"].shape == item["image"].shape
    # the same geometry on every frame: masks are consistent under the transformed flow
    for t in (1, 2):
        warped = backward_warp(out["mask"][t - 1, 0].numpy().astype(np.float64), out["flow"][t].numpy()) > 0.5
        assert iou(warped, out["mask"][t, 0].numpy()) > 0.95
    # a pure horizontal flip mirrors the mask and negates dx
    flip = SequenceAugment(hflip=1.0, rotate=0, scale=0, shift=0, brightness=0, contrast=0)
    f = flip(item)
    assert torch.equal(f["mask"], item["mask"].flip(-1))
    torch.testing.assert_close(f["flow"][:, 0], -item["flow"][:, 0].flip(-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(f["flow"][:, 1], item["flow"][:, 1].flip(-1), atol=1e-4, rtol=0)
    # photometric per frame differs between frames, shared does not
    ph = dict(hflip=0, rotate=0, scale=0, shift=0, brightness=0.3, contrast=0.3)
    same = SequenceAugment(photometric="shared", generator=torch.Generator().manual_seed(1), **ph)(item)
    d_shared = (same["image"] - item["image"]).mean(dim=(1, 2, 3))
    per = SequenceAugment(photometric="per_frame", generator=torch.Generator().manual_seed(1), **ph)(item)
    d_per = (per["image"] - item["image"]).mean(dim=(1, 2, 3))
    assert d_shared.std() < 0.01 < d_per.std()


def test_cli_synth_and_preview(tmp_path, capsys):
    from dtc.cli.main import main

    rc = main(["data", "synth", str(tmp_path / "ds"), "--videos", "2", "--frames", "3", "--size", "64x112",
               "--views", "axial", "--seed", "1"])
    assert rc == 0
    recs = read_csv_index(tmp_path / "ds" / "all.csv", scheme="trus")
    assert [len(r.frames) for r in recs] == [3, 3] and {r.view for r in recs} == {"axi"}
    assert len(list((tmp_path / "ds" / "flows").iterdir())) == 4  # no flow for frame 0
    rc = main(["data", "preview", str(tmp_path / "p.png"), "--gif", str(tmp_path / "p.gif"), "--frames", "4",
               "--size", "64x112", "--columns", "3"])
    assert rc == 0
    strip = cv2.imread(str(tmp_path / "p.png"))
    assert strip.shape == (2 * 3 * 64, 3 * 112, 3)  # 2 views x (frames, masks, flow) rows, 3 columns
    assert (tmp_path / "p.gif").stat().st_size > 0
    assert main(["data", "synth", str(tmp_path / "x"), "--views", "coronal", "--frames", "2"]) == 2
    assert "views" in capsys.readouterr().err
