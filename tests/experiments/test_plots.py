"""Ablation plots show the spread over seeds on axes that do not blow up differences within it, and every
figure can say on itself which settings produced it."""
from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch

from dtc.experiments.plots import (MIN_SCORE_SPAN, NOISE_SPANS, ablation_axis_limits, ablation_figure,
                                   flicker_comparison_figure, flicker_figure, video_strip_figure)


def _table_and_runs(metric, per_arm):
    table, runs = [], []
    for arm, values in per_arm.items():
        values = np.asarray(values, float)
        table.append({"arm": arm, "label": arm, "seeds": len(values), f"{metric}_mean": values.mean(),
                      f"{metric}_std": values.std(ddof=1) if len(values) > 1 else math.nan})
        runs += [{"arm": arm, metric: v} for v in values]
    return table, runs


def _error_bars(ax):
    return [c for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer)]


def test_arms_within_the_noise_look_close():
    # Two arms 0.01 apart with seeds spread by ~0.02: the difference is within the noise.
    table, runs = _table_and_runs("Dice_sunseg", {"seg+kd": [0.88, 0.90, 0.92], "full": [0.89, 0.91, 0.93]})
    fig = ablation_figure(table, runs=runs, metrics=("Dice_sunseg",))
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    std = max(r["Dice_sunseg_std"] for r in table)
    assert hi - lo >= NOISE_SPANS * std
    assert (0.91 - 0.90) / (hi - lo) < 0.1  # the gap between the means is a small part of the axis
    assert all(lo <= r["Dice_sunseg"] <= hi for r in runs)  # every seed is on the plot
    bars = _error_bars(ax)
    assert len(bars) == 2  # mean ± std per arm
    for bar, row in zip(bars, table):
        caps = sorted(float(cap.get_ydata()[0]) for cap in bar.lines[1])
        mean, std = row["Dice_sunseg_mean"], row["Dice_sunseg_std"]
        assert caps == pytest.approx([mean - std, mean + std])
    assert "mean ± std over 3 seed(s)" in fig.get_suptitle()


def test_a_single_seed_still_gets_a_minimum_span_and_magnitudes_start_at_zero():
    lo, hi = ablation_axis_limits("TC", [0.991, 0.993], [math.nan, math.nan])
    assert hi - lo >= MIN_SCORE_SPAN and lo >= 0 and hi <= 1.02 and lo <= 0.991 and hi >= 0.993
    lo, hi = ablation_axis_limits("area_flicker", [0.010, 0.011], [0.002, 0.003], seeds=[0.008, 0.014])
    assert lo == 0 and hi >= 0.014
    lo, hi = ablation_axis_limits("Dice", [0.02, 0.03], [0.01, 0.01])
    assert lo == 0.0 and hi - lo >= MIN_SCORE_SPAN


def test_every_figure_states_the_settings_given():
    note = "tiny mode (DTC_NOTEBOOK_TINY=1): 48x64 frames, 1 epoch; numbers meaningless"
    table, runs = _table_and_runs("TC", {"a": [0.98, 0.99], "b": [0.985, 0.99]})
    prob = torch.zeros(3, 8, 8)
    prob[:, 2:6, 2:6] = 0.9
    video = {"frame": [0, 1, 2], "prob": prob, "mask": (prob > 0.5).float(), "valid": torch.ones(3, dtype=bool),
             "image": torch.rand(3, 8, 8)}
    figures = [ablation_figure(table, runs=runs, metrics=("TC",), settings=note),
               flicker_figure({"a": {"v": video}}, settings=note),
               flicker_comparison_figure({"a": {"v": video}}, settings=note),
               video_strip_figure(video, settings=note)]
    for fig in figures:
        assert note in [t.get_text() for t in fig.texts]
