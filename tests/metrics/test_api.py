"""Metric objects (aggregation, presets), evaluate_predictions / CLI outputs, bad input."""
import argparse
import csv

import numpy as np
import pytest

from dtc.metrics import BinaryMetric, SUNSegMetric, TemporalMetric, evaluate_predictions, sunseg
from dtc.metrics.functional import binary_metrics, sunseg_frame


def video(seed, n=6, shape=(32, 40)):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = []
    for t in range(n):
        gt = (yy - 16) ** 2 + (xx - 12 - t) ** 2 < 49
        prob = np.clip(gt * 0.8 + rng.random(shape) * 0.3, 0, 1)
        out.append((prob, gt))
    return out


def test_sunseg_object_per_video_then_over_videos():
    metric = SUNSegMetric(backend="numpy")
    vids = {"a": video(0), "b": video(1, n=4)}
    for vid, frames in vids.items():
        for i, (p, g) in enumerate(frames):
            metric(p, g, video_id=vid, frame_index=i)
    res = metric.aggregate()
    # by hand: drop first/last, mean per video, then over videos
    def s_of(frames):
        return np.mean([sunseg_frame(sunseg.minmax_normalize(p), g, backend="numpy")["Smeasure"] for p, g in frames[1:-1]])
    assert res["per_video"]["a"]["Smeasure"] == pytest.approx(s_of(vids["a"]), abs=1e-14)
    assert res["overall"]["Smeasure"] == pytest.approx((s_of(vids["a"]) + s_of(vids["b"])) / 2, abs=1e-14)
    metric.reset()
    with pytest.raises(ValueError, match="no frames"):
        metric.aggregate()


def test_reference_preset_batch_average_rounded():
    frames = video(2)
    metric = SUNSegMetric(preset="reference", backend="numpy")
    batch1 = np.stack([p for p, _ in frames[:4]]), np.stack([g for _, g in frames[:4]])
    batch2 = np.stack([p for p, _ in frames[4:]]), np.stack([g for _, g in frames[4:]])
    metric(*batch1, video_id="a", frame_index=[0, 1, 2, 3])
    metric(*batch2, video_id="a", frame_index=[4, 5])
    overall = metric.aggregate()["overall"]
    s = [sunseg_frame(sunseg.minmax_normalize(p), g, backend="numpy")["Smeasure"] for p, g in frames]
    expected = round((np.mean(s[:4]) + np.mean(s[4:])) / 2, 3)  # batch means, not frame means, no dropping
    assert overall["Smeasure"] == expected


def test_binary_metric_reference_pools_pixels():
    frames = video(3, n=2)
    m = BinaryMetric(preset="reference", distances=False)
    m(np.stack([p for p, _ in frames]), np.stack([g for _, g in frames]), video_id="v", frame_index=[0, 1])
    pooled = binary_metrics(np.concatenate([p for p, _ in frames]), np.concatenate([g for _, g in frames]))
    assert m.aggregate()["overall"]["Dice"] == round(pooled["Dice"], 3)
    s = BinaryMetric(distances=False)
    for i, (p, g) in enumerate(frames):
        s(p, g, video_id="v", frame_index=i)
    assert s.aggregate()["overall"]["Dice"] == pytest.approx(np.mean([binary_metrics(p, g)["Dice"] for p, g in frames]))


def test_temporal_metric_requires_order_and_aggregates():
    tmet = TemporalMetric()
    frames = video(4)
    for i, (p, g) in enumerate(frames):
        tmet(p, g, video_id="v", frame_index=i, flow=np.zeros((2, *p.shape)))
    agg = tmet.aggregate()["per_video"]["v"]
    tcs = [1 - np.mean(np.abs(frames[i][0] - frames[i - 1][0])) for i in range(1, len(frames))]
    assert agg["TC"] == pytest.approx(np.mean(tcs))
    assert agg["TC_flow"] == pytest.approx(np.mean(tcs))  # zero flow
    with pytest.raises(ValueError, match="frame_index must increase"):
        tmet(frames[0][0], frames[0][1], video_id="v", frame_index=2)


def test_bad_inputs_name_the_argument():
    p, g = video(5, n=1)[0]
    with pytest.raises(ValueError, match="pred and gt must have the same"):
        sunseg_frame(p[:, :-1], g)
    with pytest.raises(ValueError, match="gt must be binary"):
        sunseg_frame(p, g * 0.5 + 0.2)
    bad = p.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="pred contains NaN"):
        sunseg_frame(bad, g)
    with pytest.raises(ValueError, match=r"pred must hold probabilities in \[0, 1\]"):
        sunseg_frame(p * 3 - 1, g)
    with pytest.raises(ValueError, match="backend must be"):
        sunseg_frame(p, g, backend="gpu")
    with pytest.raises(ValueError, match="preset must be one of"):
        SUNSegMetric(preset="paper")
    metric = SUNSegMetric(backend="numpy")
    metric(p, g, video_id="short", frame_index=0)
    metric(p, g, video_id="short", frame_index=1)
    with pytest.raises(ValueError, match="video 'short' has 2 frame"):
        metric.aggregate()
    with pytest.raises(ValueError, match="empty batch"):
        metric(np.zeros((0, 4, 4)), np.zeros((0, 4, 4)))
    with pytest.raises(ValueError, match="yielded no frames"):
        evaluate_predictions(iter([]), progress=False)
    with pytest.raises(ValueError, match="pred_iter must yield"):
        evaluate_predictions(iter([(1, 2)]), progress=False)


def test_evaluate_predictions_writes_tables_and_plots(tmp_path):
    items = [(vid, i, p, g, np.zeros((2, *p.shape))) for vid in ("v1", "v2") for i, (p, g) in enumerate(video(hash(vid) % 7))]
    res = evaluate_predictions(iter(items), out_dir=tmp_path, progress=False, backend="numpy")
    names = sorted(f.name for f in tmp_path.iterdir())
    assert names == ["distribution.png", "metrics_over_time.png", "overall.csv", "overall.md", "per_frame.csv",
                     "per_video.csv", "per_video.md", "sunseg_overall.csv"]
    rows = list(csv.DictReader((tmp_path / "per_frame.csv").open()))
    assert len(rows) == 12 and rows[0]["video"] == "v1"
    per_video = list(csv.DictReader((tmp_path / "per_video.csv").open()))
    assert [r["video"] for r in per_video] == ["v1", "v2"]
    for col in ("Sα", "E^mn_φ", "F^w_β", "Dice", "Sen", "TC", "TC_flow", "warp_IoU", "area_flicker"):
        assert col in per_video[0]
    assert res.overall["Sα"] == pytest.approx(np.mean([float(r["Sα"]) for r in per_video]), abs=1e-5)
    assert (tmp_path / "metrics_over_time.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_on_fixture(sunseg_fixtures_dir, tmp_path, capsys):
    from dtc.cli import evaluate as cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    root = sunseg_fixtures_dir
    args = parser.parse_args(["evaluate", str(root / "Pred/2019-TPAMI-COSNet/CVC-ColonDB-300"),
                              str(root / "GT/CVC-ColonDB-300/GT"), "-o", str(tmp_path), "--no-plots",
                              "--case-decimals", "3"])
    assert args.func(args) == 0
    overall = next(csv.DictReader((tmp_path / "sunseg_overall.csv").open()))
    assert round(float(overall["Smeasure"]), 3) == 0.642 and round(float(overall["meanDic"]), 3) == 0.317
    assert overall["wFmeasure"] == "0.3405"  # mean of the rounded case scores 0.181 and 0.500
    assert "| videos | frames | Sα |" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cli.run(parser.parse_args(["evaluate", str(tmp_path / "nope"), str(root / "GT/CVC-ColonDB-300/GT"), "-o",
                                   str(tmp_path)]))
