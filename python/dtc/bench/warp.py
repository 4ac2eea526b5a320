"""`python -m dtc.bench warp`: the fused warp op against its grid_sample composition, side by side.

For each size it times forward and forward+backward (gradients to x and flow) of both, and reports
the achieved bandwidth of ours against the device's copy bandwidth (the memory floor).
"""
from __future__ import annotations

import argparse

import torch

from dtc import ops
from dtc.bench._timing import (add_threads_argument, apply_threads, copy_bandwidth_gbs, describe_ratio, device_name,
                               host_load, interleaved)
from dtc.ops import reference

DEFAULT_SIZES = {
    # (B, C, H, W): the target shapes on CUDA; smaller batches keep a CPU run short.
    "cuda": [(16, 1, 256, 448), (16, 16, 256, 448), (16, 64, 256, 448)],
    "cpu": [(4, 1, 256, 448), (4, 16, 256, 448), (2, 64, 256, 448)],
}


def _bytes(B, C, H, W, itemsize, backward: bool) -> int:
    x, flow = B * C * H * W, B * 2 * H * W
    fwd = x + flow + x  # read x and flow, write out
    if not backward:
        return fwd * itemsize
    # + read grad_out, x, flow; write grad_x (after zero-fill) and grad_flow
    return (fwd + x + x + flow + 2 * x + flow) * itemsize


def run(device: str, sizes, dtype=torch.float32, repeat: int = 10):
    rows = []
    for B, C, H, W in sizes:
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(B, C, H, W, generator=g).to(device=device, dtype=dtype)
        flow = (4 * torch.randn(B, 2, H, W, generator=g)).to(device=device, dtype=dtype)
        xg, fg = x.clone().requires_grad_(), flow.clone().requires_grad_()
        grad_out = torch.randn_like(x)

        def fwd(impl):
            return lambda: impl(x, flow)

        def fwd_bwd(impl):
            return lambda: torch.autograd.grad(impl(xg, fg), (xg, fg), grad_out)

        result = {"shape": (B, C, H, W)}
        for label, make in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
            t = interleaved({"dtc": make(ops.warp), "composition": make(reference.warp)}, device, warmup=2,
                            rounds=repeat)
            nbytes = _bytes(B, C, H, W, x.element_size(), backward=label != "fwd")
            result[label] = (t["dtc"], t["composition"], nbytes / (t["dtc"].median * 1e-3) / 1e9)
        rows.append(result)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtc.bench warp", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    parser.add_argument("--size", action="append", help="B,C,H,W (repeatable); default: the standard set")
    parser.add_argument("--repeat", type=int, default=10)
    add_threads_argument(parser, "CPU threads (torch.set_num_threads); 1 gives CPU-time figures that a busy "
                         "machine does not inflate; default torch's")
    args = parser.parse_args(argv)
    apply_threads(args)
    device = torch.device(args.device)
    sizes = [tuple(int(v) for v in s.split(",")) for s in args.size] if args.size else DEFAULT_SIZES[device.type]
    dtype = getattr(torch, args.dtype)
    bandwidth = copy_bandwidth_gbs(device)
    print(f"warp benchmark on {device_name(device)}, {args.dtype}; copy bandwidth {bandwidth:.1f} GB/s; "
          f"host load {host_load()}; {args.repeat} interleaved rounds, median [quartiles]")
    print("| B,C,H,W | pass | dtc ms | grid_sample composition ms | speed-up (paired) | dtc CPU ms | composition CPU ms "
          "| dtc GB/s | % of copy bw |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in run(str(device), sizes, dtype, args.repeat):
        for label in ("fwd", "fwd+bwd"):
            ours, comp, gbs = row[label]
            print(f"| {','.join(map(str, row['shape']))} | {label} | {ours.describe()} | {comp.describe()} | "
                  f"{describe_ratio(comp, ours)} | {ours.cpu_median:.2f} | {comp.cpu_median:.2f} | {gbs:.1f} | "
                  f"{100 * gbs / bandwidth:.0f}% |", flush=True)
    return 0
