"""Cross-validated ensembles of an experiment with ``folds: k`` (nnU-Net's way of reporting).

For every arm and fold, the models of all seeds (their ``best.pt``, chosen on the fold's validation
patients) predict that fold's test patients; their probabilities are averaged (mean of probabilities,
optionally with each model's horizontal-flip prediction averaged in: flip TTA). Scored per video
(Dice at 0.5, TC) and pooled over folds, every patient is scored exactly once, by models that never saw it.
Written to ``ensemble.csv`` (per video), ``ensemble.md`` and ``ensemble.tex`` (per arm: mean ± std over videos).
"""
from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np
from torch import nn

from dtc.experiments.spec import TEACHER, Experiment

__all__ = ["ensemble_videos", "evaluate_ensemble"]


class _Flipped(nn.Module):
    """``model`` applied to the horizontally flipped frame, its logits flipped back."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        from dtc.engine.trainer import logits_of

        return logits_of(self.model(x.flip(-1))).flip(-1)


def ensemble_videos(models: list[nn.Module], dataset, *, device, batch_size: int = 8, flip_tta: bool = False) -> dict:
    """:func:`dtc.engine.inference.predict_videos` of the mean probability of ``models`` (each also flipped
    with ``flip_tta``) on ``dataset`` (single frames)."""
    from dtc.engine.inference import predict_videos

    if not models:
        raise ValueError("ensemble_videos: no models to average")
    members = [m for model in models for m in ((model, _Flipped(model)) if flip_tta else (model,))]
    merged = None
    for member in members:
        videos = predict_videos(member.to(device), dataset, device=device, batch_size=batch_size)
        if merged is None:
            merged = {vid: {**v, "prob": v["prob"].double()} for vid, v in videos.items()}
        else:
            for vid, v in videos.items():
                merged[vid]["prob"] += v["prob"].double()
    for v in merged.values():
        v["prob"] = (v["prob"] / len(members)).float()
    return merged


def evaluate_ensemble(experiment: Experiment, out_root: str | os.PathLike, *, device="cpu") -> Optional[dict]:
    """Ensemble every arm over seeds per fold, score the folds' test videos, write the tables; returns
    their paths, or None when some fold of an arm has no trained model yet."""
    from dtc.engine.checkpoint import model_from_checkpoint
    from dtc.engine.data import build_dataset
    from dtc.engine.inference import resolve_device, video_scores
    from dtc.experiments.results import _csv, _tex, _write_if_changed

    if not experiment.folds:
        raise ValueError("evaluate_ensemble: the experiment has no folds")
    device = resolve_device(str(device))
    flip = bool(experiment.evaluation.get("flip_tta"))
    plan = experiment.plan(out_root)
    labels = {TEACHER: "teacher (stage 1)", **{arm: label for arm, (label, _) in experiment.arms.items()}}
    rows = []
    for arm in [TEACHER, *experiment.arms]:
        for fold in range(experiment.folds):
            runs = [r for r in plan if r.arm == arm and r.fold == fold]
            if not runs or not all((r.out_dir / "best.pt").is_file() for r in runs):
                return None
            cfg = runs[0].train_config()
            dataset = build_dataset(cfg, experiment.evaluation["split"], T=1, stride=1)
            models = [model_from_checkpoint(r.out_dir / "best.pt")[0] for r in runs]
            videos = ensemble_videos(models, dataset, device=device, batch_size=experiment.evaluation["batch_size"],
                                     flip_tta=flip)
            for vid, v in sorted(videos.items()):
                s = video_scores(v)
                rows.append({"arm": arm, "label": labels[arm], "fold": fold, "video": vid, "models": len(models),
                             "flip_tta": flip, "Dice": s["dice"], "TC": s["tc"]})
    folder = experiment.folder(out_root)
    summary = []
    for arm in [TEACHER, *experiment.arms]:
        mine = [r for r in rows if r["arm"] == arm]
        row = {"arm": arm, "label": labels[arm], "videos": len(mine)}
        for key in ("Dice", "TC"):
            values = np.array([r[key] for r in mine], float)
            values = values[~np.isnan(values)]
            row[f"{key}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        summary.append(row)
    what = (f"{experiment.folds}-fold cross-validated ensemble: per fold, the mean probability of the "
            f"{len(experiment.seeds)} seed(s)' models" + (" with flip TTA" if flip else "")
            + "; every test video scored once by models that never saw its patient; mean ± std over videos")

    def cell(mean, std, tex=False):
        if math.isnan(mean):
            return "--" if tex else "–"
        if tex:
            return f"${mean:.4f}$" if math.isnan(std) else f"${mean:.4f} \\pm {std:.4f}$"
        return f"{mean:.4f}" + (" ± –" if math.isnan(std) else f" ± {std:.4f}")

    md = [f"# {experiment.name}: ensemble", "", what + ".", "", "| arm | videos | Dice@0.5 ↑ | TC ↑ |", "|---|---|---|---|"]
    md += [f"| {r['label']} | {r['videos']} | {cell(r['Dice_mean'], r['Dice_std'])} | {cell(r['TC_mean'], r['TC_std'])} |"
           for r in summary]
    tex = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{lrrr}", r"\toprule",
           r"Arm & Videos & Dice@0.5 & TC \\", r"\midrule"]
    tex += [f"{_tex(r['label'])} & {r['videos']} & {cell(r['Dice_mean'], r['Dice_std'], True)} & "
            f"{cell(r['TC_mean'], r['TC_std'], True)} \\\\" for r in summary]
    tex += [r"\bottomrule", r"\end{tabular}", r"\caption{" + _tex(what) + ".}", r"\end{table}"]
    paths = {"ensemble_csv": folder / "ensemble.csv", "ensemble_markdown": folder / "ensemble.md",
             "ensemble_latex": folder / "ensemble.tex"}
    _write_if_changed(paths["ensemble_csv"], _csv(rows).encode())
    _write_if_changed(paths["ensemble_markdown"], ("\n".join(md) + "\n").encode())
    _write_if_changed(paths["ensemble_latex"], ("\n".join(tex) + "\n").encode())
    return {k: str(v) for k, v in paths.items()}
