"""Simulator throughput on one CPU core: frames/second for views and sizes, side by side.

    python -m dtc.bench synth [--frames 120] [--videos 2] [--sizes 256x448,128x224,512x896]

Counts scene construction (once per video) and every frame's render (image, mask, GT flow), with
OpenCV and torch limited to one thread. Also times the in-memory dataset's windows (T=3).
"""
from __future__ import annotations

import argparse
import platform
import time


def _measure(cfg, view: str, videos: int) -> tuple[float, float, float]:
    from dtc.data.synth import TRUSScene

    build = render = 0.0
    for seed in range(videos):
        t0 = time.perf_counter()
        scene = TRUSScene(cfg, seed, view)
        t1 = time.perf_counter()
        for t in range(cfg.frames):
            scene.render(t)
        t2 = time.perf_counter()
        build += t1 - t0
        render += t2 - t1
    n = videos * cfg.frames
    return n / (build + render), 1e3 * render / n, 1e3 * build / videos


def main(argv: list[str]) -> int:
    import cv2
    import torch

    from dtc.data.dataset import SyntheticTRUSDataset
    from dtc.data.synth import SynthConfig

    p = argparse.ArgumentParser(prog="python -m dtc.bench synth", description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--videos", type=int, default=2)
    p.add_argument("--sizes", default="256x448,128x224,512x896")
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    print(f"# one core (cv2/torch threads = 1); {platform.processor() or platform.machine()}; "
          f"{args.videos} videos x {args.frames} frames per row")
    print(f"| {'size':>8} | {'view':>8} | {'frames/s (incl. scene)':>22} | {'render ms/frame':>15} | {'scene build ms':>14} |")
    print(f"|{'-' * 10}|{'-' * 10}|{'-' * 24}|{'-' * 17}|{'-' * 16}|")
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.split("x"))
        cfg = SynthConfig(height=h, width=w, frames=args.frames)
        for view in ("axial", "sagittal"):
            fps, ms, build = _measure(cfg, view, args.videos)
            print(f"| {size:>8} | {view:>8} | {fps:>22.1f} | {ms:>15.2f} | {build:>14.1f} |")
    ds = SyntheticTRUSDataset(num_videos=args.videos, frames=args.frames, T=3, seed=0)
    ds[0]  # scene build
    n = min(len(ds), 60)
    t0 = time.perf_counter()
    for i in range(n):
        ds[i]
    dt = (time.perf_counter() - t0) / n
    print(f"\nSyntheticTRUSDataset 256x448, T=3: {1e3 * dt:.1f} ms per window ({n} windows, scenes cached)")
    return 0
