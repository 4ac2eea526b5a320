"""The demo's report: the table of the three models, the selected epochs and the TC comparison; the demo
runs on the event benchmark, its test split carries the event flags, and the plot shades event frames."""
import math

import numpy as np
import torch

from dtc.engine.demo import DEMO_PRESETS, _base_overrides, _shade_events, _test_dataset, write_report


def _scores(dice, tc, epoch):
    return {"Dice": dice, "Dice_event": dice - 0.1, "Dice_calm": dice + 0.01, "worst_Dice": dice - 0.3,
            "warp_IoU": 0.95, "TC": tc, "area_flicker": 0.002, "dice_flicker": 0.01, "S_alpha": 0.9,
            "E_mean": 0.93, "F_w": math.nan, "HD95": 5.0, "FPS": 150.0, "epoch": epoch}


def test_report_table_and_sentence(tmp_path):
    report = {"results": {"teacher": _scores(0.93, 0.991, 9), "baseline": _scores(0.89, 0.992, 3),
                          "dtc": _scores(0.90, 0.995, 7)},
              "benchmark": "events", "test_videos": ["002_axi", "002_sag"], "device": "cpu", "minutes": 2.5}
    write_report(tmp_path, report, "small")
    text = (tmp_path / "report.md").read_text()
    assert "benchmark `events`" in text
    assert ("| model | Dice@0.5 ↑ | Dice event frames ↑ | Dice calm frames ↑ | worst-frame Dice ↑ | warping IoU ↑ "
            "| TC ↑ |") in text and "epoch (best val Dice) |" in text
    assert "| dtc | 0.9000 | 0.8000 | 0.9100 | 0.6000 | 0.9500 | 0.9950 |" in text
    assert text.splitlines()[8].endswith("| nan | 5.0000 | 150 | 7 |")
    assert "temporal consistency is 0.9950 against the per-frame baseline's 0.9920 (+0.0030)" in text
    assert "pseudo_source=teacher" in text


def test_demo_trains_and_tests_on_the_event_benchmark(tmp_path):
    from dtc.engine import load_config

    for name, preset in DEMO_PRESETS.items():
        assert preset.benchmark == "events", name
    p = DEMO_PRESETS["small"]
    base = _base_overrides(p, tmp_path, 0, "cpu")
    assert "data.benchmark=events" in base
    student = load_config(None, [*base, "stage=student"])
    teacher = load_config(None, [*base, "stage=teacher"])
    # stage-2 frames carry events; the teacher's labelled stills are clean
    assert student.synth_config("train").interference_rate > 0
    assert teacher.synth_config("train").interference_rate == 0
    # the test split is rendered with events, and its items say which frames an event touched
    small = DEMO_PRESETS["small"].__class__(**{**DEMO_PRESETS["small"].__dict__, "height": 64, "width": 112,
                                               "frames": 16})
    test = _test_dataset(small, 0)
    assert test.config.interference_rate > 0
    flags = torch.cat([test[i]["event"] for i in range(len(test))])
    assert flags.dtype == torch.bool and flags.any() and not flags.all()


def test_event_frames_are_shaded_one_band_per_run():
    from matplotlib.figure import Figure

    fig = Figure()
    axes = fig.subplots(1, 2)
    _shade_events(axes, np.arange(10), [False, True, True, False, False, True, False, False, True, True])
    for ax in axes:
        spans = [p.get_x() for p in ax.patches]
        assert spans == [0.5, 4.5, 7.5]
        assert [p.get_width() for p in ax.patches] == [2.0, 1.0, 2.0]


def test_seed_summary_is_mean_std_and_paired_by_seed(tmp_path):
    import pytest

    from dtc.engine.demo import run_demo, summarise_seeds, write_seed_report

    def report(base, dtc):
        return {"results": {"teacher": _scores(0.9, 0.99, 5), "baseline": _scores(base, 0.99, 3),
                            "dtc": {**_scores(dtc, 0.995, 4), "dice_flicker": 0.005}}}

    summary = summarise_seeds({0: report(0.80, 0.82), 1: report(0.85, 0.84), 2: report(0.70, 0.75)})
    assert summary["seeds"] == [0, 1, 2]
    assert summary["table"]["dtc"]["Dice"]["mean"] == pytest.approx(np.mean([0.82, 0.84, 0.75]))
    assert summary["table"]["dtc"]["Dice"]["std"] == pytest.approx(np.std([0.82, 0.84, 0.75], ddof=1))
    assert summary["paired"]["Dice"] == {"mean_difference": pytest.approx(np.mean([0.02, -0.01, 0.05])),
                                         "dtc_better_seeds": 2, "seeds": 3}
    # lower is better for flicker: DTC's 0.005 beats the baseline's 0.01 in every seed
    assert summary["paired"]["dice_flicker"]["dtc_better_seeds"] == 3
    summary["minutes"] = 4.0
    write_seed_report(tmp_path, summary, "small")
    text = (tmp_path / "report.md").read_text()
    assert "3 seeds" in text and f"| dtc | {np.mean([0.82, 0.84, 0.75]):.4f} ± " in text
    assert "+0.0200 (2/3)" in text and "-0.0050 (3/3)" in text
    with pytest.raises(ValueError, match="seeds must be a positive integer"):
        run_demo(tmp_path / "x", seeds=0)
