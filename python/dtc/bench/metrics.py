"""Per-frame cost of the SUN-SEG metric suite: C++ kernels, the torch backend and the numpy reference.

    python -m dtc.bench metrics [--height 256 --width 448 --repeat 30 --torch-batch 8]

CPU paths run on one thread. The torch backend is timed on the CPU and, when one is visible, on CUDA,
each for one frame and per frame of a batch (its intended use: frames already on the device).

Wall time on a shared machine moves with its load; instruction counts do not. For those, run only the
C++ kernel N times under callgrind, counting inside it only, and take the difference of two N:

    valgrind --tool=callgrind --toggle-collect='*sunseg_frame*' \
        python -m dtc.bench metrics --kernel-calls 11   # minus the same with --kernel-calls 1
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _median_ms(fn, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _frame(h: int, w: int, seed: int = 0):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(h, w)), 8)
    gt = field > np.quantile(field, 0.8)
    pred = np.clip(ndimage.gaussian_filter(gt.astype(float), 3) + rng.normal(0, 0.15, (h, w)), 0, 1)
    return pred, gt


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtc.bench metrics", description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=448)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--torch-batch", type=int, default=8, help="frames per batched torch-backend call")
    parser.add_argument("--kernel-calls", type=int, default=0,
                        help="only call the C++ kernel this many times, untimed (for callgrind instruction counts)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.height < 2 or args.width < 2 or args.kernel_calls < 0 or args.torch_batch < 1:
        parser.error("--repeat and --torch-batch must be >= 1, --height/--width >= 2, --kernel-calls >= 0")

    import torch

    torch.set_num_threads(1)  # the target is one CPU core
    from dtc.metrics import reference as ref
    from dtc.metrics.functional import _cpp_module, cpp_available, sunseg_frame

    pred, gt = _frame(args.height, args.width)
    if args.kernel_calls:
        if not cpp_available():
            print("dtc._C is not built (make dev): no C++ kernel to call")
            return 1
        core = _cpp_module()
        tp, tg = torch.from_numpy(pred), torch.from_numpy(gt.astype(np.uint8))
        for _ in range(args.kernel_calls):
            core.sunseg_frame(tp, tg)
        print(f"called dtc._C.sunseg_frame {args.kernel_calls} times on a {args.height}x{args.width} frame")
        return 0
    rows = []
    parts = [
        ("S-measure", lambda: ref.s_measure(pred, gt)),
        ("weighted F (EDT + Gaussian)", lambda: ref.weighted_f_measure(pred, gt)),
        ("E/F curves + adaptive", lambda: (ref.e_measure_curve(pred, gt), ref.f_measure_curve(pred, gt),
                                           ref.adaptive_e_measure(pred, gt), ref.adaptive_f_measure(pred, gt))),
        ("Dice/Sen/Spe/IoU curves", lambda: ref.medical_curves(pred, gt)),
    ]
    for name, fn in parts:
        rows.append((f"numpy: {name}", _median_ms(fn, args.repeat)))
    rows.append(("numpy: whole suite (sunseg_frame)", _median_ms(lambda: sunseg_frame(pred, gt, backend="numpy"), args.repeat)))
    if cpp_available():
        core = _cpp_module()
        tp, tg = torch.from_numpy(pred), torch.from_numpy(gt.astype(np.uint8))
        rows.append(("C++: kernel only (dtc._C.sunseg_frame)", _median_ms(lambda: core.sunseg_frame(tp, tg), args.repeat)))
        rows.append(("C++: whole suite (sunseg_frame, with checks)", _median_ms(lambda: sunseg_frame(pred, gt, backend="cpp"), args.repeat)))
    else:
        rows.append(("C++: not built (make dev)", float("nan")))
    cpp_row = len(rows) - 1
    rows += _torch_rows(pred, gt, args.torch_batch, args.repeat)

    print(f"SUN-SEG suite per {args.height}x{args.width} frame, one thread, median of {args.repeat}")
    width = max(len(r[0]) for r in rows)
    print(f"{'path':<{width}}  {'ms/frame':>9}")
    for name, ms in rows:
        print(f"{name:<{width}}  {ms:9.2f}")
    numpy_ms = rows[len(parts)][1]
    if cpp_available():
        print(f"speed-up of the C++ suite over numpy: {numpy_ms / rows[cpp_row][1]:.1f}x "
              f"(target: whole suite < 5 ms per frame)")
    return 0


def _torch_rows(pred: np.ndarray, gt: np.ndarray, batch: int, repeat: int) -> list[tuple[str, float]]:
    """ms per frame of the torch backend, one frame and a batch, on the CPU and on CUDA if visible."""
    import torch

    from dtc.metrics.torch_backend import sunseg_frames

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        label = "CPU" if device == "cpu" else "CUDA"
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        p1 = torch.from_numpy(pred)[None].to(device)
        g1 = torch.from_numpy(gt)[None].to(device)
        pb, gb = p1.expand(batch, -1, -1).contiguous(), g1.expand(batch, -1, -1).contiguous()

        def one():
            sunseg_frames(p1, g1, check=False)
            sync()

        def many():
            sunseg_frames(pb, gb, check=False)
            sync()

        rows.append((f"torch {label}: one frame (sunseg_frames, unchecked)", _median_ms(one, repeat)))
        rows.append((f"torch {label}: per frame of a batch of {batch}", _median_ms(many, max(3, repeat // batch)) / batch))
    if len(devices) == 1:
        rows.append(("torch CUDA: no GPU visible", float("nan")))
    return rows
