"""dtc experiment: experiment files expand into the planned runs, the runner skips what is finished,
redoes only what an interruption left unfinished, and writes a table whose cells are the per-seed
evaluations' mean and standard deviation."""
from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dtc.experiments import (
    EVALUATION_FILE,
    ExperimentError,
    load_experiment,
    load_results,
    run_experiment,
    run_state,
    select_runs,
)
from dtc.experiments.results import METRICS, aggregate, format_markdown

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TINY = HERE / "tiny.yaml"
PAPER = REPO / "experiments" / "ablation-paper.yaml"


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------- the plan

def test_tiny_plan_layers_sections_and_shares_one_teacher_per_seed(tmp_path):
    exp = load_experiment(TINY, "tiny", ["optim.weight_decay=0.0"])
    plan = exp.plan(tmp_path)
    assert [r.run_id for r in plan] == ["seed0/teacher", "seed1/teacher", "seed0/baseline", "seed0/full",
                                        "seed1/baseline", "seed1/full"]
    root = tmp_path / "tiny-ablation" / "tiny"
    by_id = {r.run_id: r for r in plan}
    teacher = by_id["seed1/teacher"].train_config()
    assert teacher.stage == "teacher" and teacher.optim.epochs == 1 and teacher.optim.lr == 1e-2
    assert teacher.run.out_dir == str(root / "seed1" / "teacher")
    student = by_id["seed1/full"].train_config()
    assert student.stage == "student" and student.optim.epochs == 2 and student.loss == {"ablation": "full"}
    assert student.teacher_checkpoint == str(root / "seed1" / "teacher" / "best.pt")
    assert student.run.seed == 1 and student.data.seed == 1  # the default seed_keys
    assert student.data.height == 48 and student.model.kwargs == {"base": 4}  # from base
    assert student.flow.provider == "gt"  # from the student section (dotted key)
    assert student.optim.weight_decay == 0.0 and teacher.optim.weight_decay == 0.0  # overrides reach every run
    assert by_id["seed0/baseline"].train_config().loss == {"ablation": "seg+kd"}
    assert by_id["seed0/baseline"].label == "+ KD"


@pytest.mark.parametrize("preset", ["cpu-small", "gpu"])
def test_paper_ablation_file_has_the_papers_arms_and_valid_runs(preset, tmp_path):
    from dtc.losses import ABLATIONS

    exp = load_experiment(PAPER, preset)
    arms = ["seg", "seg+kd", "seg+kd+proto", "seg+kd+con", "single-scale-proto", "full"]
    if preset == "cpu-small":  # the CPU budget keeps the baseline, consistency alone and the full method
        arms = ["seg+kd", "seg+kd+con", "full"]
    assert list(exp.arms) == arms
    for arm, (_, section) in exp.arms.items():
        assert section["loss"]["ablation"] in ABLATIONS
    exp.validate(tmp_path)  # every run's config passes TrainConfig.validate
    plan = exp.plan(tmp_path)
    assert len(plan) == len(exp.seeds) * (1 + len(arms))
    cfg = plan[-1].train_config()
    # the event benchmark: events on the students' frames, clean labelled stills for the teacher
    assert cfg.data.benchmark == "events" and cfg.synth_config("train").interference_rate > 0
    assert plan[0].train_config().synth_config("train").interference_rate == 0
    if preset == "cpu-small":
        assert (cfg.data.height, cfg.data.width, cfg.model.name) == (64, 112, "student")
        # enough seeds and test patients per seed that paired differences can be read
        assert len(exp.seeds) >= 5
        from dtc.engine.data import build_dataset

        test = build_dataset(cfg, "test", T=1, stride=1)
        assert len({v["patient_id"] for v in test.videos}) >= 4
    else:
        assert (cfg.data.height, cfg.data.width, cfg.model.name, cfg.flow.provider) == (256, 448, "unet", "farneback")


def test_scientific_notation_is_a_number(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("grid: {a: {loss.ablation: full}}\nteacher: {optim: {lr: 3e-3}}\n")
    exp = load_experiment(path)
    assert exp.plan(tmp_path)[0].train_config().optim.lr == pytest.approx(3e-3)


@pytest.mark.parametrize("text, preset, match", [
    ("grid: {a: {}}\nbogus: 1\n", None, "unknown top-level key"),
    ("seeds: [0]\n", None, "grid must be a non-empty mapping"),
    ("grid: {teacher: {}}\n", None, "other than 'teacher'"),
    ("grid: {a: {stage: teacher}}\n", None, r"must not set \['stage'\]"),
    ("grid: {a: {run: {out_dir: x}}}\n", None, r"run.out_dir"),
    ("grid: {a: {}}\nseeds: [0, 0]\n", None, "lists a seed twice"),
    ("grid: {a: {}}\nseeds: [-1]\n", None, "non-negative integers"),
    ("grid: {a: {}}\npresets: {p: {}}\n", None, "choose one with --preset"),
    ("grid: {a: {}}\npresets: {p: {}}\n", "q", "preset must be one of"),
    ("grid: {a: {}}\npresets: {p: {arms: [b]}}\n", "p", "must list arms of the grid"),
    ("grid: {a: {}}\nevaluation: {split: train}\n", None, "evaluation.split"),
    ("grid: {a: {}}\nevaluation: {baseline: b}\n", None, "evaluation.baseline must be an arm"),
    ("grid: {a: {}}\nname: 'a b'\n", None, "folder-safe"),
    ("- a\n", None, "top level must be a mapping"),
])
def test_malformed_experiment_files_name_the_problem(tmp_path, text, preset, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ExperimentError, match=match):
        load_experiment(path, preset)


def test_bad_config_values_fail_before_anything_trains(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("grid: {a: {loss.ablation: nonsense}}\n")
    exp = load_experiment(path)
    with pytest.raises(ExperimentError, match=r"run seed0/a: loss: .*ablation must be one of"):
        run_experiment(exp, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="experiment file not found"):
        load_experiment(tmp_path / "missing.yaml")
    with pytest.raises(ExperimentError, match="set keys the experiment sets"):
        load_experiment(TINY, "tiny", ["stage=teacher"])
    with pytest.raises(ValueError, match="jobs must be a positive integer"):
        run_experiment(load_experiment(TINY, "tiny"), tmp_path / "out", jobs=0)


def test_only_selects_runs_and_brings_their_teacher(tmp_path):
    plan = load_experiment(TINY, "tiny").plan(tmp_path)
    assert [r.run_id for r in select_runs(plan, ["*/full"])] == ["seed0/teacher", "seed1/teacher", "seed0/full",
                                                                 "seed1/full"]
    assert [r.run_id for r in select_runs(plan, ["seed1/baseline"])] == ["seed1/teacher", "seed1/baseline"]
    with pytest.raises(ExperimentError, match="matches no run"):
        select_runs(plan, ["seed7/*"])


# ------------------------------------------------------------------------------------- the table

def test_aggregate_is_mean_and_sample_std_and_single_seeds_have_no_std():
    def row(arm, seed, dice, fps=100.0):
        r = {"arm": arm, "seed": seed, "label": arm, **{key: 0.5 for key, *_ in METRICS}}
        r.update(Dice_sunseg=dice, FPS=fps)
        return r

    rows = [row("a", 0, 0.6), row("a", 1, 0.8), row("a", 2, 0.7, fps=math.nan), row("b", 0, 0.9)]
    table = aggregate(rows, ["teacher", "a", "b"], {"a": "arm A"})
    assert [r["arm"] for r in table] == ["a", "b"]  # no teacher rows: left out
    a, b = table
    assert a["label"] == "arm A" and a["seeds"] == 3
    assert a["Dice_sunseg_mean"] == pytest.approx(0.7)
    assert a["Dice_sunseg_std"] == pytest.approx(0.1)  # sample std of 0.6, 0.8, 0.7
    assert a["FPS_mean"] == pytest.approx(100.0) and a["FPS_std"] == pytest.approx(0.0)  # NaN left out
    assert b["Dice_sunseg_mean"] == pytest.approx(0.9) and math.isnan(b["Dice_sunseg_std"])
    md = format_markdown(table, title="t")
    assert "| arm A | 3 | 0.7000 ± 0.1000 |" in md
    assert "| b | 1 | 0.9000 ± – |" in md


# ---------------------------------------------------------------------------------------- running

class _Killed(Exception):
    pass


def test_interrupted_experiment_redoes_only_what_is_missing_and_a_finished_one_does_nothing(tmp_path):
    exp = load_experiment(TINY, "tiny")
    folder = exp.folder(tmp_path)

    def kill_seed1_full(run_id, trainer, epoch, step):
        if run_id == "seed1/full" and epoch == 2:
            raise _Killed

    with pytest.raises(_Killed):
        run_experiment(exp, tmp_path, on_step=kill_seed1_full, progress=False)
    states = {r.run_id: run_state(r) for r in exp.plan(tmp_path)}
    assert states == {"seed0/teacher": "finished", "seed1/teacher": "finished", "seed0/baseline": "finished",
                      "seed0/full": "finished", "seed1/baseline": "finished", "seed1/full": "partial"}
    before = _snapshot(folder)

    second = run_experiment(exp, tmp_path, progress=False)
    assert second["runs"] == {"seed0/teacher": "skipped", "seed1/teacher": "skipped", "seed0/baseline": "skipped",
                              "seed0/full": "skipped", "seed1/baseline": "skipped", "seed1/full": "resumed"}
    after = _snapshot(folder)
    changed = sorted(k for k in after if before.get(k) != after[k])
    assert all(k.startswith("seed1/full/") or k in ("results.csv", "results.md", "runs.csv", "paired.csv",
                                                     "paired_videos.csv", "results.tex", "ablation.png")
               for k in changed), changed
    from dtc.engine import load_run_checkpoint

    resumed = load_run_checkpoint(folder / "seed1" / "full" / "last.pt")
    assert resumed["epoch"] == 2 and len(resumed["history"]) == 2
    assert (folder / "seed1" / "full" / "metrics.csv").read_text().count("\n") == 3  # header + 2 epochs, no repeat

    # The table: one row per arm (teacher first), cells the mean and sample std of the evaluation records.
    table, runs = load_results(folder)
    assert [r["arm"] for r in table] == ["teacher", "baseline", "full"]
    assert len(runs) == 6
    for row in table:
        records = [json.loads((folder / f"seed{s}" / row["arm"] / EVALUATION_FILE).read_text())["scores"]
                   for s in (0, 1)]
        for key in ("Dice_sunseg", "TC", "area_flicker", "FPS"):
            values = [rec[key] for rec in records]
            assert row[f"{key}_mean"] == pytest.approx(statistics.mean(values), rel=1e-5, abs=1e-9)
            assert row[f"{key}_std"] == pytest.approx(statistics.stdev(values), rel=1e-5, abs=1e-9)
        assert row["seeds"] == 2
    md = (folder / "results.md").read_text()
    assert "| + KD | 2 |" in md and "dtc experiment run" in md and "--preset tiny" in md
    # Every arm against evaluation.baseline, paired by seed (the numbers are checked in test_event_metrics).
    assert "## Paired by seed against `+ KD`" in md and "| full |" in md.split("## Paired")[1]
    paired = (folder / "paired.csv").read_text().splitlines()
    assert paired[0].startswith("arm,label,baseline,metric,seeds,baseline_mean,arm_mean,mean_diff,wins,losses")
    assert any(line.startswith("full,full,baseline,Dice_calm,2,") for line in paired[1:])
    assert (folder / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Finished: nothing is trained, evaluated or rewritten.
    settled = _snapshot(folder)
    third = run_experiment(exp, tmp_path, progress=False)
    assert set(third["runs"].values()) == {"skipped"}
    assert _snapshot(folder) == settled

    # A lost evaluation is redone alone, without training.
    (folder / "seed0" / "baseline" / EVALUATION_FILE).unlink()
    ckpt_time = (folder / "seed0" / "baseline" / "last.pt").stat().st_mtime_ns
    fourth = run_experiment(exp, tmp_path, progress=False, write_table=False)
    assert [k for k, v in fourth["runs"].items() if v != "skipped"] == ["seed0/baseline"]
    assert fourth["runs"]["seed0/baseline"] == "evaluated"
    assert (folder / "seed0" / "baseline" / "last.pt").stat().st_mtime_ns == ckpt_time

    # More epochs in the file: the runs continue (resume) instead of starting again.
    longer = load_experiment(TINY, "tiny", ["optim.epochs=3"])
    dry = run_experiment(longer, tmp_path, dry_run=True)
    assert set(dry["runs"].values()) == {"would resume"}
    # Another setting in the same folder is refused instead of mixing two configurations in one table.
    other = load_experiment(TINY, "tiny", ["optim.lr=0.5"])
    with pytest.raises(ExperimentError, match=r"trained with another configuration \(optim.lr"):
        run_experiment(other, tmp_path, only=["seed0/teacher"], progress=False)
    with pytest.raises(ExperimentError, match=r"loss.alpha: None in the run, 2.0 in the plan"):
        run_experiment(load_experiment(TINY, "tiny", ["loss.alpha=2.0"]), tmp_path, only=["seed0/full"])
    # A config field that a newer dtc added after the run was trained is not a change (it had the default).
    import yaml

    saved_path = folder / "seed0" / "teacher" / "config.yaml"
    saved = yaml.safe_load(saved_path.read_text())
    del saved["run"]["deterministic"]
    saved_path.write_text(yaml.safe_dump(saved))
    assert run_experiment(exp, tmp_path, only=["seed0/teacher"], progress=False)["runs"] == {"seed0/teacher": "skipped"}


def test_cli_dry_run_status_and_errors(tmp_path, capsys):
    from dtc.cli.main import main

    assert main(["experiment", "run", str(TINY), "--preset", "tiny", "--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "seed0/teacher" in out and "would train" in out
    assert main(["experiment", "status", str(TINY), "--preset", "tiny", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count(" new ") == 6
    assert main(["experiment", "run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)]) == 2
    assert "experiment file not found" in capsys.readouterr().err
    assert main(["experiment", "run", str(TINY), "--out", str(tmp_path)]) == 2
    assert "choose one with --preset" in capsys.readouterr().err
    assert main(["experiment", "table", str(TINY), "--preset", "tiny", "--out", str(tmp_path)]) == 1


@pytest.mark.slow
def test_parallel_jobs_run_each_run_in_its_own_process(tmp_path):
    exp = load_experiment(TINY, "tiny", ["optim.epochs=1"])
    summary = run_experiment(exp, tmp_path, jobs=2, only=["seed0/*", "seed1/*"], progress=False)
    assert set(summary["runs"].values()) == {"done (child process)"}
    folder = exp.folder(tmp_path)
    for run in exp.plan(tmp_path):
        assert run_state(run) == "finished"
        assert f"{run.run_id}: evaluating" in (run.out_dir / "experiment.log").read_text()
    assert (folder / "results.csv").is_file()
    again = run_experiment(exp, tmp_path, jobs=2, progress=False)
    assert set(again["runs"].values()) == {"skipped"}


@pytest.mark.slow
def test_killed_command_line_run_finishes_only_what_is_missing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__import__("dtc").__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "dtc", "experiment", "run", str(TINY), "--preset", "tiny", "--out", str(tmp_path),
           "--only", "seed0/*"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    folder = load_experiment(TINY, "tiny").folder(tmp_path)
    teacher_done = folder / "seed0" / "teacher" / EVALUATION_FILE
    deadline = time.monotonic() + 120
    while not teacher_done.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert teacher_done.exists(), "the teacher never finished"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (folder / "results.csv").exists()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split() for line in out.stdout.splitlines() if line.startswith("  seed"))
    assert lines["seed0/teacher"] == "skipped"
    assert {lines["seed0/baseline"], lines["seed0/full"]} <= {"trained", "resumed", "evaluated", "skipped"}
    assert (folder / "results.csv").is_file()
    assert all(run_state(r) == "finished" for r in select_runs(load_experiment(TINY, "tiny").plan(tmp_path),
                                                                 ["seed0/*"]))


def test_training_signal_maps_on_a_still_window_are_exact():
    """Identical frames and zero flow: M = 1, the (hard) warped target is P_{t-1} binarised, and the local
    prototype mask is the foreground of both frames."""
    from dtc.experiments import training_signal_maps

    class Net(torch.nn.Module):
        """Logits that follow the image (a mixed foreground), the model protocol's three outputs."""

        def forward(self, x):
            logits = 5 * (x[:, :1] - x[:, :1].mean())
            return logits, x, torch.nn.functional.avg_pool2d(x, 16)

    torch.manual_seed(0)
    model = Net()
    frame = torch.rand(3, 32, 48)
    window = {"image": frame.expand(3, 3, 32, 48).clone(), "mask": torch.zeros(3, 1, 32, 48),
              "flow": torch.zeros(3, 2, 32, 48)}
    maps = training_signal_maps(model, window, loss={"warped_target": "hard"})
    assert maps["confidence"].shape == (2, 32, 48) and maps["flow"].shape == (2, 2, 32, 48)
    assert (maps["confidence"] == 1).all()
    fg = (maps["prob"][0] > 0.5).astype("float32")
    assert 0.2 < fg.mean() < 0.8, "a mixed foreground makes the mask checks bite"
    assert (maps["warped_target"][0] == fg).all()
    assert (maps["local_mask"][0] == fg).all()
    assert maps["loss_con"] == pytest.approx(1 - (1 - abs(maps["prob"][1] - fg)).mean(), abs=1e-5)
    assert maps["global_bg_cur"].shape[-2:] == (2, 3)  # bottleneck of a 32x48 input (/16)
    with pytest.raises(ValueError, match="window\\['image'\\] must be \\(T, 3, H, W\\) with T >= 2"):
        training_signal_maps(model, {"image": torch.rand(1, 3, 32, 48)})


def test_training_signal_maps_local_mask_reads_the_binarised_target_under_the_reference_preset():
    """Reference preset: the threshold is the 70 % order statistic (above 0.5 here), and the local mask
    tests the binarised warped previous prediction against it, as the loss does, not W(P_{t-1})."""
    from dtc.experiments import training_signal_maps

    class Net(torch.nn.Module):
        def forward(self, x):
            logits = 5 * (x[:, :1] - x[:, :1].mean())
            return logits, x, torch.nn.functional.avg_pool2d(x, 16)

    torch.manual_seed(1)
    frames = torch.rand(3, 1, 32, 48).expand(3, 3, 32, 48).clone()
    window = {"image": frames, "mask": torch.zeros(3, 1, 32, 48), "flow": torch.zeros(3, 2, 32, 48)}
    maps = training_signal_maps(Net(), window, preset="reference")
    thr = maps["threshold"][:, None, None]
    assert (thr > 0.5).all()
    fg = maps["prob"][1:] > thr
    # Zero flow: the warped target is P_{t-1} binarised at 0.5.
    assert (maps["warped_target"] == (maps["prob"][:-1] > 0.5)).all()
    assert (maps["local_mask"] == (fg & (maps["warped_target"] > thr))).all()
    soft_reading = fg & (maps["prob"][:-1] > thr)
    assert (maps["local_mask"] != soft_reading).any(), "the case must tell the two readings apart"


def test_flicker_series_and_figures():
    from dtc.experiments.plots import ablation_figure, flicker_figure, flicker_series

    prob = torch.zeros(3, 4, 4)
    prob[0, :2] = 0.9   # area 0.5
    prob[1, :1] = 0.9   # area 0.25
    prob[2, :2] = 0.9
    video = {"frame": [0, 1, 2], "prob": prob, "mask": (prob > 0.5).float(), "valid": torch.ones(3, dtype=bool)}
    s = flicker_series(video)
    assert s["area"].tolist() == [0.5, 0.25, 0.5]
    assert math.isnan(s["change"][0]) and s["change"][1:] == pytest.approx([0.9 / 4, 0.9 / 4])
    assert s["dice"].tolist() == [1.0, 1.0, 1.0]
    fig = flicker_figure({"a": {"v": video}, "b": {"v": video}})
    assert len(fig.axes) == 3
    with pytest.raises(ValueError, match="share no video id"):
        flicker_figure({"a": {"v": video}, "b": {"w": video}})
    with pytest.raises(ValueError, match="table is empty"):
        ablation_figure([])


def test_a_second_run_on_a_locked_folder_is_refused_clearly(tmp_path):
    # Issue 12 item 4: two processes on one folder both trained every run into the same files. A second
    # run started while the first holds the folder (from its on_step hook) is refused, naming the folder.
    import fcntl

    exp = load_experiment(TINY, "tiny")
    folder = exp.folder(tmp_path)
    folder.mkdir(parents=True)
    with open(folder / ".lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match=r"is in use by another dtc experiment run; wait"):
            run_experiment(exp, tmp_path, only=["seed0/teacher"], progress=False)
    assert not any(folder.rglob("last.pt"))
