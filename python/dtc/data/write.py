"""Write a simulated dataset to disk in the TRUS-V layout (docs/method.md §7), atomically per file.

Layout under OUT:
    images/{id}_{frame}_{view}.png   8-bit grey frames
    masks/{id}_{frame}_{view}.png    8-bit {0, 255}
    flows/{id}_{frame}_{view}.npy    float32 (2, H, W) backward flow from frame-1 (absent for frame 0)
    all.csv, train.csv, val.csv, test.csv   patient_id (video id), frame_num, image_paths, mask_paths,
                                             flow_paths, split, view, spacing_mm (paths relative to OUT)
    meta.json                        the simulator config, seed and split
`id` is the patient number (3 digits), `view` is axi|sag; a video is one patient x one view and the
split is by patient. Read it back with `dtc.data.read_csv_index(OUT/"train.csv")`.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from dtc.data.dataset import patient_split, synthetic_video_table
from dtc.io import atomic_write_bytes, atomic_write_npy, atomic_write_png


def write_synth_dataset(out: str | os.PathLike, num_videos: int, config, seed: int = 0,
                        split_fractions=(0.7, 0.15, 0.15), write_flows: bool = True, progress: bool = True) -> dict:
    """Simulate `num_videos` videos with `config` and write them under `out`. Returns a summary."""
    from dtc.progress import progress_bar

    from dtc.data.synth import simulate_video

    if isinstance(num_videos, bool) or not isinstance(num_videos, int) or num_videos < 1:
        raise ValueError(f"num_videos (dtc data synth --videos) must be an integer >= 1, got {num_videos!r}")
    out = Path(out)
    for sub in ("images", "masks") + (("flows",) if write_flows else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    table = synthetic_video_table(num_videos, config.views, seed)
    assign = patient_split(sorted({v["patient_id"] for v in table}), seed, split_fractions)
    rows = []
    spacing = config.spacing[0]
    for v in progress_bar(table, desc="simulating videos", unit="video", enabled=progress):
        video = simulate_video(config, v["seed"], v["view"])
        view = v["view"][:3]
        for t in range(config.frames):
            name = f"{v['patient_id']}_{t:04d}_{view}"
            atomic_write_png(out / "images" / f"{name}.png", np.round(video.frames[t] * 255).astype(np.uint8))
            atomic_write_png(out / "masks" / f"{name}.png", video.masks[t] * np.uint8(255))
            flow_rel = ""
            if write_flows and t > 0:
                flow_rel = f"flows/{name}.npy"
                atomic_write_npy(out / flow_rel, video.flows[t])
            rows.append({"patient_id": v["video_id"], "frame_num": t, "image_paths": f"images/{name}.png",
                         "mask_paths": f"masks/{name}.png", "flow_paths": flow_rel,
                         "split": assign[v["patient_id"]], "view": view, "spacing_mm": f"{spacing:.6f}"})
    fields = ["patient_id", "frame_num", "image_paths", "mask_paths", "flow_paths", "split", "view", "spacing_mm"]
    for name, keep in (("all", None), ("train", "train"), ("val", "val"), ("test", "test")):
        sio = io.StringIO()
        w = csv.DictWriter(sio, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(r for r in rows if keep is None or r["split"] == keep)
        atomic_write_bytes(out / f"{name}.csv", sio.getvalue().encode())
    summary = {"config": config.to_dict(), "seed": seed, "videos": num_videos,
               "split": {p: s for p, s in sorted(assign.items())}, "split_fractions": list(split_fractions),
               "frames_written": len(rows)}
    atomic_write_bytes(out / "meta.json", json.dumps(summary, indent=2).encode())
    return summary
