"""`python -m dtc.bench infer`: inference latency and throughput of dtc's networks, side by side.

For each net (unet, unetpp, student at their default widths), device (CPU; CUDA when present), dtype
(float32, bfloat16) and memory layout (NCHW, channels-last) it reports the batch-1 latency (median of
repeated calls, no autograd) and the throughput at ``--batch`` frames per call; on CUDA also with the
forward captured in a CUDA graph and replayed.

Convention:
    Input ``(B, 3, H, W)`` with ``H×W = 256×448`` by default. bfloat16 means weights and input in bf16
    (a deployed net), not autocast. Latency is wall time per call, CUDA-synchronised; throughput =
    ``batch / latency(batch)``. Nets run in eval mode under ``torch.inference_mode``.
"""
from __future__ import annotations

import argparse

import torch

from dtc.bench._timing import add_threads_argument, apply_threads, device_name, host_load, median_ms

NETS = ["student", "unetpp", "unet"]


def _prepare(name: str, device: torch.device, dtype: torch.dtype, channels_last: bool):
    from dtc import models

    torch.manual_seed(0)
    net = models.create(name).eval().to(device=device, dtype=dtype)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    return net


def _input(batch, size, device, dtype, channels_last):
    x = torch.randn(batch, 3, *size, device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _graphed(net, x):
    """Capture net(x) in a CUDA graph; returns a replay function (the C++ forward is plain ATen ops)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm up cuDNN's algorithm choice outside the capture
            net(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        net(x)
    return graph.replay


def measure(name, device, dtype, channels_last, *, size, batch, cuda_graph, warmup, repeat):
    device = torch.device(device)
    # Built outside inference mode, as a deployed model is: parameters made inside it are inference
    # tensors, which the folded convolutions cannot cache (nets.cpp FoldedConvBn).
    net = _prepare(name, device, dtype, channels_last)
    with torch.inference_mode():
        row = {}
        for label, b in (("latency_ms", 1), ("batch_ms", batch)):
            if label == "batch_ms" and b == 1:
                row[label] = row["latency_ms"]
                continue
            x = _input(b, size, device, dtype, channels_last)
            fn = _graphed(net, x) if cuda_graph else (lambda x=x: net(x))
            row[label] = median_ms(fn, device, warmup=warmup, repeat=repeat, min_time_s=0.0 if device.type == "cpu" else 0.2)
        row["fps"] = batch * 1e3 / row["batch_ms"]
        row["params"] = sum(p.numel() for p in net.parameters())
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtc.bench infer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", default=None,
                        help=f"comma-separated subset of {NETS} (default: all on CUDA, the student on the CPU)")
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default=None, help="default float32,bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--layouts", default="nchw,channels_last")
    parser.add_argument("--size", default="256,448", help="H,W (multiples of 32)")
    parser.add_argument("--batch", type=int, default=None, help="throughput batch (default 16 on CUDA, 1 on CPU)")
    parser.add_argument("--repeat", type=int, default=None, help="timed calls (default 20 CUDA, 5 CPU)")
    add_threads_argument(parser, "CPU threads (default: torch's)")
    parser.add_argument("--no-cuda-graphs", action="store_true")
    args = parser.parse_args(argv)
    # The full grid (three nets × two dtypes × two layouts) is sized for a GPU; on a CPU-only machine the
    # defaults time the deployable student in float32 so the run ends in about a minute.
    cpu_only = all(not d.strip().startswith("cuda") for d in args.devices.split(","))
    chosen = []
    if args.nets is None:
        args.nets = "student" if cpu_only else ",".join(NETS)
        chosen.append(f"--nets {args.nets}")
    if args.dtypes is None:
        args.dtypes = "float32" if cpu_only else "float32,bfloat16"
        chosen.append(f"--dtypes {args.dtypes}")
    if chosen and cpu_only:
        print(f"defaults for a CPU-only run: {' '.join(chosen)} (set them to override)", flush=True)

    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    unknown = [n for n in nets if n not in NETS]
    if unknown:
        parser.error(f"--nets: unknown {unknown}; expected a subset of {NETS}")
    size = tuple(int(v) for v in args.size.split(","))
    if len(size) != 2 or any(s <= 0 or s % 32 for s in size):
        parser.error(f"--size must be H,W with positive multiples of 32, got {args.size!r}")
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--devices includes cuda but no CUDA device is visible")
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    wanted_dtypes = [d.strip() for d in args.dtypes.split(",")]
    if any(d not in dtypes for d in wanted_dtypes):
        parser.error(f"--dtypes: expected a subset of {list(dtypes)}, got {args.dtypes!r}")
    layouts = [s.strip() for s in args.layouts.split(",")]
    if any(s not in ("nchw", "channels_last") for s in layouts):
        parser.error(f"--layouts: expected a subset of ['nchw', 'channels_last'], got {args.layouts!r}")
    apply_threads(args)

    print(f"inference benchmark, input {size[0]}x{size[1]}, eval mode, inference_mode; host load {host_load()}")
    for device in devices:
        print(f"device: {device_name(device)}")
    print("| net | params | device | dtype | layout | CUDA graph | batch-1 latency (ms) | batch-1 FPS | batch | throughput (frames/s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for device in devices:
        is_cuda = device.startswith("cuda")
        batch = args.batch or (16 if is_cuda else 1)
        repeat = args.repeat or (20 if is_cuda else 5)
        warmup = 3 if is_cuda else 1
        for name in nets:
            for dtype_name in wanted_dtypes:
                for layout in layouts:
                    graph_modes = [False, True] if is_cuda and not args.no_cuda_graphs else [False]
                    for cuda_graph in graph_modes:
                        row = measure(name, device, dtypes[dtype_name], layout == "channels_last", size=size,
                                      batch=batch, cuda_graph=cuda_graph, warmup=warmup, repeat=repeat)
                        print(f"| {name} | {row['params'] / 1e6:.2f} M | {device} | {dtype_name} | {layout} | "
                              f"{'yes' if cuda_graph else 'no'} | {row['latency_ms']:.2f} | "
                              f"{1e3 / row['latency_ms']:.1f} | {batch} | {row['fps']:.1f} |", flush=True)
    return 0
