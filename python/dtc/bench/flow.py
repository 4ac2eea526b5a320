"""`python -m dtc.bench flow`: dtc's Farneback op against OpenCV's, side by side in one run.

For each size and batch it times dtc.flow.farneback on the chosen device (all pairs of the batch in
one call) and OpenCV's calcOpticalFlowFarneback + 3x3 medianBlur on one CPU thread, one pair at a
time (the authors' training loop), on the same simulator frames with the authors' parameters, and
reports pairs per second, the mean difference between the two flows and each one's end-point error
against the simulator's exact flow.

When dtc was built with OpenCV C++, a second table puts the batched C++ op over OpenCV
(dtc.flow.farneback_opencv, one call for the whole batch, parallel over pairs) beside the Python
loop over cv2 (OpenCVFlow's fallback: one pair at a time, cv2's default threads), at batch 16.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from dtc.bench._timing import add_threads_argument, apply_threads, describe_ratio, device_name, host_load, interleaved
from dtc.data.synth import SynthConfig, simulate_video
from dtc.flow import FARNEBACK_DEFAULTS, farneback

DEFAULT_SIZES = [(256, 448), (512, 512)]
DEFAULT_BATCHES = [1, 16]


def _video(H: int, W: int, count: int):
    return simulate_video(SynthConfig(height=H, width=W, frames=count), seed=3)


def _to_u8(frames: np.ndarray) -> np.ndarray:
    return np.round(frames * 255).astype(np.uint8)


def _frames(H: int, W: int, count: int) -> np.ndarray:
    return _to_u8(_video(H, W, count).frames)


def ground_truth_epe(video, device: str, params: dict) -> tuple[float, float]:
    """Mean end-point error (px, inside the field of view) of dtc's and OpenCV's flow against the
    simulator's exact flow, over the video's neighbouring pairs. The simulator gives the backward flow
    of (t-1, t), frame_t(p) = frame_{t-1}(p - F(p)), so the pair (prev = frame_t, next = frame_{t-1})
    has the exact flow -F at frame t's pixels."""
    frames = _to_u8(video.frames)
    prev = torch.from_numpy(frames[1:])[:, None].to(device)
    nxt = torch.from_numpy(frames[:-1])[:, None].to(device)
    ours = farneback(prev, nxt, **params).cpu().numpy()
    theirs = np.stack([_opencv_pair(frames[t], frames[t - 1], params).transpose(2, 0, 1)
                       for t in range(1, len(frames))])
    gt = -video.flows[1:]
    fov = np.broadcast_to(video.fov, gt[:, 0].shape)

    def epe(flow):
        return float(np.linalg.norm(flow - gt, axis=1)[fov].mean())

    return epe(ours), epe(theirs)


def _opencv_pair(a: np.ndarray, b: np.ndarray, p: dict) -> np.ndarray:
    import cv2

    flags = cv2.OPTFLOW_FARNEBACK_GAUSSIAN if p["gaussian_window"] else 0
    f = cv2.calcOpticalFlowFarneback(a, b, None, p["pyr_scale"], p["levels"], p["winsize"], p["iterations"],
                                     p["poly_n"], p["poly_sigma"], flags)
    if p["median"] in (3, 5):
        f = np.stack([cv2.medianBlur(np.ascontiguousarray(f[..., c]), p["median"]) for c in range(2)], -1)
    return f


def run(device: str, sizes, batches, repeat: int = 5):
    """dtc's Farnebäck on a batch of pairs against OpenCV looping over the same pairs on one thread,
    interleaved round by round (OpenCV's does not parallelise; one thread is its real speed)."""
    import cv2

    params = dict(FARNEBACK_DEFAULTS)
    rows = []
    for H, W in sizes:
        video = _video(H, W, max(batches) + 1)
        frames = _to_u8(video.frames)
        epe_ours, epe_opencv = ground_truth_epe(video, device, params)
        for B in batches:
            prev = torch.from_numpy(frames[:B])[:, None].to(device)
            nxt = torch.from_numpy(frames[1:B + 1])[:, None].to(device)

            def opencv_loop(B=B):
                return [_opencv_pair(frames[i], frames[i + 1], params) for i in range(B)]

            threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
            try:
                t = interleaved({"dtc": lambda: farneback(prev, nxt, **params), "opencv": opencv_loop}, device,
                                rounds=repeat)
                ref = np.stack([f.transpose(2, 0, 1) for f in opencv_loop()])
            finally:
                cv2.setNumThreads(threads)
            got = farneback(prev, nxt, **params).cpu().numpy()
            diff = float(np.linalg.norm(got - ref, axis=1).mean())
            rows.append(dict(size=(H, W), batch=B, ours=t["dtc"], opencv=t["opencv"], diff=diff, epe_ours=epe_ours,
                             epe_opencv=epe_opencv))
    return rows


def run_opencv_cpp(sizes, batch: int, repeat: int = 3):
    """The C++ OpenCV op on a batch against the Python cv2 loop over the same pairs."""
    from dtc.flow import farneback_opencv

    params = dict(FARNEBACK_DEFAULTS)
    rows = []
    for H, W in sizes:
        frames = _frames(H, W, batch + 1)
        prev = torch.from_numpy(frames[:batch])[:, None]
        nxt = torch.from_numpy(frames[1:batch + 1])[:, None]

        def python_loop():
            return np.stack([_opencv_pair(frames[i], frames[i + 1], params).transpose(2, 0, 1) for i in range(batch)])

        t = interleaved({"loop": python_loop, "cpp": lambda: farneback_opencv(prev, nxt, **params)}, "cpu",
                        rounds=repeat)
        loop_ms, cpp_ms = t["loop"].median, t["cpp"].median
        diff = float(np.linalg.norm(farneback_opencv(prev, nxt, **params).numpy() - python_loop(), axis=1).mean())
        rows.append(dict(size=(H, W), batch=batch, loop_ms=loop_ms, cpp_ms=cpp_ms, speedup=describe_ratio(t['loop'], t['cpp']), diff=diff))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtc.bench flow", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", action="append", help="H,W (repeatable); default 256,448 and 512,512")
    parser.add_argument("--batch", action="append", type=int, help="pairs per call (repeatable); default 1 and 16")
    parser.add_argument("--repeat", type=int, default=5)
    add_threads_argument(parser, "CPU threads for dtc (torch.set_num_threads); default torch's")
    parser.add_argument("--opencv-batch", type=int, default=16,
                        help="pairs per call in the OpenCV C++ op vs Python cv2 loop table (0: skip it)")
    args = parser.parse_args(argv)
    apply_threads(args)
    sizes = [tuple(int(v) for v in s.split(",")) for s in args.size] if args.size else DEFAULT_SIZES
    batches = args.batch or DEFAULT_BATCHES
    device = torch.device(args.device)
    print(f"Farneback benchmark: dtc on {device_name(device)} vs OpenCV {__import__('cv2').__version__} on 1 CPU "
          f"thread over the same pairs; authors' parameters {FARNEBACK_DEFAULTS}; {args.repeat} interleaved rounds, "
          f"median [quartiles]; host load {host_load()}; EPE against the simulator's exact flow inside the "
          f"field of view")
    print("| H×W | batch | dtc ms/call | OpenCV ms/call | dtc speed-up (paired) | dtc CPU ms | OpenCV CPU ms "
          "| dtc pairs/s | mean |dtc − OpenCV| px | EPE dtc px | EPE OpenCV px |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in run(str(device), sizes, batches, args.repeat):
        ours, cv = r["ours"], r["opencv"]
        print(f"| {r['size'][0]}×{r['size'][1]} | {r['batch']} | {ours.describe()} | {cv.describe()} | "
              f"{describe_ratio(cv, ours)} | {ours.cpu_median:.1f} | {cv.cpu_median:.1f} | "
              f"{r['batch'] / (ours.median * 1e-3):.1f} | {r['diff']:.1e} | {r['epe_ours']:.4f} | "
              f"{r['epe_opencv']:.4f} |", flush=True)
    if args.opencv_batch > 0:
        from dtc.flow import opencv_cpp_available

        if not opencv_cpp_available():
            print("\nOpenCV C++ op: not built (dtc.build_info()['opencv'] is False); table skipped")
            return 0
        import cv2

        print(f"\nOpenCV C++ op (dtc.flow.farneback_opencv, OpenCV {__import__('dtc').build_info()['opencv_version']}, "
              f"{torch.get_num_threads()} torch threads over pairs) vs Python loop over cv2 {cv2.__version__} "
              f"({cv2.getNumThreads()} cv2 threads), same pairs")
        print("| H×W | batch | Python cv2 loop ms | C++ op ms | C++ pairs/s | C++ / loop speed-up | mean |C++ − cv2| px |")
        print("|---|---|---|---|---|---|---|")
        for r in run_opencv_cpp(sizes, args.opencv_batch, args.repeat):
            print(f"| {r['size'][0]}×{r['size'][1]} | {r['batch']} | {r['loop_ms']:.1f} | {r['cpp_ms']:.1f} "
                  f"| {r['batch'] / (r['cpp_ms'] * 1e-3):.1f} | {r['speedup']} | {r['diff']:.1e} |")
    return 0
