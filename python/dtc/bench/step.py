"""`python -m dtc.bench step`: one stage-2 training step (docs/method.md §2), timed part by part.

Parts: flow for the B·(T−1) pairs, teacher + flip pseudo-label forwards (no grad), student forward,
the DTC objective (all four terms), and backward + AdamW step. Each part is synchronised on CUDA,
so the shares add up to the step. The issue's target is a U-Net student at B=8, T=3, 256×448 in
≤ 100 ms on the GPU with flow under 5 % of the step (the authors' code: ~1 s, 70–88 % flow).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dtc.bench._timing import device_name, host_load, sync


# A GPU runs the target shape; a CPU would take tens of minutes on it (a U-Net at 256×448, B=8),
# so there the defaults are the light student at the CPU presets' size, which finishes in about a minute.
DEFAULTS = {
    "cuda": dict(model="unet", B=8, T=3, H=256, W=448, flow="farneback", amp="bf16", repeat=5),
    "cpu": dict(model="student", B=2, T=3, H=128, W=224, flow="opencv", amp="off", repeat=3),
}


def resolve_defaults(args) -> list[str]:
    """Fill every option left unset from the device's defaults; returns the names that were filled."""
    chosen = []
    for key, value in DEFAULTS["cuda" if torch.device(args.device).type == "cuda" else "cpu"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
            chosen.append(f"{key}={value}")
    return chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtc.bench step", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default=None, help="default: unet on CUDA, student on the CPU")
    parser.add_argument("--kwargs", default=None, help='network kwargs as JSON (default: {"base": 64} for unet)')
    parser.add_argument("--B", type=int, default=None, help="default 8 on CUDA, 2 on the CPU")
    parser.add_argument("--T", type=int, default=None, help="default 3")
    parser.add_argument("--H", type=int, default=None, help="default 256 on CUDA, 128 on the CPU")
    parser.add_argument("--W", type=int, default=None, help="default 448 on CUDA, 224 on the CPU")
    parser.add_argument("--flow", default=None, choices=["farneback", "opencv", "gt"],
                        help="default farneback on CUDA, opencv on the CPU")
    parser.add_argument("--amp", default=None, choices=["off", "bf16", "fp16"], help="default bf16 on CUDA, off on the CPU")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--repeat", type=int, default=None, help="default 5 on CUDA, 3 on the CPU")
    args = parser.parse_args(argv)
    chosen = resolve_defaults(args)
    if chosen:
        print(f"defaults for {torch.device(args.device).type}: {', '.join(chosen)} (set them to override)", flush=True)

    from dtc import models
    from dtc.engine.inference import normalise_images
    from dtc.flow import make_flow_provider
    from dtc.losses import DTCObjective

    device = torch.device(args.device)
    kwargs = json.loads(args.kwargs) if args.kwargs else ({"base": 64} if args.model == "unet" else {})
    teacher = models.create(args.model, **kwargs).to(device).eval()
    student = models.create(args.model, **kwargs).to(device)
    if args.channels_last:
        teacher, student = (m.to(memory_format=torch.channels_last) for m in (teacher, student))
    student.load_state_dict(teacher.state_dict())
    objective = DTCObjective("dtc", check_inputs=False)
    provider = make_flow_provider(args.flow, **({} if args.flow == "gt" else {"preset": "dtc"}))
    optimiser = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=1e-4)
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    B, T = args.B, args.T
    g = torch.Generator().manual_seed(0)
    images = torch.rand(B, T, 3, args.H, args.W, generator=g).to(device)
    batch = {"flow": torch.randn(B, T, 2, args.H, args.W, generator=g).to(device),
             "video_id": [f"v{b}" for b in range(B)],
             "frame_index": torch.arange(T).repeat(B, 1)}

    def step() -> dict:
        times = {}
        t = time.perf_counter()

        def mark(name):
            nonlocal t
            sync(device)
            now = time.perf_counter()
            times[name] = (now - t) * 1e3
            t = now

        flows = provider(images, batch)
        mark("flow")
        x = normalise_images(images.flatten(0, 1))
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            teacher_logits = teacher(x)[0].float()
            pseudo = objective.pseudo_labels(student, teacher, x).float()
        mark("teacher + pseudo-labels")
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits, local, global_ = student(x)
        mark("student forward")

        def window(v):
            return v.float().unflatten(0, (B, T))

        loss, _ = objective(window(logits), window(local), window(global_), window(teacher_logits), window(pseudo),
                            images, flows)
        mark("losses")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        mark("backward + optimiser")
        return times

    step()  # warm-up: allocator, kernels, algorithm selection
    runs = [step() for _ in range(args.repeat)]
    parts = list(runs[0])
    medians = {p: statistics.median(r[p] for r in runs) for p in parts}
    total = statistics.median(sum(r.values()) for r in runs)
    print(f"stage-2 step on {device_name(device)}: {args.model} {kwargs}, B={B} T={T} {args.H}x{args.W}, "
          f"flow={args.flow}, amp={args.amp}, channels_last={args.channels_last}, median of {args.repeat}; "
          f"host load {host_load()}")
    print("| part | ms | share |")
    print("|---|---|---|")
    for p in parts:
        print(f"| {p} | {medians[p]:.1f} | {100 * medians[p] / sum(medians.values()):.0f}% |")
    print(f"| **step** | **{total:.1f}** | |")
    return 0
