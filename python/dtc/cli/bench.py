"""`dtc bench NAME [options]`: the same benchmarks as `python -m dtc.bench NAME`."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: ours against the plain composition, side by side",
                              description="Runs python/dtc/bench/NAME.py; `dtc bench NAME --help` lists its options.")
    p.add_argument("name", help="warp, losses, flow, metrics, synth, infer, step or stream")
    p.add_argument("options", nargs=argparse.REMAINDER, help="options of that benchmark")
    p.set_defaults(func=run)


def run(args) -> int:
    from dtc.bench import main as bench_main

    return bench_main([args.name, *args.options])
