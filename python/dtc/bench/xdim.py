"""`python -m dtc.bench xdim` (`dtc bench xdim`): XDim-KD's compute, each comparison in one run.

1. The 3-D smoother: Eigen's Jacobi-preconditioned CG (`torch.ops.dtc.smooth3d_pcg`) against the original
   code's 60 Adam steps, on time and on agreement (max |difference|, each one's energy, PCG iterations).
2. `torch.ops.dtc.corr_distill_loss` (fused, forward + backward) against its plain-PyTorch composition
   (`dtc.ops.reference.corr_distill_loss`, which materialises the M n^2 correlations).
3. 3-D inference time per volume: StudentKD in overlapping 16-slice chunks (`dtc.volume.pipeline.predict_volume`).

Sides of a comparison are timed in interleaved rounds (dtc.bench._timing); the host load is printed.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from dtc.bench._timing import describe_ratio, device_name, host_load, interleaved


def _smoother_inputs(D, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    z, y, x = torch.meshgrid(torch.linspace(-1, 1, D), torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    blob = ((z / 0.7) ** 2 + (y / 0.6) ** 2 + (x / 0.5) ** 2 < 1).double()
    noise = F.avg_pool3d(torch.randn(1, 1, D, H, W, generator=g, dtype=torch.float64), 3, 1, 1)[0, 0]
    target = (blob + 0.3 * noise).clamp(0, 1)
    sigma = 0.5 * torch.rand(D, H, W, generator=g, dtype=torch.float64)
    return target, sigma


def bench_smoother(D, H, W, rounds):
    from dtc.volume.pseudo import smooth3d, smoothing_energy

    target, sigma = _smoother_inputs(D, H, W)
    weight = (1 - sigma).clamp(0, 1)
    t = interleaved({"pcg": lambda: smooth3d(target, sigma, solver="pcg"),
                     "adam": lambda: smooth3d(target, sigma, solver="adam")}, "cpu", rounds=rounds)
    p_pcg, info = smooth3d(target, sigma, solver="pcg", return_info=True)
    p_adam = smooth3d(target, sigma, solver="adam")
    e = {k: float(smoothing_energy(v, target, weight)) for k, v in (("pcg", p_pcg), ("adam", p_adam))}
    print(f"\n### 3-D smoother, {D}x{H}x{W} voxels (float64, CPU)\n")
    print("| solver | median ms [IQR] | energy | PCG iterations |\n|---|---|---|---|")
    print(f"| Eigen PCG (Jacobi) | {t['pcg'].describe()} | {e['pcg']:.6g} | {info['iterations'][0]} |")
    print(f"| Adam, 60 steps | {t['adam'].describe()} | {e['adam']:.6g} | - |")
    print(f"\nAdam / PCG time: {describe_ratio(t['adam'], t['pcg'])}; max |PCG - Adam| = "
          f"{float((p_pcg - p_adam).abs().max()):.4f}")


def bench_corr(M, n, cs, ct, device, rounds):
    from dtc import ops
    from dtc.ops import reference

    g = torch.Generator().manual_seed(0)
    s = F.normalize(torch.randn(M, n, cs, generator=g), dim=-1).to(device).requires_grad_(True)
    t = F.normalize(torch.randn(M, n, ct, generator=g), dim=-1).to(device)
    pair = torch.randperm(M, generator=g).to(device)

    def step(fn):
        s.grad = None
        fn(s, t, pair).backward()

    timing = interleaved({"fused": lambda: step(ops.corr_distill_loss), "composition": lambda: step(reference.corr_distill_loss)},
                         device, rounds=rounds)
    print(f"\n### corr_distill_loss forward + backward, M={M} slices, n={n} points, C_s={cs}, C_t={ct} "
          f"({device_name(device)})\n")
    print("| implementation | median ms [IQR] |\n|---|---|")
    for k in ("fused", "composition"):
        print(f"| {k} | {timing[k].describe()} |")
    print(f"\ncomposition / fused: {describe_ratio(timing['composition'], timing['fused'])}")


def bench_inference(D, H, W, size, base, device, rounds):
    from dtc.models import StudentKD
    from dtc.volume.pipeline import predict_volume

    torch.manual_seed(0)
    student = StudentKD(base=base, kd_channels=8).to(device).eval()
    volume = torch.rand(D, H, W)
    timing = interleaved({f"overlap {o}": (lambda o=o: predict_volume(student, volume, size=size, overlap=o))
                          for o in (0, 8)}, "cpu", rounds=rounds)
    print(f"\n### 3-D inference per volume: {D} slices of {H}x{W}, network input {size}², StudentKD base {base} "
          f"({device_name(device)})\n")
    print("| chunks | median ms per volume [IQR] |\n|---|---|")
    for k, v in timing.items():
        print(f"| 16 slices, {k} | {v.describe()} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="dtc bench xdim", description=__doc__.split("\n\n")[0])
    p.add_argument("--volume", default="64x128x128", help="smoother volume DxHxW (default 64x128x128)")
    p.add_argument("--slices", type=int, default=64, help="corr_distill_loss slices M (default 64)")
    p.add_argument("--points", type=int, default=256, help="points per slice n (default 256)")
    p.add_argument("--channels", default="384,384", help="C_s,C_t (default 384,384)")
    p.add_argument("--infer", default="96x128x128", help="inference volume DxHxW (default 96x128x128)")
    p.add_argument("--size", type=int, default=128, help="network input size for inference (default 128)")
    p.add_argument("--base", type=int, default=32, help="StudentKD width (default 32)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    try:
        D, H, W = (int(v) for v in args.volume.lower().split("x"))
        iD, iH, iW = (int(v) for v in args.infer.lower().split("x"))
        cs, ct = (int(v) for v in args.channels.split(","))
    except ValueError:
        p.error("--volume and --infer must look like 64x128x128 and --channels like 384,384")
    device = torch.device(args.device)
    print(f"host load {host_load()}")
    bench_smoother(D, H, W, args.rounds)
    bench_corr(args.slices, args.points, cs, ct, device, args.rounds)
    bench_inference(iD, iH, iW, args.size, args.base, device, args.rounds)
    return 0
