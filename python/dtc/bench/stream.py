"""`dtc bench stream`: end-to-end segmentation of a video (decode + inference + overlay + encode), side by
side in one run: the C++ runtime (dtc-stream), `dtc infer`, the exported torch.export program in a
Python loop, and dtc.Segmenter.push.

Each contender reads the same simulated clip (MJPG AVI) and writes an overlay video. Reported per
contender: frames per second over the whole clip, the per-frame end-to-end latency (frame decoded ->
its overlay written) at p50/p95/p99 for the streaming ones (`dtc infer` batches, so it has no per-frame
latency), the median inference time and the fraction of the frame time it takes. Contenders run in
rotating order each round; the host load is printed before and after, since this machine is shared.

dtc-stream runs flat out (its FPS) and fed at the clip's frame rate as a scanner would feed it
(`--realtime`: its latency), the latter three ways: adapting its thread count (the default), with fixed
threads, and skipping frames that waited (`--drop-late`). `--load N` keeps N CPU-bound processes running
throughout, for the latency distribution of a machine that is busy with something else; `--only` picks
contenders.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dtc.bench._timing import host_load

CLIP_FPS = 30


def _percentiles(values):
    if not values:
        return (math.nan,) * 3
    return tuple(float(np.percentile(values, q)) for q in (50, 95, 99))


def _make_case(root: Path, size, frames: int, base: int):
    import cv2

    from dtc.data import SyntheticTRUSDataset
    from dtc.deploy.export import export
    from dtc.engine.checkpoint import FORMAT, VERSION
    from dtc.io import atomic_torch_save
    from dtc.models import create

    h, w = size
    torch.manual_seed(0)
    model = create("student", base=base).eval()
    ckpt = root / "student.pt"
    atomic_torch_save({"format": FORMAT, "version": VERSION, "stage": "student", "epoch": 0, "best": math.nan,
                       "model": {"name": "student", "kwargs": {"base": base}, "state_dict": model.state_dict()},
                       "config": {"data": {"height": h, "width": w}}}, ckpt)
    export(ckpt, root / "export", onnx=None)  # ONNX too when the exporter and onnxruntime are installed
    data = SyntheticTRUSDataset(num_videos=1, frames=frames, size=(h, w), T=1, split="all")
    # The input clip, not an output: motion JPEG decodes cheaply and identically in OpenCV's Python and
    # C++ builds, so every contender starts from the same decode cost.
    clip = root / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), CLIP_FPS, (w, h), isColor=False)
    for i in range(frames):
        writer.write(np.round(data[i]["image"][0, 0].numpy() * 255).astype(np.uint8))
    writer.release()
    return ckpt, root / "export", clip


def _python_stream(clip: Path, out: Path, infer_fn):
    """Decode -> infer_fn(uint8 grey frame) -> prob -> overlay -> encode, one frame at a time."""
    import cv2

    from dtc.engine.infer import overlay_frame
    from dtc.io import VideoWriter

    cap = cv2.VideoCapture(str(clip))
    writer = VideoWriter(out, fps=30)
    latencies, inference = [], []
    start = time.perf_counter()
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        t0 = time.perf_counter()
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        prob = infer_fn(grey)
        t1 = time.perf_counter()
        over = overlay_frame(grey.astype(np.float32) / 255, prob)
        writer.write(over)
        latencies.append((time.perf_counter() - t0) * 1e3)
        inference.append((t1 - t0) * 1e3)
        n += 1
    writer.close()
    wall = time.perf_counter() - start
    return {"frames": n, "fps": n / wall, "latency": _percentiles(latencies), "inference_ms": float(np.median(inference)),
            "inference_fraction": sum(inference) / 1e3 / wall}


# `--only` names -> the contenders' row names.
CONTENDERS = {"runtime": "C++ runtime (dtc-stream)", "live": f"C++ runtime, live {CLIP_FPS} FPS feed",
              "live-fixed": f"C++ runtime, live {CLIP_FPS} FPS feed, fixed threads",
              "live-drop": f"C++ runtime, live {CLIP_FPS} FPS feed, --drop-late", "pt2": "exported .pt2 (Python loop)",
              "segmenter": "Segmenter.push (Python loop)", "infer": "dtc infer (Python, batched)",
              "onnx": "ONNX Runtime (Python loop)"}


def run_case(size, *, frames: int, threads: int, rounds: int, base: int, log, only=None) -> list[dict]:
    from dtc.cli.stream import find_dtc_stream
    from dtc.deploy import Segmenter
    from dtc.deploy.export import exported_program_module
    from dtc.engine.infer import infer

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="dtc-bench-stream-") as tmp:
        root = Path(tmp)
        ckpt, exp, clip = _make_case(root, size, frames, base)
        seg = Segmenter.from_checkpoint(ckpt, device="cpu")
        program = exported_program_module(exp / "model.pt2")
        try:
            exe = str(find_dtc_stream())
        except FileNotFoundError as exc:
            exe = None
            log(f"  C++ runtime skipped: {exc}")

        def runtime(*extra):
            out = root / "rt"
            t = time.perf_counter()
            r = subprocess.run([exe, str(exp / "model.dtc"), str(clip), "--out", str(out), "--threads", str(threads),
                                "--quiet", *extra], capture_output=True, text=True)
            wall = time.perf_counter() - t
            if r.returncode != 0:
                raise RuntimeError(f"dtc-stream failed: {r.stderr.strip()}")
            rep = json.loads((out / "report.json").read_text())
            lat = rep["latency_ms"]
            used = " ".join(f"{t}:{n}" for t, n in sorted(rep["frames_per_thread_count"].items(), reverse=True))
            if rep["skipped_frames"]:
                used += f", {rep['skipped_frames']} skipped"
            return {"frames": rep["frames"], "fps": rep["fps"], "latency": (lat["p50"], lat["p95"], lat["p99"]),
                    "inference_ms": rep["inference_ms"]["p50"], "inference_fraction": rep["inference_fraction"],
                    "process_fps": rep["frames"] / wall, "threads_used": used}

        def dtc_infer():
            t = time.perf_counter()
            summary = infer(ckpt, clip, out=root / "inf", overlay=True, device="cpu", batch_size=8)
            wall = time.perf_counter() - t
            return {"frames": summary["frames"], "fps": summary["frames"] / wall, "latency": (math.nan,) * 3,
                    "inference_ms": math.nan, "inference_fraction": math.nan}

        def pt2():
            def fn(grey):
                x = torch.from_numpy(grey).to(torch.float32).div(255)[None, None].expand(-1, 3, -1, -1)
                with torch.no_grad():
                    return program(x.contiguous(memory_format=torch.channels_last))[0, 0].numpy()
            return _python_stream(clip, root / "pt2.mp4", fn)

        def segmenter():
            return _python_stream(clip, root / "seg.mp4", lambda grey: seg.push(grey).prob)

        def onnx_runtime():
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(str(exp / "model.onnx"), options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name

            def fn(grey):
                x = np.ascontiguousarray(np.broadcast_to((grey.astype(np.float32) / 255)[None, None], (1, 3, *grey.shape)))
                return session.run(None, {name: x})[0][0, 0]
            return _python_stream(clip, root / "onnx.mp4", fn)

        # Flat out, dtc-stream decodes ahead of the network, so its latency includes the frames waiting in
        # its queues; fed at the clip's 30 FPS (--realtime), as a scanner feeds it, the latency is a live
        # feed's. The Python loops do one frame at a time, so theirs never include a backlog. The runtime
        # adapts its thread count to the machine's load; the fixed-threads row shows what that saves, and
        # the --drop-late row what skipping frames that waited saves when the network cannot keep up.
        contenders = {CONTENDERS["runtime"]: runtime, CONTENDERS["live"]: lambda: runtime("--realtime"),
                      CONTENDERS["live-fixed"]: lambda: runtime("--realtime", "--fixed-threads"),
                      CONTENDERS["live-drop"]: lambda: runtime("--realtime", "--drop-late"),
                      CONTENDERS["pt2"]: pt2, CONTENDERS["segmenter"]: segmenter, CONTENDERS["infer"]: dtc_infer}
        if exe is None:
            contenders = {k: v for k, v in contenders.items() if not k.startswith("C++")}
        if (exp / "model.onnx").is_file():
            contenders[CONTENDERS["onnx"]] = onnx_runtime
        else:
            log("  ONNX Runtime skipped: install onnx, onnxscript and onnxruntime (the dtc[onnx] extra)")
        if only:
            contenders = {k: v for k, v in contenders.items() if k in {CONTENDERS[o] for o in only}}
        names = list(contenders)
        results = {k: [] for k in names}
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                results[name].append(contenders[name]())
        rows = []
        for name in names:
            runs = results[name]
            best = sorted(runs, key=lambda d: d["fps"])[len(runs) // 2]  # the median round by FPS
            rows.append({"size": f"{size[0]}x{size[1]}", "contender": name, **best})
        rt, onnx = results.get(CONTENDERS["runtime"]), results.get(CONTENDERS["onnx"])
        if rt and onnx:
            # Paired by round (the two ran minutes apart at most), since this machine's speed drifts.
            ratios = sorted(o["inference_ms"] / r["inference_ms"] for r, o in zip(rt, onnx))
            log(f"  {size[0]}x{size[1]}: inference ONNX Runtime / C++ runtime per round: median "
                f"{ratios[len(ratios) // 2]:.2f}× [{ratios[0]:.2f}–{ratios[-1]:.2f}] over {len(ratios)} round(s) "
                "(> 1: the runtime is faster)")
        return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="dtc bench stream", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["256x448", "128x224"], help="HxW of the clip")
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for every contender")
    p.add_argument("--rounds", type=int, default=1, help="rounds of all contenders (rotating order); the median is shown")
    p.add_argument("--base", type=int, default=16, help="the student's width (16: the light student)")
    p.add_argument("--only", nargs="+", choices=sorted(CONTENDERS), metavar="NAME",
                   help=f"run only these contenders ({', '.join(CONTENDERS)})")
    p.add_argument("--load", type=int, default=0, metavar="N",
                   help="N busy-looping processes run alongside every contender (a machine under load)")
    args = p.parse_args(argv)
    if args.load < 0:
        p.error(f"--load must be >= 0, got {args.load}")
    sizes = []
    for s in args.sizes:
        try:
            h, w = (int(v) for v in s.lower().split("x"))
        except ValueError:
            p.error(f"--sizes: expected HxW, got {s!r}")
        sizes.append((h, w))
    print(f"dtc bench stream: light student (base {args.base}), {args.frames} frames, {args.threads} thread(s), "
          f"{args.rounds} round(s), {os.cpu_count()} CPU(s), {args.load} busy process(es); host load {host_load()} "
          f"at start", flush=True)
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        rows = []
        for size in sizes:
            rows += run_case(size, frames=args.frames, threads=args.threads, rounds=args.rounds, base=args.base,
                             log=lambda m: print(m, flush=True), only=args.only)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    print()
    print("| size | contender | FPS | vs runtime | latency p50 / p95 / p99 (ms) | inference (ms, median) | inference share "
          "| frames per thread count |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        ref = next((r["fps"] for r in rows if r["size"] == row["size"] and r["contender"].startswith("C++")), math.nan)
        lat = " / ".join("—" if math.isnan(v) else f"{v:.1f}" for v in row["latency"])
        inf = "—" if math.isnan(row["inference_ms"]) else f"{row['inference_ms']:.1f}"
        share = "—" if math.isnan(row["inference_fraction"]) else f"{100 * row['inference_fraction']:.0f}%"
        print(f"| {row['size']} | {row['contender']} | {row['fps']:.1f} | {row['fps'] / ref:.2f}× | {lat} | {inf} | {share} "
              f"| {row.get('threads_used', '—')} |")
    print(f"\nhost load {host_load()} at the end")
    return 0
