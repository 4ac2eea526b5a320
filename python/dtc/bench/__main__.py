from __future__ import annotations

import importlib
import pkgutil
import sys

import dtc.bench


def main(argv: list[str]) -> int:
    available = sorted(m.name for m in pkgutil.iter_modules(dtc.bench.__path__) if not m.name.startswith("_"))
    if not argv or argv[0] in {"-h", "--help"}:
        print(f"usage: python -m dtc.bench {{{','.join(available)}}} [options]")
        return 0 if argv else 2
    name = argv[0]
    if name not in available:
        print(f"unknown benchmark {name!r}; expected one of {available}", file=sys.stderr)
        return 2
    return int(importlib.import_module(f"dtc.bench.{name}").main(argv[1:]) or 0)


raise SystemExit(main(sys.argv[1:]))
