"""Heap settings for the processes dtc's command line starts (``dtc ...``, ``python -m dtc.bench``).

A network's forward allocates and frees the same few-megabyte activations for every frame or batch.
glibc serves blocks that large with ``mmap`` and hands them back to the kernel when they are freed, so
every call page-faults its activations in again: at 256×448 the light student spent a third of its time
in the kernel (Segmenter.push 23.6 → 13.6 ms per frame with the settings below; benchmarks/RESULTS.md).
Keeping freed memory in the heap removes that, at the price of the process keeping its peak footprint.

dtc does not change this behind the back of a program that merely imports it (a notebook, a user's
script); those can call :func:`keep_freed_memory` themselves. ``DTC_MALLOC=default`` leaves glibc's
defaults in place for dtc's own commands too. The C++ executable dtc-stream does the same in ``main``.
"""
from __future__ import annotations

import ctypes
import os
import platform

# mallopt parameters from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds so freed tensors stay in the heap for the next call.
    Returns whether the settings were applied (False off glibc, or with ``DTC_MALLOC=default``)."""
    if os.environ.get("DTC_MALLOC", "").lower() == "default" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
