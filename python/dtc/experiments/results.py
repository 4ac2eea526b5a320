"""The results table of an experiment: per arm, mean ± std over seeds of every reported metric.

Convention:
    ``Dice``, ``Sen`` are the SUN-SEG toolbox's threshold-averaged values (256 thresholds, per video then
    over videos) as in the paper's tables; ``Dice@0.5`` is the Dice at threshold 0.5. ``TC`` is
    ``1 - mean|P_t - P_{t-1}|``; the flickers are standard deviations over time of the predicted area
    (fraction of the frame) and of the per-frame Dice, per video, averaged over videos. ``FPS`` is batch-1
    inference on the evaluation device. ``std`` is the sample standard deviation over seeds (ddof 1);
    with one seed it is undefined (empty in the CSV, ``–`` in Markdown).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np

from dtc.experiments.spec import TEACHER, Experiment
from dtc.io import atomic_write_bytes

__all__ = ["METRICS", "canonical_command", "collect_runs", "aggregate", "write_results", "load_results", "format_markdown"]

# (key in evaluation.json scores, column name, higher is better, decimals)
METRICS = (
    ("Dice_sunseg", "Dice", True, 4),
    ("S_alpha", "Sα", True, 4),
    ("E_mean", "E^mn_φ", True, 4),
    ("F_w", "F^w_β", True, 4),
    ("Sen", "Sen", True, 4),
    ("Dice", "Dice@0.5", True, 4),
    ("TC", "TC", True, 4),
    ("area_flicker", "area flicker", False, 4),
    ("dice_flicker", "Dice flicker", False, 4),
    ("FPS", "FPS", True, 0),
)


def collect_runs(experiment: Experiment, out_root: str | os.PathLike) -> list[dict]:
    """One row per evaluated run of the plan (teachers included): ``run_id, seed, arm, label`` and the scores."""
    from dtc.experiments.runner import EVALUATION_FILE

    rows = []
    for run in experiment.plan(out_root):
        path = run.out_dir / EVALUATION_FILE
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
            scores = record["scores"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise ValueError(f"{path} is not an evaluation record of dtc experiment ({exc})") from exc
        rows.append({"run_id": run.run_id, "seed": run.seed, "arm": run.arm, "label": run.label,
                     "device": record.get("device", "?"),
                     **{key: float(scores.get(key, math.nan)) for key, *_ in METRICS}})
    return rows


def aggregate(rows: list[dict], order: list[str], labels: dict[str, str]) -> list[dict]:
    """Per arm in ``order`` (arms without rows left out): ``arm, label, seeds, <key>_mean, <key>_std``."""
    table = []
    for arm in order:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue
        row = {"arm": arm, "label": labels.get(arm, arm), "seeds": len(mine)}
        for key, *_ in METRICS:
            values = np.array([r[key] for r in mine], dtype=float)
            values = values[~np.isnan(values)]
            row[f"{key}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        table.append(row)
    return table


def _csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else
                             (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in row.items()})
    return buf.getvalue()


def _cell(mean: float, std: float, decimals: int) -> str:
    if math.isnan(mean):
        return "–"
    text = f"{mean:.{decimals}f}"
    return text + (" ± –" if math.isnan(std) else f" ± {std:.{decimals}f}")


def format_markdown(table: list[dict], *, title: str, notes: list[str] = ()) -> str:
    """The aggregated table as Markdown (``mean ± std`` cells, arrows for the better direction)."""
    head = ["arm", "seeds"] + [f"{name} {'↑' if up else '↓'}" for _, name, up, _ in METRICS]
    lines = [f"# {title}", "", *notes, "" if notes else None, "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    lines = [line for line in lines if line is not None]
    for row in table:
        cells = [row["label"], str(row["seeds"])]
        cells += [_cell(row[f"{key}_mean"], row[f"{key}_std"], dec) for key, _, _, dec in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_if_changed(path: Path, data: bytes) -> bool:
    # An unchanged table is not rewritten: a second run of a finished experiment touches no file.
    if path.is_file() and path.read_bytes() == data:
        return False
    atomic_write_bytes(path, data)
    return True


def canonical_command(experiment: Experiment, out_root: str | os.PathLike) -> str:
    """The ``dtc experiment run`` command that (re)produces this experiment folder."""
    import shlex

    parts = ["dtc", "experiment", "run", str(experiment.path)]
    if experiment.preset:
        parts += ["--preset", experiment.preset]
    if Path(out_root) != Path("runs"):
        parts += ["--out", str(out_root)]
    for item in experiment.overrides:
        parts += ["--set", item]
    return " ".join(shlex.quote(p) for p in parts)


def write_results(experiment: Experiment, out_root: str | os.PathLike, *, command: Optional[str] = None) -> dict:
    """Collect every evaluated run and write ``results.csv``, ``results.md``, ``runs.csv`` and
    ``ablation.png`` into the experiment folder. Returns their paths (None when no run is evaluated yet)."""
    folder = experiment.folder(out_root)
    rows = collect_runs(experiment, out_root)
    if not rows:
        return None
    order = [TEACHER, *experiment.arms]
    labels = {TEACHER: "teacher (stage 1)", **{arm: label for arm, (label, _) in experiment.arms.items()}}
    table = aggregate(rows, order, labels)
    if command is None:
        command = canonical_command(experiment, out_root)
    devices = sorted({r["device"] for r in rows})
    expected = len(experiment.seeds) * (1 + len(experiment.arms))
    notes = [f"Experiment `{experiment.name}`" + (f", preset `{experiment.preset}`" if experiment.preset else "")
             + f": {len(rows)} of {expected} runs evaluated on the `{experiment.evaluation['split']}` split, seeds "
             f"{experiment.seeds}, device(s) {', '.join(devices)}.",
             f"Produced by `{command}`.",
             "Cells are mean ± sample std over seeds. Dice and Sen are SUN-SEG threshold-averaged; Dice@0.5 at "
             "threshold 0.5; TC = 1 − mean|P_t − P_t−1|; flickers are the std over time of the predicted area and "
             "of Dice (lower is steadier); FPS is batch 1 on the evaluation device."]
    paths = {"csv": folder / "results.csv", "markdown": folder / "results.md", "runs": folder / "runs.csv",
             "plot": folder / "ablation.png"}
    changed = _write_if_changed(paths["csv"], _csv(table).encode())
    changed |= _write_if_changed(paths["runs"], _csv(rows).encode())
    title = f"{experiment.name} ({experiment.preset})" if experiment.preset else experiment.name
    changed |= _write_if_changed(paths["markdown"], format_markdown(table, title=title, notes=notes).encode())
    if changed or not paths["plot"].is_file():
        from dtc.experiments.plots import ablation_figure, figure_png

        atomic_write_bytes(paths["plot"], figure_png(ablation_figure(table, title=title)))
    return {k: str(v) for k, v in paths.items()}


def load_results(folder: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """``(table, runs)`` read back from an experiment folder's ``results.csv`` and ``runs.csv``."""
    folder = Path(folder)
    out = []
    for name in ("results.csv", "runs.csv"):
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; run `dtc experiment run` for this experiment first")
        rows = []
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                rows.append({k: _parse(k, v) for k, v in row.items()})
        out.append(rows)
    return out[0], out[1]


def _parse(key: str, value: str):
    if key in ("arm", "label", "run_id", "device"):
        return value
    if value == "":
        return math.nan
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if key in ("seed", "seeds") else number
