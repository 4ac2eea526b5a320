"""`dtc v2i`: the ablation file's smoke preset from the command line (shared S0/S1, results table), a
stage with settings, and one-line errors for bad settings."""
from __future__ import annotations

import json
from pathlib import Path

from dtc.cli.main import main as cli
from dtc.distill.v2i import V2IConfig, load_ablation

ABLATION = Path(__file__).resolve().parents[2] / "experiments" / "ablation-v2i.yaml"


def test_ablation_file_is_valid_and_has_the_arms():
    spec = load_ablation(ABLATION)
    assert {"smoke", "cpu", "gpu"} <= set(spec["presets"])
    assert {"full", "a1-msi-off", "a2-tfd-off", "a2-tfd-hard", "a2-tfd-box", "a2-tfd-moment",
            "a3-cqd-fixed", "a3-cqd-random"} <= set(spec["arms"])
    assert spec["arms"]["full"] == {}  # A2 "edt" and A3 "off" are the defaults, so the arm full is both
    assert (V2IConfig().tfd, V2IConfig().cqd) == ("edt", "off")
    # No two arms train the same student.
    arms = [tuple(sorted((a or {}).items())) for a in spec["arms"].values()]
    assert len(set(arms)) == len(arms)
    assert all(len(spec["presets"][p]["seeds"]) >= 3 for p in ("cpu", "gpu"))
    # The ablation runs on the hard benchmark, with its transient acoustic events.
    assert all(spec["presets"][p]["settings"]["benchmark"] == "events" for p in ("cpu", "gpu"))


def test_smoke_ablation_from_the_cli(tmp_path, capsys):
    out = tmp_path / "abl"
    assert cli(["v2i", "ablation", str(ABLATION), "--preset", "smoke", "--out", str(out),
                "--arms", "full,a1-msi-off"]) == 0
    table = (out / "results.md").read_text()
    assert "| full |" in table and "| a1-msi-off |" in table
    assert "student − image model, Dice" in table and "Clip teacher (full's) − image model" in table
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 2 and rows[0]["image_dice"] == rows[1]["image_dice"]  # S0 shared
    assert sorted(p.name for p in (out / "seed0").iterdir()) == ["a1-msi-off", "full", "s0", "s1-msi", "s1-no-msi"]


def test_bad_settings_are_one_line_errors(tmp_path, capsys):
    assert cli(["v2i", "s0", "--out", str(tmp_path), "tfd=gauss"]) != 0
    assert "v2i.tfd must be" in capsys.readouterr().err
    assert cli(["v2i", "s0", "--out", str(tmp_path), "benchmark=stormy"]) != 0
    assert "v2i.benchmark must be one of ['calm', 'events']" in capsys.readouterr().err
    assert cli(["v2i", "s0", "--out", str(tmp_path), "nonsense"]) != 0
    assert "KEY=VALUE" in capsys.readouterr().err
    assert cli(["v2i", "s2", "--out", str(tmp_path)]) != 0
    assert "run the earlier stage first" in capsys.readouterr().err
