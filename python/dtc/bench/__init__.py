"""Benchmarks: `python -m dtc.bench NAME [options]` or `dtc bench NAME`; each NAME is a module here
with `main(argv)`."""
from __future__ import annotations

import importlib
import pkgutil
import sys


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    names = available()
    if not argv or argv[0] in {"-h", "--help"}:
        print(f"usage: python -m dtc.bench {{{','.join(names)}}} [options]")
        return 0 if argv else 2
    name = argv[0]
    if name not in names:
        print(f"unknown benchmark {name!r}; expected one of {names}", file=sys.stderr)
        return 2
    from dtc.memory import keep_freed_memory

    keep_freed_memory()  # as every dtc command: the figures are those users get from `dtc ...`
    return int(importlib.import_module(f"dtc.bench.{name}").main(argv[1:]) or 0)
