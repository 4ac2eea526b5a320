"""`dtc demo`: the README's main job (see dtc.engine.demo)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="simulate TRUS video, train teacher + baseline + DTC students, evaluate, write a report",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="report folder")
    parser.add_argument("--preset", default="small", choices=["small", "full"],
                        help="small: 2 CPU cores in < 10 min; full: the paper's size, for a GPU")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--seeds", type=int, default=3,
                        help="number of consecutive seeds; the report gives mean ± std and paired differences")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resume", action="store_true", help="reuse finished stages in --out and continue")
    parser.set_defaults(func=run)


def run(args) -> int:
    from dtc.engine.demo import run_demo

    run_demo(args.out, preset=args.preset, seed=args.seed, seeds=args.seeds, device=args.device, resume=args.resume)
    return 0
