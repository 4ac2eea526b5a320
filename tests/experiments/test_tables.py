"""Experiment tables: the paired Wilcoxon test over videos against the baseline and the LaTeX table."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from dtc.experiments.results import format_latex, paired_over_videos


def test_paired_over_videos_pools_seed_video_pairs_and_matches_scipy():
    rng = np.random.default_rng(0)
    base = {(("base", s)): {f"v{i}": {"Dice": float(rng.uniform(0.5, 0.8)), "TC": 0.9} for i in range(6)}
            for s in (0, 1)}
    arm = {("full", s): {v: {"Dice": d["Dice"] + 0.05 + 0.01 * i, "TC": 0.9} for i, (v, d) in enumerate(base[("base", s)].items())}
           for s in (0, 1)}
    arm[("full", 1)]["extra"] = {"Dice": 1.0, "TC": 1.0}  # a video the baseline lacks: not paired
    rows = paired_over_videos({**base, **arm}, "base", ["base", "full"], {"full": "DTC"})
    dice = next(r for r in rows if r["metric"] == "Dice@0.5")
    tc = next(r for r in rows if r["metric"] == "TC")
    diffs = [arm[("full", s)][f"v{i}"]["Dice"] - base[("base", s)][f"v{i}"]["Dice"] for s in (0, 1) for i in range(6)]
    assert dice["n"] == 12 and dice["label"] == "DTC" and dice["mean_diff"] == pytest.approx(np.mean(diffs))
    assert dice["p_wilcoxon"] == pytest.approx(stats.wilcoxon(diffs).pvalue)
    assert tc["n"] == 12 and math.isnan(tc["p_wilcoxon"])  # no differences: no test


def test_latex_table_escapes_labels_and_shows_mean_std_and_p():
    row = {"arm": "full", "label": "seg_kd & 100%", "seeds": 2}
    for key in ("Dice_sunseg", "Dice", "TC", "dice_flicker", "area_flicker", "FPS"):
        row[f"{key}_mean"], row[f"{key}_std"] = 0.5, 0.01
    row["TC_std"] = math.nan
    tex = format_latex([row], [{"arm": "full", "metric": "Dice@0.5", "p_wilcoxon": 0.0312}], caption="tiny_exp",
                       baseline_label="+ KD")
    assert r"seg\_kd \& 100\%" in tex and r"$0.5000 \pm 0.0100$ & 0.0312" in tex and "$0.5000$ & --" in tex
    assert tex.count(r"\\") >= 2 and r"\caption{tiny\_exp." in tex and r"\end{table}" in tex
