"""Shared timing helpers: interleaved side-by-side timing, median wall time with warm-up (CUDA-synchronised),
and copy bandwidth."""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from typing import Callable, Sequence

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device, *, warmup: int = 3, repeat: int = 10, min_time_s: float = 0.2) -> float:
    """Median milliseconds per call; repeats until both `repeat` calls and `min_time_s` are reached."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start_all) < min_time_s:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 10 * repeat:
            break
    return statistics.median(times)


def copy_bandwidth_gbs(device, nbytes: int = 256 * 2**20) -> float:
    """Device copy bandwidth (read + write bytes per second), the floor memory-bound ops are held to."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, repeat=10)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@dataclasses.dataclass(frozen=True)
class Timing:
    """Spread of one side of an interleaved comparison: wall and process-CPU milliseconds per call."""

    wall_ms: list[float]
    cpu_ms: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.wall_ms)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_ms)

    def quartiles(self) -> tuple[float, float]:
        return _quartiles(self.wall_ms)

    def describe(self) -> str:
        """``median [p25–p75]`` in ms, the form every side-by-side table prints."""
        lo, hi = self.quartiles()
        return f"{self.median:.2f} [{lo:.2f}–{hi:.2f}]"


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def interleaved(fns: dict[str, Callable[[], object]], device, *, warmup: int = 1, rounds: int = 7,
                min_time_s: float = 0.0) -> dict[str, Timing]:
    """Time several implementations of one computation in alternating rounds.

    On a shared machine the load changes from second to second; timing side A for a while and then
    side B lets a burst of load land on one side only and swings the ratio 2-10x. Here every round
    calls each side once, in an order that rotates each round, so both sides see the same load, and
    the paired per-round ratio (:func:`paired_ratio`) cancels what is left. Process CPU time is kept
    beside the wall time: for single-threaded work it is the figure a busy machine does not inflate.
    """
    if not fns:
        raise ValueError("fns must name at least one implementation to time")
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    sync(device)
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    start = time.perf_counter()
    r = 0
    while r < rounds or (time.perf_counter() - start) < min_time_s:
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            fns[name]()
            sync(device)
            wall[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name].append((time.process_time() - c0) * 1e3)
        r += 1
        if r >= 10 * rounds:
            break
    return {n: Timing(wall[n], cpu[n]) for n in names}


def paired_ratio(numerator: Timing, denominator: Timing) -> tuple[float, float, float]:
    """Median and quartiles of the per-round ratio ``numerator / denominator`` (rounds of one run)."""
    ratios = [a / b for a, b in zip(numerator.wall_ms, denominator.wall_ms)]
    lo, hi = _quartiles(ratios)
    return statistics.median(ratios), lo, hi


def describe_ratio(numerator: Timing, denominator: Timing) -> str:
    mid, lo, hi = paired_ratio(numerator, denominator)
    return f"{mid:.2f}× [{lo:.2f}–{hi:.2f}]"


def host_load() -> str:
    """The 1-minute load average, printed with every table: a ratio means little without it."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def _thread_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of threads, got {text!r}")
    return value


def add_threads_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--threads N``, the benches' one way to set torch's intra-op threads (see :func:`apply_threads`)."""
    parser.add_argument("--threads", type=_thread_count, help=help)


def apply_threads(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
