"""The demo's report: the table of the three models, the selected epochs and the TC comparison."""
import math

from dtc.engine.demo import write_report


def _scores(dice, tc, epoch):
    return {"Dice": dice, "TC": tc, "area_flicker": 0.002, "dice_flicker": 0.01, "S_alpha": 0.9, "E_mean": 0.93,
            "F_w": math.nan, "HD95": 5.0, "FPS": 150.0, "epoch": epoch}


def test_report_table_and_sentence(tmp_path):
    report = {"results": {"teacher": _scores(0.93, 0.991, 9), "baseline": _scores(0.89, 0.992, 3),
                          "dtc": _scores(0.90, 0.995, 7)},
              "test_videos": ["002_axi", "002_sag"], "device": "cpu", "minutes": 2.5}
    write_report(tmp_path, report, "small")
    text = (tmp_path / "report.md").read_text()
    assert "| model | Dice@0.5 ↑ | TC ↑ |" in text and "epoch (best val Dice) |" in text
    assert "| dtc | 0.9000 | 0.9950 |" in text and text.splitlines()[8].endswith("| nan | 5.0000 | 150 | 7 |")
    assert "temporal consistency is 0.9950 against the per-frame baseline's 0.9920 (+0.0030)" in text
    assert "pseudo_source=teacher" in text
