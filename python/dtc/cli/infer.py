"""`dtc infer CHECKPOINT INPUT`: segment a frame folder or a video file with a trained network."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("infer", help="segment a frame folder or a video file with a checkpoint",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a checkpoint written by dtc (best.pt / last.pt)")
    p.add_argument("input", type=Path, help="a folder of frames (or with an images/ subfolder) or a video file")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: INPUT name + '_dtc')")
    p.add_argument("--probs", action="store_true", help="also write probability maps (16-bit PNG)")
    p.add_argument("--no-overlay", action="store_true", help="skip the overlay video")
    p.add_argument("--nifti", action="store_true", help="also write the masks as a NIfTI stack (needs nibabel)")
    p.add_argument("--spacing", type=float, nargs=2, metavar=("ROW_MM", "COL_MM"), default=None,
                   help="pixel spacing for the NIfTI header")
    p.add_argument("--volume", type=float, default=None, metavar="STEP_MM",
                   help="a linear sweep STEP_MM apart: reconstruct it in 3-D (volume in mL, STL/PLY/PNG surface; "
                        "needs --spacing)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=run)


def run(args) -> int:
    from dtc.engine.infer import infer

    summary = infer(args.checkpoint, args.input, out=args.out, probs=args.probs, overlay=not args.no_overlay,
                    nifti=args.nifti, spacing=args.spacing, device=args.device, batch_size=args.batch_size,
                    volume_step=args.volume)
    print(f"wrote {summary['frames']} frame(s) of {summary['videos']} video(s) to {summary['out']}")
    return 0
