"""The runtime's thread-count policy (cpp/include/dtc/runtime_threads.h), driven by simulated latencies.

The model of the machine: on a quiet 2-core machine 2 threads take 10 ms a frame and 1 thread 16 ms; while
other processes compete for the cores, 2 threads take 200 ms (every barrier waits for a preempted thread)
and 1 thread 45 ms. These are the development machine's figures (benchmarks/RESULTS.md, stream).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from dtc import _C

Governor = _C.nets.ThreadGovernor

QUIET = {2: 10.0, 1: 16.0}
BUSY = {2: 200.0, 1: 45.0}


def drive(governor, frames, latency_of, first_run_ms=400.0, warm=()):
    """Runs `frames` frames; latency_of(frame, threads) gives each one's ms. The first frame at a count
    not in `warm` takes first_run_ms (its kernels are built then). Returns the thread count of every frame."""
    seen, used = set(warm), []
    for i in range(frames):
        t = governor.threads
        used.append(t)
        governor.record(first_run_ms if t not in seen else latency_of(i, t))
        seen.add(t)
    return np.array(used)


def test_a_quiet_machine_keeps_the_most_threads():
    g = Governor(2)
    used = drive(g, 1000, lambda i, t: QUIET[t])
    assert g.home_threads == 2 and g.switches == 0
    # Retries of 1 thread after 4, 30, 60, 120, 240, 480 frames (the first one twice: its kernels are built)
    assert (used == 1).sum() <= 8
    assert g.frames_per_count == {1: int((used == 1).sum()), 2: int((used == 2).sum())}


def test_load_drops_to_one_thread_within_a_few_frames_and_quiet_brings_two_back():
    g = Governor(2)
    load = range(200, 1200)
    used = drive(g, 2500, lambda i, t: (BUSY if i in load else QUIET)[t])
    assert (used[200:200 + 6] == 1).any(), "the collapse was not noticed within 6 frames"
    busy = used[206:1200]
    # Under load only the retries run 2 threads, ever rarer (30, 60, 120, ... frames apart).
    assert (busy == 2).sum() <= 6
    # Quiet again: 2 threads back by the next retry (its interval is at most 480 frames).
    back = np.argmax(used[1200:] == 2)
    assert used[1200 + back] == 2 and back <= 480
    assert (used[1200 + back + 1:] == 2).mean() > 0.98


def test_a_moderate_load_where_two_threads_still_win_keeps_two():
    g = Governor(2)
    used = drive(g, 1000, lambda i, t: {2: 25.0, 1: 45.0}[t] if i >= 100 else QUIET[t])
    assert g.home_threads == 2 and g.switches == 0
    assert (used[100:] == 1).sum() <= 8


def test_noisy_latencies_do_not_flap():
    rng = np.random.default_rng(0)
    noise = rng.lognormal(0.0, 0.15, size=(3000, 3))
    g = Governor(2)
    drive(g, 3000, lambda i, t: QUIET[t] * noise[i, t])
    assert g.home_threads == 2 and g.switches <= 1


def test_more_cores_halve_down_to_the_count_that_is_fastest():
    # 8 threads: 4 ms quiet; under load 4 threads are the best (8 wait for preempted ones, fewer are slower)
    busy = {8: 120.0, 4: 12.0, 2: 18.0, 1: 30.0}
    g = Governor(8)
    used = drive(g, 400, lambda i, t: ({8: 4.0, 4: 6.0, 2: 10.0, 1: 18.0} if i < 100 else busy)[t])
    assert g.home_threads == 4
    assert (used[100:106] == 4).any(), "the collapse was not noticed within 6 frames"
    assert (used[120:] == 4).mean() > 0.95


def test_a_warmed_count_is_judged_by_its_first_frame():
    g = Governor(4)
    assert g.counts == [1, 2, 4]
    for t in (1, 2):
        g.warmed(t)
    used = drive(g, 12, lambda i, t: {4: 100.0, 2: 10.0, 1: 20.0}[t], warm=(1, 2))
    # frame 0 builds 4's kernels, frames 1-4 measure it, frame 5 retries 2 threads and wins at once
    assert list(used[:7]) == [4, 4, 4, 4, 4, 2, 2] and g.switches == 1
    assert Governor(4, adaptive=False).counts == [4]


def test_fixed_threads_and_a_single_thread_never_change():
    for g in (Governor(2, adaptive=False), Governor(1)):
        used = drive(g, 300, lambda i, t: BUSY[t] if i > 50 else QUIET[t])
        assert (used == g.home_threads).all() and g.switches == 0 and g.probes == 0


def test_latencies_that_are_not_positive_and_finite_are_ignored():
    g = Governor(2)
    for ms in (math.nan, math.inf, -1.0, 0.0):
        g.record(ms)
    assert g.frames_per_count == {} and g.threads == 2


@pytest.mark.parametrize("kwargs, name", [
    (dict(max_threads=0), "max_threads"),
    (dict(max_threads=2, probe_every=0), "probe_every"),
    (dict(max_threads=2, probe_every=50, max_probe_every=10), "max_probe_every"),
    (dict(max_threads=2, switch_margin=1.5), "switch_margin"),
    (dict(max_threads=2, collapse_factor=1.0), "collapse_factor"),
    (dict(max_threads=2, collapse_factor=math.inf), "collapse_factor"),
])
def test_bad_options_name_the_option(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Governor(**kwargs)
