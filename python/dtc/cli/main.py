"""The `dtc` command line. Each subcommand lives in its own module with `register(subparsers)`."""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules under dtc.cli, each defining `register(subparsers)`; a subcommand's parser sets
# `func(args) -> int`. Imported lazily per run so `dtc --help` stays fast.
SUBCOMMAND_MODULES = ["demo", "train", "infer", "evaluate", "data", "bench", "experiment", "export", "stream", "xdim", "v2i"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dtc", description="Distilled temporal coherence for ultrasound video.")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback instead of the one-line message")
    parser.add_argument("--version", action="version", version=f"dtc {importlib.import_module('dtc').__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"dtc.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["stream"]:
        # dtc-stream parses its own options (including --help); argparse would claim them.
        from dtc.cli.stream import passthrough

        return passthrough(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from dtc.cli.errors import run_command
    from dtc.log import use_cli_logging
    from dtc.memory import keep_freed_memory

    use_cli_logging()
    keep_freed_memory()

    return run_command(args.func, args, args.command, debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
