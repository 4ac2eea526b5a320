"""Shared timing helpers: median wall time with warm-up, CUDA-synchronised, and copy bandwidth."""
from __future__ import annotations

import statistics
import time
from typing import Callable

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
