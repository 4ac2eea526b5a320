"""The results table of an experiment: per arm, mean ± std over seeds of every reported metric.

Convention:
    ``Dice``, ``Sen`` are the SUN-SEG toolbox's threshold-averaged values (256 thresholds, per video then
    over videos) as in the paper's tables; ``Dice@0.5`` is the Dice at threshold 0.5. ``TC`` is
    ``1 - mean|P_t - P_{t-1}|``; the flickers are standard deviations over time of the predicted area
    (fraction of the frame) and of the per-frame Dice, per video, averaged over videos. ``FPS`` is batch-1
    inference on the evaluation device. ``std`` is the sample standard deviation over seeds (ddof 1);
    with one seed it is undefined (empty in the CSV, ``–`` in Markdown).

    Event-aware columns (the event benchmark): ``Dice@0.5 event``/``calm`` are the mean Dice at 0.5 over
    the frames a simulated transient event touched / did not touch, ``worst-frame Dice`` each video's
    lowest frame Dice, ``warping IoU`` is ``IoU(B_t, W(B_{t-1}))`` on binary masks with the exact flow;
    all per video, then over videos.

    Paired comparison (``paired.csv`` and the second table of ``results.md``): every arm minus the
    experiment's ``evaluation.baseline`` arm, seed by seed (the same data, split and teacher), on the
    seeds both have: the mean difference, the number of seeds where the arm is better (in the metric's
    direction), and two-sided p-values of the Wilcoxon signed-rank test (exact) and of the sign test.

    Paired over videos (``paired_videos.csv``, ``results.tex`` and the last table of ``results.md``): every
    arm against the baseline on the same test videos of the same seeds, ``(seed, video)`` pairs pooled,
    with scipy's two-sided Wilcoxon signed-rank test; ``results.tex`` is the main table as a LaTeX
    ``tabular`` (booktabs) with ``mean ± std`` and that p-value next to Dice@0.5 and TC.
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

__all__ = ["METRICS", "PAIRED_METRICS", "VIDEO_METRICS", "paired_over_videos", "format_latex", "canonical_command", "collect_runs", "aggregate", "paired_comparison",
           "write_results", "load_results", "format_markdown", "format_paired_markdown"]

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
    ("Dice_event", "Dice@0.5 event", True, 4),
    ("Dice_calm", "Dice@0.5 calm", True, 4),
    ("worst_Dice", "worst-frame Dice", True, 4),
    ("warp_IoU", "warping IoU", True, 4),
    ("FPS", "FPS", True, 0),
)

# The metrics compared arm against baseline, paired by seed (FPS is a property of the machine).
PAIRED_METRICS = ("Dice", "Dice_event", "Dice_calm", "worst_Dice", "dice_flicker", "warp_IoU", "TC",
                  "area_flicker", "Dice_sunseg")


# The per-video scores evaluation.json keeps (runner.py), tested arm against baseline over videos.
VIDEO_METRICS = (("Dice", "Dice@0.5", True), ("TC", "TC", True))


def collect_videos(experiment: Experiment, out_root: str | os.PathLike) -> dict:
    """``{(arm, (seed, fold)): {video: {metric: value}}}`` from the evaluated runs' per-video scores."""
    from dtc.experiments.runner import EVALUATION_FILE

    out = {}
    for run in experiment.plan(out_root):
        path = run.out_dir / EVALUATION_FILE
        if path.is_file():
            per_video = json.loads(path.read_text()).get("per_video")
            if per_video:
                out[(run.arm, (run.seed, run.fold))] = per_video
    return out


def paired_over_videos(videos: dict, baseline: str, arms: list[str], labels: Optional[dict] = None) -> list[dict]:
    """Per arm and metric of :data:`VIDEO_METRICS`: ``n`` (seed, video) pairs shared with the baseline,
    ``mean_diff`` (arm − baseline) and ``p_wilcoxon`` (scipy, two-sided; NaN with fewer than 2 non-zero
    differences)."""
    from scipy import stats

    labels = labels or {}
    rows = []
    for arm in arms:
        if arm == baseline:
            continue
        for key, name, _ in VIDEO_METRICS:
            diffs = []
            for (a, seed), per_video in sorted(videos.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
                base = videos.get((baseline, seed))
                if a != arm or base is None:
                    continue
                for vid, scores in sorted(per_video.items()):
                    if vid in base and not (math.isnan(scores[key]) or math.isnan(base[vid][key])):
                        diffs.append(scores[key] - base[vid][key])
            diffs = np.array(diffs, dtype=float)
            p = math.nan
            if np.count_nonzero(diffs) >= 2:
                p = float(stats.wilcoxon(diffs, zero_method="wilcox", alternative="two-sided").pvalue)
            rows.append({"arm": arm, "label": labels.get(arm, arm), "metric": name, "n": len(diffs),
                         "mean_diff": float(diffs.mean()) if len(diffs) else math.nan, "p_wilcoxon": p})
    return rows


def _tex(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                          ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(char, escaped)
    return text


def format_latex(table: list[dict], paired_videos: list[dict], *, caption: str, baseline_label: Optional[str]) -> str:
    """The main table as a LaTeX ``table`` (booktabs): ``mean ± std`` per metric and, next to Dice@0.5 and
    TC, the Wilcoxon p-value over videos against the baseline."""
    columns = [("Dice", "Dice_sunseg", 4), ("Dice@0.5", "Dice", 4), ("TC", "TC", 4),
               ("Dice flicker", "dice_flicker", 4), ("area flicker", "area_flicker", 4), ("FPS", "FPS", 0)]
    p_of = {(r["arm"], r["metric"]): r["p_wilcoxon"] for r in paired_videos}
    head = ["Arm", "Seeds"]
    for name, _, _ in columns:
        head.append(_tex(name))
        if name in ("Dice@0.5", "TC"):
            head.append(f"$p$ ({_tex(name)})")
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule",
             " & ".join(head) + r" \\", r"\midrule"]
    for row in table:
        cells = [_tex(row["label"]), str(row["seeds"])]
        for name, key, dec in columns:
            mean, std = row[f"{key}_mean"], row[f"{key}_std"]
            cells.append("--" if math.isnan(mean) else
                         f"${mean:.{dec}f}" + ("$" if math.isnan(std) else f" \\pm {std:.{dec}f}$"))
            if name in ("Dice@0.5", "TC"):
                p = p_of.get((row["arm"], name), math.nan)
                cells.append("--" if math.isnan(p) else f"{p:.3g}")
        lines.append(" & ".join(cells) + r" \\")
    note = (f" $p$: two-sided Wilcoxon signed-rank test over test videos (all seeds) against {_tex(baseline_label)}."
            if baseline_label else "")
    lines += [r"\bottomrule", r"\end{tabular}",
              r"\caption{" + _tex(caption) + ". Mean $\\pm$ sample std over seeds." + note + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


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
        rows.append({"run_id": run.run_id, "seed": run.seed, "fold": run.fold, "arm": run.arm, "label": run.label,
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


def _paired_tests(diffs: np.ndarray) -> tuple[float, float]:
    """Two-sided p-values of the exact Wilcoxon signed-rank test and of the sign test on paired
    differences; NaN when every difference is zero (nothing to test)."""
    from scipy import stats

    nonzero = diffs[diffs != 0]
    if len(nonzero) == 0:
        return math.nan, math.nan
    wilcoxon = float(stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided", method="exact").pvalue)
    sign = float(stats.binomtest(int((nonzero > 0).sum()), len(nonzero), 0.5, alternative="two-sided").pvalue)
    return wilcoxon, sign


def paired_comparison(rows: list[dict], baseline: str, arms: list[str], labels: Optional[dict] = None,
                      metrics=PAIRED_METRICS) -> list[dict]:
    """Each arm of ``arms`` (the baseline itself and arms without runs skipped) against ``baseline``,
    paired by seed: one row per (arm, metric) with ``seeds`` (pairs with both values finite),
    ``baseline_mean``, ``arm_mean``, ``mean_diff`` (arm − baseline), ``wins`` (seeds where the arm is
    better in the metric's direction), ``losses``, ``p_wilcoxon`` and ``p_sign`` (two-sided)."""
    labels = labels or {}
    direction = {key: up for key, _, up, _ in METRICS}
    unknown = [m for m in metrics if m not in direction]
    if unknown:
        raise ValueError(f"metrics {unknown} are not experiment metrics; known: {list(direction)}")
    # Paired by seed (and fold under cross-validation: the same teacher and test patients).
    base = {(r["seed"], r.get("fold")): r for r in rows if r["arm"] == baseline}
    out = []
    for arm in arms:
        if arm == baseline:
            continue
        mine = {(r["seed"], r.get("fold")): r for r in rows if r["arm"] == arm}
        seeds = sorted(set(mine) & set(base))
        if not seeds:
            continue
        for key in metrics:
            pairs = [(mine[s][key], base[s][key]) for s in seeds
                     if math.isfinite(mine[s][key]) and math.isfinite(base[s][key])]
            a = np.array([p[0] for p in pairs], float)
            b = np.array([p[1] for p in pairs], float)
            diffs = a - b
            better = diffs if direction[key] else -diffs
            p_wilcoxon, p_sign = _paired_tests(diffs) if len(diffs) else (math.nan, math.nan)
            out.append({"arm": arm, "label": labels.get(arm, arm), "baseline": baseline, "metric": key,
                        "seeds": len(diffs),
                        "baseline_mean": float(b.mean()) if len(b) else math.nan,
                        "arm_mean": float(a.mean()) if len(a) else math.nan,
                        "mean_diff": float(diffs.mean()) if len(diffs) else math.nan,
                        "wins": int((better > 0).sum()), "losses": int((better < 0).sum()),
                        "p_wilcoxon": p_wilcoxon, "p_sign": p_sign})
    return out


def format_paired_markdown(paired: list[dict], baseline_label: str) -> str:
    """The paired comparison as Markdown: one row per arm, per metric ``Δ mean (wins/seeds, p)``."""
    if not paired:
        return ""
    names = {key: name for key, name, _, _ in METRICS}
    ups = {key: up for key, _, up, _ in METRICS}
    metrics = list(dict.fromkeys(r["metric"] for r in paired))
    head = ["arm"] + [f"Δ {names[m]} {'↑' if ups[m] else '↓'}" for m in metrics]
    lines = [f"## Paired by seed against `{baseline_label}`", "",
             "Each cell: mean of (arm − baseline) over seeds; in brackets the seeds where the arm is better / "
             "seeds compared, and the two-sided exact Wilcoxon signed-rank p-value (sign-test p in `paired.csv`).",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in dict.fromkeys(r["arm"] for r in paired):
        cells = [next(r["label"] for r in paired if r["arm"] == arm)]
        for m in metrics:
            r = next((r for r in paired if r["arm"] == arm and r["metric"] == m), None)
            if r is None or not r["seeds"]:
                cells.append("–")
                continue
            p = "–" if math.isnan(r["p_wilcoxon"]) else f"{r['p_wilcoxon']:.3g}"
            cells.append(f"{r['mean_diff']:+.4f} ({r['wins']}/{r['seeds']}, p {p})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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


def _format_video_pairs_markdown(rows: list[dict], baseline_label: str) -> str:
    lines = [f"## Paired over videos against {baseline_label}", "",
             "Arm minus baseline on the same test videos of the same seeds; two-sided Wilcoxon signed-rank p (scipy).",
             "", "| arm | metric | pairs | mean difference | p |", "|---|---|---|---|---|"]
    for r in rows:
        diff = "–" if math.isnan(r["mean_diff"]) else f"{r['mean_diff']:+.4f}"
        p = "–" if math.isnan(r["p_wilcoxon"]) else f"{r['p_wilcoxon']:.3g}"
        lines.append(f"| {r['label']} | {r['metric']} | {r['n']} | {diff} | {p} |")
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
    baseline = experiment.evaluation.get("baseline")
    paired = paired_comparison(rows, baseline, list(experiment.arms), labels) if baseline else []
    changed = _write_if_changed(paths["csv"], _csv(table).encode())
    changed |= _write_if_changed(paths["runs"], _csv(rows).encode())
    if paired:
        paths["paired"] = folder / "paired.csv"
        changed |= _write_if_changed(paths["paired"], _csv(paired).encode())
    title = f"{experiment.name} ({experiment.preset})" if experiment.preset else experiment.name
    markdown = format_markdown(table, title=title, notes=notes)
    if paired:
        markdown += "\n" + format_paired_markdown(paired, labels.get(baseline, baseline))
    paired_videos = paired_over_videos(collect_videos(experiment, out_root), baseline, list(experiment.arms),
                                       labels) if baseline else []
    if paired_videos:
        paths["paired_videos"] = folder / "paired_videos.csv"
        changed |= _write_if_changed(paths["paired_videos"], _csv(paired_videos).encode())
        markdown += "\n" + _format_video_pairs_markdown(paired_videos, labels.get(baseline, baseline))
    paths["latex"] = folder / "results.tex"
    changed |= _write_if_changed(paths["latex"], format_latex(
        table, paired_videos, caption=title, baseline_label=labels.get(baseline, baseline) if baseline else None).encode())
    changed |= _write_if_changed(paths["markdown"], markdown.encode())
    if changed or not paths["plot"].is_file():
        from dtc.experiments.plots import ablation_figure, figure_png

        atomic_write_bytes(paths["plot"], figure_png(ablation_figure(table, title=title, runs=rows)))
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
    if key in ("arm", "label", "run_id", "device", "baseline", "metric"):
        return value
    if value == "":
        return math.nan
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if key in ("seed", "seeds", "wins", "losses") else number
