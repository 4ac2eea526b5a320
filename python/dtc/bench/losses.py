"""`python -m dtc.bench losses`: the fused DTC loss ops against the plain-PyTorch composition, side by side.

Times forward+backward of each term and of the full :class:`dtc.losses.DTCObjective` (both presets'
defaults: ``--preset``) with the fused ops (``implementation="fused"``) and with the composition of ATen
ops in :mod:`dtc.ops.reference` (``implementation="reference"``), on the same inputs in one run. The
memory floor is the bytes of every input read once and every gradient written once, over the measured
device copy bandwidth.
"""
from __future__ import annotations

import argparse

import torch

from dtc import losses
from dtc.bench._timing import (add_threads_argument, apply_threads, copy_bandwidth_gbs, describe_ratio, device_name,
                               host_load, interleaved)


def make_inputs(B, T, H, W, cl, cg, device, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(device)

    return dict(
        z=randn(B, T, 1, H, W, scale=2.0),
        loc=randn(B, T, cl, H, W),
        glob=randn(B, T, cg, H // 16, W // 16),
        zt=randn(B, T, 1, H, W, scale=2.0),
        y=torch.rand(B, T, 1, H, W, generator=g).to(device),
        images=torch.rand(B, T, 3, H, W, generator=g).to(device),
        flows=randn(B, T, 2, H, W, scale=3.0),
    )


def floor_bytes(d, terms) -> int:
    """Bytes each needed input is read once and each gradient written once (float32)."""
    n = lambda k: d[k].numel()  # noqa: E731
    need = {"seg": ["z", "y"], "kd": ["z", "zt"], "con": ["z", "images", "flows"], "proto": ["z", "loc", "glob", "flows"]}
    inputs = sorted({k for t in terms for k in need[t]})
    grads = [k for k in ("z", "loc", "glob") if k in inputs and not (k == "z" and terms == ("proto",))]
    return 4 * (sum(n(k) for k in inputs) + sum(n(k) for k in grads))


def run(device, B, T, H, W, cl, cg, preset, repeat):
    d = make_inputs(B, T, H, W, cl, cg, device)
    rows = []
    cases = [("seg (BCE-Dice)", ("seg",)), ("kd", ("kd",)), ("con", ("con",)), ("proto", ("proto",)),
             ("DTCObjective (all terms)", ("seg", "kd", "con", "proto"))]
    bandwidth = copy_bandwidth_gbs(device)
    for label, terms in cases:
        result = {"label": label}
        steps = {}
        for impl in ("reference", "fused"):
            objective = losses.DTCObjective(preset, implementation=impl, terms=terms, check_inputs=False)
            leaves = [d[k].clone().requires_grad_(True) for k in ("z", "loc", "glob")]

            def step(objective=objective, leaves=leaves):
                total, _ = objective(leaves[0], leaves[1], leaves[2], d["zt"], d["y"], d["images"], d["flows"])
                wanted = [x for x in leaves if x.requires_grad]
                return torch.autograd.grad(total, wanted, allow_unused=True)

            steps[impl] = step
            if device == "cuda":
                # Peak memory of each side alone: the interleaved timing below mixes their allocations.
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                step()
                torch.cuda.synchronize()
                result[f"{impl}_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            else:
                result[f"{impl}_mib"] = float("nan")
        result.update(interleaved(steps, device, warmup=1, rounds=repeat))
        result["floor_ms"] = floor_bytes(d, terms) / (bandwidth * 1e9) * 1e3
        rows.append(result)
    return rows, bandwidth


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtc.bench losses", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--B", type=int, default=8)
    parser.add_argument("--T", type=int, default=3)
    parser.add_argument("--H", type=int, default=256)
    parser.add_argument("--W", type=int, default=448)
    parser.add_argument("--local-channels", type=int, default=64)
    parser.add_argument("--global-channels", type=int, default=1024)
    parser.add_argument("--preset", default="dtc", choices=["dtc", "reference"])
    parser.add_argument("--repeat", type=int, default=5)
    add_threads_argument(parser, "CPU threads (torch.set_num_threads); 1 gives CPU-time figures that a busy "
                         "machine does not inflate; default torch's")
    args = parser.parse_args(argv)
    apply_threads(args)
    rows, bandwidth = run(args.device, args.B, args.T, args.H, args.W, args.local_channels, args.global_channels,
                          args.preset, args.repeat)
    print(f"device: {device_name(args.device)}; copy bandwidth {bandwidth:.1f} GB/s; preset {args.preset!r}; "
          f"B={args.B} T={args.T} {args.H}x{args.W}, local {args.local_channels} ch, global {args.global_channels} ch "
          f"at {args.H // 16}x{args.W // 16}; float32, forward+backward; {args.repeat} interleaved rounds, "
          f"median [quartiles]; host load {host_load()}")
    print("| term | composition ms | fused ms | speed-up (paired) | composition CPU ms | fused CPU ms | floor ms "
          "| fused / floor | composition MiB | fused MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref, fused = r["reference"], r["fused"]
        print(f"| {r['label']} | {ref.describe()} | {fused.describe()} | {describe_ratio(ref, fused)} | "
              f"{ref.cpu_median:.2f} | {fused.cpu_median:.2f} | {r['floor_ms']:.3f} | "
              f"{fused.median / r['floor_ms']:.1f}x | {r['reference_mib']:.0f} | {r['fused_mib']:.0f} |", flush=True)
    return 0
