"""`python -m dtc.bench v2i` (`dtc bench v2i`): V2I-Seg's compute, each comparison in one run.

1. `torch.ops.dtc.msda_st` (fused) against its `grid_sample` composition (`dtc.ops.reference.msda_st`),
   forward and forward + backward, at the clip teacher's sizes (T frames x 3 levels, d channels, 8 heads,
   4 points).
2. `torch.ops.dtc.tfd_loss` (fused) against its plain-PyTorch composition, forward and forward + backward,
   over the three deepest levels.
3. Batch-1 latency of the deployed student and of the image model (the same architecture: the figure
   shows that distillation adds nothing at inference).

Sides of a comparison are timed in interleaved rounds (dtc.bench._timing); the host load is printed.
The goal on CUDA is at least 5x over the composition.
"""
from __future__ import annotations

import argparse

import torch

from dtc.bench._timing import describe_ratio, device_name, host_load, interleaved


def _msda_inputs(B, T, H, W, d, heads, points, device, strides=(8, 16, 32)):
    g = torch.Generator().manual_seed(0)
    shapes = [(H // s, W // s) for _ in range(T) for s in strides]
    S = sum(h * w for h, w in shapes)
    Q = sum((H // s) * (W // s) for s in strides)
    M = len(shapes)
    value = torch.randn(B, S, heads, d // heads, generator=g).to(device)
    loc = torch.rand(B, Q, heads, M, points, 2, generator=g).to(device)
    attn = torch.softmax(torch.randn(B, Q, heads, M * points, generator=g), -1).view(B, Q, heads, M, points).to(device)
    return value, [v for hw in shapes for v in hw], loc, attn


def _compare(title, fused, composition, inputs, device, rounds):
    def forward(fn):
        with torch.no_grad():
            fn(*inputs)

    def forward_backward(fn):
        for t in inputs:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                t.grad = None
        fn(*inputs).sum().backward()

    print(f"\n### {title} ({device_name(device)})\n")
    print("| pass | fused median ms [IQR] | composition median ms [IQR] | composition / fused |\n|---|---|---|---|")
    for name, run in (("forward", forward), ("forward + backward", forward_backward)):
        t = interleaved({"fused": lambda: run(fused), "composition": lambda: run(composition)}, device, rounds=rounds)
        print(f"| {name} | {t['fused'].describe()} | {t['composition'].describe()} | "
              f"{describe_ratio(t['composition'], t['fused'])} |")


def bench_msda(B, T, H, W, d, heads, points, device, rounds):
    from dtc import ops
    from dtc.ops import reference

    value, shapes, loc, attn = _msda_inputs(B, T, H, W, d, heads, points, device)
    inputs = [value.requires_grad_(True), shapes, loc.requires_grad_(True), attn.requires_grad_(True)]
    _compare(f"msda_st, B={B}, T={T} frames x 3 levels of {H}x{W}, d={d}, {heads} heads, {points} points",
             ops.msda_st, reference.msda_st, inputs, device, rounds)


def bench_tfd(B, H, W, channels, device, rounds, strides=(8, 16, 32)):
    from dtc import ops
    from dtc.ops import reference

    g = torch.Generator().manual_seed(1)
    levels = []
    for c, s in zip(channels, strides):
        shape = (B, c, H // s, W // s)
        levels.append((torch.randn(shape, generator=g).to(device).requires_grad_(True),
                       torch.randn(shape, generator=g).to(device),
                       torch.rand((B, 1, H // s, W // s), generator=g).to(device)))

    def fused(*flat):
        return torch.stack([ops.tfd_loss(s, t, m) for s, t, m in levels]).mean()

    def composition(*flat):
        return torch.stack([reference.tfd_loss(s, t, m) for s, t, m in levels]).mean()

    _compare(f"tfd_loss over 3 levels, B={B}, {H}x{W} input, channels {list(channels)}", fused, composition,
             [s for s, _, _ in levels], device, rounds)


def bench_deployed(name, kwargs, H, W, device, rounds):
    import copy

    from dtc import models

    image_model = models.create(name, **kwargs).to(device).eval()
    student = copy.deepcopy(image_model)  # what S2 deploys: the image-model architecture, retrained weights
    x = torch.rand(1, 3, H, W, device=device)

    def run(net):
        with torch.no_grad():
            net(x)

    t = interleaved({"image model": lambda: run(image_model), "V2I student": lambda: run(student)}, device,
                    rounds=rounds)
    print(f"\n### batch-1 latency, {name}({kwargs}) on {H}x{W} ({device_name(device)})\n")
    print("| model | parameters | median ms [IQR] |\n|---|---|---|")
    for label, net in (("image model", image_model), ("V2I student", student)):
        print(f"| {label} | {models.count_parameters(net):,} | {t[label].describe()} |")
    print(f"\nstudent / image model: {describe_ratio(t['V2I student'], t['image model'])}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="dtc bench v2i", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="256x448", help="input HxW (default 256x448; multiples of 32)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--points", type=int, default=4)
    p.add_argument("--channels", default="256,512,1024", help="TFD channels of the three levels")
    p.add_argument("--model", default="unet", help="network for the latency comparison (default unet)")
    p.add_argument("--model-kwargs", default="base=32", help="its settings, comma-separated k=v (default base=32)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    try:
        H, W = (int(v) for v in args.size.lower().split("x"))
        channels = [int(v) for v in args.channels.split(",")]
        kwargs = {k: int(v) for k, v in (item.split("=") for item in args.model_kwargs.split(",") if item)}
    except ValueError:
        p.error("--size must look like 256x448, --channels like 256,512,1024 and --model-kwargs like base=32")
    if H % 32 or W % 32 or len(channels) != 3:
        p.error("--size must be multiples of 32 and --channels must give 3 widths")
    device = torch.device(args.device)
    print(f"host load {host_load()}")
    bench_msda(args.batch, args.frames, H, W, args.d, args.heads, args.points, device, args.rounds)
    bench_tfd(args.batch, H, W, channels, device, args.rounds)
    bench_deployed(args.model, kwargs, H, W, device, args.rounds)
    return 0
