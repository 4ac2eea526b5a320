"""`dtc export CHECKPOINT OUT`: the C++ runtime's model file, a torch.export program and ONNX, verified."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a checkpoint for the C++ runtime (model.dtc), torch.export (.pt2) and ONNX",
        description="Writes OUT/model.dtc (dtc-stream and the C++ runtime), OUT/model.pt2 (torch.export; student "
                    "networks) and OUT/model.onnx (when onnx and onnxruntime are installed), each verified against "
                    "the checkpoint on probe frames, and OUT/export.json. Every file takes float32 frames in [0, 1] "
                    "shaped (N, C_in, H, W), un-normalised, and returns probabilities (N, 1, H, W).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a checkpoint written by dtc (best.pt / last.pt)")
    p.add_argument("out", type=Path, help="output folder")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--onnx", dest="onnx", action="store_true", default=None, help="require the ONNX export")
    group.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the ONNX export")
    p.set_defaults(func=run)


def run(args) -> int:
    from dtc.deploy.export import export

    summary = export(args.checkpoint, args.out, onnx=args.onnx)
    for kind, info in summary["files"].items():
        print(f"{kind:8s} {args.out / info['path']}  (max-abs vs checkpoint {info['max_abs']:.2e})")
    for kind, why in summary["skipped"].items():
        print(f"{kind:8s} skipped: {why}")
    return 0
