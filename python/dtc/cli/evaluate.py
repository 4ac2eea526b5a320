"""`dtc evaluate`: score a checkpoint on a dataset split, or a folder of predicted probability PNGs
against SUN-SEG style masks."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate predicted probability maps against masks (SUN-SEG suite, Dice, temporal metrics)",
        description="Either --checkpoint CKPT (predict a split of the checkpoint's dataset, or of another given "
                    "with KEY=VALUE data overrides; also FPS and a video of the worst frames), or PREDICTIONS MASKS: "
                    "score <pred>/<case>/<frame>.png (8-bit probability maps) against <masks>/<case>/<frame>.png. "
                    "Writes per_frame.csv, per_video.{csv,md}, overall.{csv,md}, sunseg_overall.csv and plots.",
    )
    p.add_argument("inputs", nargs="*", metavar="PREDICTIONS MASKS | KEY=VALUE",
                   help="two folders (predictions, masks), or with --checkpoint data overrides such as "
                        "data.source=sunseg data.root=/data/SUN-SEG")
    p.add_argument("--checkpoint", type=Path, help="a checkpoint written by dtc (best.pt / last.pt)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="with --checkpoint")
    p.add_argument("--device", default="auto", help="with --checkpoint")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder for tables and plots")
    p.add_argument("--preset", choices=("sunseg", "reference"), default="sunseg",
                   help="sunseg: per-video then over videos (default); reference: batch-level, 3 decimals")
    p.add_argument("--no-normalize", action="store_true",
                   help="do not min-max normalise each prediction for the SUN-SEG suite (the toolbox does)")
    p.add_argument("--keep-ends", action="store_true",
                   help="keep each video's first and last frame in the SUN-SEG suite (the toolbox drops them)")
    p.add_argument("--case-decimals", type=int, default=None, metavar="N",
                   help="round each video's scalar SUN-SEG scores to N decimals before the mean over videos, as the "
                        "toolbox version behind the published SUN-SEG tables did (N=3); default: no rounding")
    p.add_argument("--threshold", type=float, default=0.5, help="threshold of the binary metrics (default 0.5)")
    p.add_argument("--backend", choices=("auto", "numpy", "cpp", "torch"), default="auto",
                   help="SUN-SEG frame metrics: auto (C++ when built), numpy, cpp, or torch (batched tensor ops on "
                        "the data's device, e.g. CUDA)")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dtc.metrics.evaluate import evaluate_predictions, iter_prediction_folders, rows_to_markdown

    if args.checkpoint is not None:
        from dtc.engine.evaluate import evaluate_checkpoint

        result = evaluate_checkpoint(args.checkpoint, args.out, split=args.split, device=args.device,
                                     data_overrides=args.inputs)
        print(rows_to_markdown([result["suite"].overall]).decode(), end="")
        print(f"FPS (batch 1, {result['summary']['device']}): {result['summary']['FPS']:.1f}")
        print(f"wrote tables, plots and worst_frames.mp4 to {args.out}")
        return 0
    if len(args.inputs) != 2:
        raise ValueError("give PREDICTIONS MASKS (two folders), or --checkpoint CKPT")
    args.predictions, args.masks = (Path(p) for p in args.inputs)
    total, frames = iter_prediction_folders(args.predictions, args.masks)
    result = evaluate_predictions(
        frames, preset=args.preset, normalize=None if args.no_normalize else "minmax",
        drop_ends=False if args.keep_ends else None, case_decimals=args.case_decimals, threshold=args.threshold,
        backend=args.backend,
        out_dir=args.out, plots=not args.no_plots, total=total,
    )
    print(rows_to_markdown(result.labelled([result.overall])).decode(), end="")
    print(f"wrote tables and plots to {args.out}")
    return 0
