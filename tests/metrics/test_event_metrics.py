"""Event-aware metrics (Dice on event and calm frames, worst-frame Dice, Dice flicker, warping IoU on
binary masks) and the paired-by-seed comparison of experiment arms, each against a plain NumPy
computation written here."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from dtc.metrics import TemporalMetric, evaluate_predictions
from dtc.metrics import temporal as tm


# ------------------------------------------------------------------------------------ plain NumPy
def np_dice(prob, gt, thr=0.5):
    b, g = prob > thr, gt > 0.5
    total = b.sum() + g.sum()
    return 1.0 if total == 0 else 2.0 * (b & g).sum() / total


def np_bilinear_border(plane, flow):
    """W(A)(p) = A(p - F(p)): clamp the sample point into the image, blend the four neighbours."""
    H, W = plane.shape
    out = np.empty((H, W))
    for i in range(H):
        for j in range(W):
            x = min(max(j - flow[0, i, j], 0.0), W - 1.0)
            y = min(max(i - flow[1, i, j], 0.0), H - 1.0)
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            x1, y1 = min(x0 + 1, W - 1), min(y0 + 1, H - 1)
            ax, ay = x - x0, y - y0
            out[i, j] = ((1 - ay) * ((1 - ax) * plane[y0, x0] + ax * plane[y0, x1])
                         + ay * ((1 - ax) * plane[y1, x0] + ax * plane[y1, x1]))
    return out


def np_warping_iou(prob_t, prob_prev, flow, thr=0.5):
    b_t = prob_t > thr
    b_prev = np_bilinear_border((prob_prev > thr).astype(float), flow) > 0.5
    union = (b_t | b_prev).sum()
    return 1.0 if union == 0 else (b_t & b_prev).sum() / union


def make_video(T=7, H=12, W=15, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    probs, gts, flows = [], [], []
    for t in range(T):
        cx, cy = 6 + 0.6 * t + rng.normal(0, 0.5), 6 + rng.normal(0, 0.5)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 12.0)
        probs.append(np.clip(blob + rng.normal(0, 0.15, (H, W)), 0, 1))
        gts.append(((xx - 6 - 0.6 * t) ** 2 + (yy - 6) ** 2 < 9).astype(np.uint8))
        # Non-integer, spatially varying flows so bilinear weights and border clamping both matter.
        flows.append(np.stack([0.6 + rng.normal(0, 0.7, (H, W)), rng.normal(0, 0.7, (H, W))]))
    events = np.array([False, True, True, False, False, True, False])[:T]
    return np.array(probs), np.array(gts), np.array(flows), events


# --------------------------------------------------------------------------------- frame metrics
@pytest.mark.parametrize("warp", [None, tm.compiled_warp], ids=["grid_sample", "dtc.ops.warp"])
def test_warping_iou_on_binary_masks_matches_numpy(warp):
    probs, _, flows, _ = make_video()
    for t in range(1, len(probs)):
        got = tm.warping_iou(probs[t], probs[t - 1], flows[t], warp=warp)
        assert got == pytest.approx(np_warping_iou(probs[t], probs[t - 1], flows[t]), abs=1e-12)
    # Empty masks on both sides score 1 (nothing to disagree about).
    zeros = np.zeros((5, 6))
    assert tm.warping_iou(zeros, zeros, np.zeros((2, 5, 6)), warp=warp) == 1.0


def test_compiled_warp_matches_the_grid_sample_warp():
    probs, _, flows, _ = make_video()
    a = tm.warp_map(probs[1], flows[2], tm.compiled_warp)
    b = tm.warp_map(probs[1], flows[2])
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a, np_bilinear_border(probs[1], flows[2]), rtol=0, atol=1e-12)


def test_event_split_and_worst_frame_match_numpy():
    values = np.array([0.9, 0.4, np.nan, 0.7, 0.2, 0.8])
    events = np.array([False, True, True, False, True, False])
    got_event, got_calm = tm.event_split(values, events)
    assert got_event == pytest.approx(np.nanmean(values[events]))
    assert got_calm == pytest.approx(np.nanmean(values[~events]))
    assert tm.worst_frame(values) == np.nanmin(values)
    # 0/1 flags work like booleans; a class without frames is NaN.
    assert tm.event_split(values, events.astype(int)) == (got_event, got_calm)
    calm_only = tm.event_split(values, np.zeros(6, bool))
    assert math.isnan(calm_only[0]) and calm_only[1] == pytest.approx(np.nanmean(values))
    assert math.isnan(tm.worst_frame([np.nan]))


def test_event_split_rejects_bad_flags():
    with pytest.raises(ValueError, match="same length"):
        tm.event_split([0.5, 0.6], [True])
    with pytest.raises(ValueError, match="events must hold booleans"):
        tm.event_split([0.5, 0.6], [0, 2])
    with pytest.raises(ValueError, match="1-D"):
        tm.worst_frame(np.zeros((2, 2)))


# ------------------------------------------------------------------------------ per video, suite
def test_temporal_metric_event_columns_match_numpy():
    probs, gts, flows, events = make_video()
    metric = TemporalMetric(warp=tm.compiled_warp)
    for t in range(len(probs)):
        metric(probs[t], gts[t], video_id="v", frame_index=t, flow=flows[t] if t else None, event=bool(events[t]))
    row = metric.aggregate()["per_video"]["v"]
    dice = np.array([np_dice(probs[t], gts[t]) for t in range(len(probs))])
    assert row["Dice_event"] == pytest.approx(dice[events].mean(), abs=1e-12)
    assert row["Dice_calm"] == pytest.approx(dice[~events].mean(), abs=1e-12)
    assert row["worst_Dice"] == pytest.approx(dice.min(), abs=1e-12)
    assert row["dice_flicker"] == pytest.approx(dice.std(), abs=1e-12)
    wiou = [np_warping_iou(probs[t], probs[t - 1], flows[t]) for t in range(1, len(probs))]
    assert row["warp_IoU"] == pytest.approx(np.mean(wiou), abs=1e-12)
    # Whole-frame TC is kept for comparability.
    tc = [1 - np.abs(probs[t] - probs[t - 1]).mean() for t in range(1, len(probs))]
    assert row["TC"] == pytest.approx(np.mean(tc), abs=1e-12)


def test_temporal_metric_rejects_a_non_boolean_event():
    with pytest.raises(ValueError, match="event must be a bool"):
        TemporalMetric()(np.zeros((4, 4)), np.zeros((4, 4), np.uint8), event="yes")


def test_evaluate_predictions_reports_event_columns_per_video_then_overall(tmp_path):
    videos = {f"v{k}": make_video(seed=k) for k in range(3)}
    videos["v2"] = (*videos["v2"][:3], np.zeros(7, bool))  # a video without events: Dice_event is NaN there
    items = [(vid, t, p[t], g[t], f[t] if t else None, bool(e[t]))
             for vid, (p, g, f, e) in videos.items() for t in range(len(p))]
    result = evaluate_predictions(iter(items), out_dir=tmp_path, plots=False, progress=False, warp=tm.compiled_warp)
    per_event, per_calm, per_worst = [], [], []
    for vid, (p, g, f, e) in videos.items():
        dice = np.array([np_dice(p[t], g[t]) for t in range(len(p))])
        row = result.per_video[vid]
        if e.any():
            assert row["Dice_event"] == pytest.approx(dice[e].mean(), abs=1e-12)
            per_event.append(dice[e].mean())
        else:
            assert math.isnan(row["Dice_event"])
        assert row["Dice_calm"] == pytest.approx(dice[~e].mean(), abs=1e-12)
        assert row["worst_Dice"] == pytest.approx(dice.min(), abs=1e-12)
        per_calm.append(dice[~e].mean())
        per_worst.append(dice.min())
    assert result.overall["Dice_event"] == pytest.approx(np.mean(per_event), abs=1e-12)
    assert result.overall["Dice_calm"] == pytest.approx(np.mean(per_calm), abs=1e-12)
    assert result.overall["worst_Dice"] == pytest.approx(np.mean(per_worst), abs=1e-12)
    assert [r["event"] for r in result.per_frame if r["video"] == "v0"] == [int(x) for x in videos["v0"][3]]
    header = (tmp_path / "overall.csv").read_text().splitlines()[0].split(",")
    assert {"Dice_event", "Dice_calm", "worst_Dice", "warp_IoU", "TC"} <= set(header)
    with pytest.raises(ValueError, match=r"\(\.\.\., flow, event\)"):
        evaluate_predictions(iter([("v", 0, np.zeros((4, 4)), np.zeros((4, 4)), None, False, 1)]), progress=False)


# ------------------------------------------------------------------------- checkpoint evaluation
class _ImageNet(torch.nn.Module):
    """Logits from the image itself: bright = foreground (the model protocol's three outputs)."""

    def forward(self, x):
        z = 8 * (x[:, :1] - x[:, :1].mean((2, 3), keepdim=True))
        return z, x, torch.nn.functional.avg_pool2d(x, 16)


def test_evaluate_model_picks_up_event_flags_and_exact_flow_from_the_simulator():
    from dtc.data import SyntheticTRUSDataset
    from dtc.data.synth import SynthConfig
    from dtc.engine.evaluate import evaluate_model

    config = SynthConfig(interference_rate=15.0, gain_rate=6.0)
    dataset = SyntheticTRUSDataset(num_videos=1, frames=16, size=(32, 48), T=1, seed=0, split="all", config=config)
    out = evaluate_model(_ImageNet(), dataset, None, device="cpu", batch_size=6, worst=0, progress=False)
    (vid, video), = out["videos"].items()
    events = video["event"].numpy()
    expected_events = [bool(dataset[i]["event"][0]) for i in range(len(dataset))]
    assert events.tolist() == expected_events
    assert events.any() and not events.all(), "the case must hold event and calm frames"
    probs, masks = video["prob"].numpy().astype(np.float64), video["mask"].numpy()
    dice = np.array([np_dice(probs[t], masks[t]) for t in range(len(probs))])
    row = out["suite"].per_video[vid]
    assert row["Dice_event"] == pytest.approx(dice[events].mean(), abs=1e-9)
    assert row["Dice_calm"] == pytest.approx(dice[~events].mean(), abs=1e-9)
    assert out["summary"]["Dice_event"] == pytest.approx(dice[events].mean(), abs=1e-9)
    # The flow between consecutive evaluated frames is the simulator's exact flow.
    frames = video["frame"]
    wiou = [np_warping_iou(probs[k], probs[k - 1], dataset.flow_between(vid, frames[k - 1], frames[k]).astype(np.float64))
            for k in range(1, len(frames))]
    assert row["warp_IoU"] == pytest.approx(np.mean(wiou), abs=1e-9)
    # ... in the items' convention: a window of two frames carries the same flow for its pair.
    pairs = SyntheticTRUSDataset(num_videos=1, frames=16, size=(32, 48), T=2, seed=0, split="all", config=config)
    np.testing.assert_array_equal(dataset.flow_between(vid, 4, 5), pairs[4]["flow"][1].numpy())
    with pytest.raises(KeyError, match="not in the 'all' split"):
        dataset.flow_between("nope", 0, 1)


# --------------------------------------------------------------------------- paired comparison
def np_exact_wilcoxon(d):
    """Two-sided exact signed-rank p-value by enumerating every sign assignment (no ties, no zeros)."""
    d = d[d != 0]
    ranks = np.argsort(np.argsort(np.abs(d))) + 1.0
    w_plus = ranks[d > 0].sum()
    n = len(d)
    total = n * (n + 1) / 2
    stats = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=n)]
    stats = np.array(stats)
    extreme = min(w_plus, total - w_plus)
    return min(1.0, 2 * np.mean(stats <= extreme))


def np_sign_test(d):
    d = d[d != 0]
    n, k = len(d), int((d > 0).sum())
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def test_paired_comparison_matches_numpy():
    from dtc.experiments.results import METRICS, paired_comparison

    rng = np.random.default_rng(0)
    seeds = [0, 1, 2, 3, 4]
    keys = [key for key, *_ in METRICS]
    rows = []
    for arm, shift in (("base", 0.0), ("dtc", 0.01), ("other", -0.02)):
        for s in seeds:
            row = {"run_id": f"{arm}-{s}", "seed": s, "arm": arm, "label": arm}
            row.update({k: 0.8 + shift * (1 + 0.3 * s) + rng.normal(0, 0.004) for k in keys})
            rows.append(row)
    rows.append({**rows[-1], "seed": 9})  # a seed the baseline lacks is not paired
    rows[0]["Dice"] = math.nan             # a NaN on one side drops that pair
    paired = paired_comparison(rows, "base", ["base", "dtc", "other", "missing"])
    assert {r["arm"] for r in paired} == {"dtc", "other"}
    up = {key: u for key, _, u, _ in METRICS}
    for r in paired:
        a = {x["seed"]: x[r["metric"]] for x in rows if x["arm"] == r["arm"]}
        b = {x["seed"]: x[r["metric"]] for x in rows if x["arm"] == "base"}
        common = [s for s in seeds if np.isfinite(a[s]) and np.isfinite(b[s])]
        d = np.array([a[s] - b[s] for s in common])
        assert r["seeds"] == len(common) == (4 if r["metric"] == "Dice" else 5)
        assert r["mean_diff"] == pytest.approx(d.mean(), abs=1e-15)
        better = d if up[r["metric"]] else -d
        assert r["wins"] == int((better > 0).sum()) and r["losses"] == int((better < 0).sum())
        assert r["p_wilcoxon"] == pytest.approx(np_exact_wilcoxon(d), abs=1e-12)
        assert r["p_sign"] == pytest.approx(np_sign_test(d), abs=1e-12)
    # Five seeds all one way: the smallest two-sided p either test can give, 2 / 2^5.
    dtc_dice = next(r for r in paired if r["arm"] == "dtc" and r["metric"] == "Dice_event")
    assert dtc_dice["wins"] == 5 and dtc_dice["p_wilcoxon"] == pytest.approx(0.0625)
    with pytest.raises(ValueError, match="not experiment metrics"):
        paired_comparison(rows, "base", ["dtc"], metrics=("nope",))


def test_paired_comparison_of_identical_arms_has_no_test():
    from dtc.experiments.results import paired_comparison

    rows = [{"seed": s, "arm": arm, "label": arm, "Dice": 0.5} for s in range(3) for arm in ("a", "b")]
    (r,) = paired_comparison(rows, "a", ["b"], metrics=("Dice",))
    assert r["mean_diff"] == 0 and r["wins"] == 0 and math.isnan(r["p_wilcoxon"]) and math.isnan(r["p_sign"])
