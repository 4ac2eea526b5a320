"""The benchmark harness's bookkeeping (what it times and how it summarises), not any speed."""
from __future__ import annotations

import argparse

import pytest

from dtc.bench import _timing, main, step


def test_interleaved_rotates_order_and_times_every_side_each_round():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    result = _timing.interleaved(fns, "cpu", warmup=1, rounds=4)
    # Warm-up once per side, then each round rotates which side goes first, so no side always runs
    # right after another's cache-polluting call.
    assert calls[:3] == ["a", "b", "c"]
    rounds = [calls[3 + 3 * r: 6 + 3 * r] for r in range(4)]
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert all(len(t.wall_ms) == 4 and len(t.cpu_ms) == 4 for t in result.values())


def test_paired_ratio_is_the_median_of_per_round_ratios():
    slow = _timing.Timing(wall_ms=[10.0, 100.0, 30.0], cpu_ms=[1.0, 1.0, 1.0])
    fast = _timing.Timing(wall_ms=[5.0, 10.0, 30.0], cpu_ms=[1.0, 1.0, 1.0])
    mid, lo, hi = _timing.paired_ratio(slow, fast)
    # Per round: 2, 10, 1. A ratio of medians would give 30/10 = 3 and hide the load burst in round 2.
    assert mid == 2.0 and lo == 1.5 and hi == 6.0
    assert slow.describe() == "30.00 [20.00–65.00]"


def test_interleaved_rejects_an_empty_comparison():
    with pytest.raises(ValueError, match="fns"):
        _timing.interleaved({}, "cpu")


def test_step_defaults_on_the_cpu_are_the_light_student_and_keep_explicit_options():
    args = argparse.Namespace(device="cpu", model=None, B=None, T=None, H=64, W=None, flow=None, amp=None, repeat=None)
    chosen = step.resolve_defaults(args)
    assert (args.model, args.B, args.H, args.W, args.amp) == ("student", 2, 64, 224, "off")
    assert "H=64" not in " ".join(chosen) and "model=student" in chosen


@pytest.mark.parametrize("bench", ["flow", "warp", "losses", "infer"])
def test_benches_refuse_a_thread_count_that_is_not_positive(bench, capsys):
    with pytest.raises(SystemExit):
        main([bench, "--threads", "0"])
    assert "expected a positive number of threads, got '0'" in capsys.readouterr().err
