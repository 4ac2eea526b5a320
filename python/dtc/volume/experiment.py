"""`dtc xdim experiment FILE.yaml --preset NAME`: the XDim-KD comparison (docs/xdim.md, "Experiment").

For each seed the simulator writes a training and a test set; for each label ratio and seed one teacher
and one set of pseudo-labels are shared by the arms:

    sparse     the 3-D student trained on the labelled slices alone
    teacher2d  the 2-D teacher applied slice by slice
    pseudo     the 3-D student on pseudo-labels (XDim-KD without the correlation loss)
    full       XDim-KD: pseudo-labels + correlation distillation

Each arm's per-volume metrics on the test set go to <out>/rho<ratio>/seed<k>/<arm>/metrics.json; finished
steps are skipped when the command is run again. The table (mean ± std over seeds of the per-seed mean
Dice, HD95 in mm and relative volume error) is written to results.csv and results.md.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

ARMS = {"sparse": "student-sparse", "teacher2d": "teacher", "pseudo": "student-pseudo", "full": "student-full"}
ARM_LABELS = {"sparse": "3-D student, sparse labels only", "teacher2d": "2-D teacher, slice by slice",
              "pseudo": "XDim-KD, pseudo-labels only", "full": "XDim-KD (pseudo-labels + correlation)"}
METRICS = ("dice", "hd95_mm", "volume_error")


def load_spec(path, preset: str) -> dict:
    """The experiment file with `preset`'s settings merged in; checked."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment file not found: {path}")
    spec = yaml.safe_load(path.read_text()) or {}
    presets = spec.get("presets") or {}
    if preset not in presets:
        raise ValueError(f"{path}: no preset {preset!r}; presets: {sorted(presets)}")
    merged = {k: v for k, v in spec.items() if k != "presets"}
    merged.update(presets[preset] or {})
    merged["preset"] = preset
    arms = merged.get("arms") or list(ARMS)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"{path}: unknown arms {unknown}; known: {list(ARMS)}")
    merged["arms"] = arms
    for key in ("seeds", "ratios"):
        if not merged.get(key):
            raise ValueError(f"{path}: preset {preset!r} needs a non-empty {key!r} list")
    if not all(0 < float(r) <= 1 for r in merged["ratios"]):
        raise ValueError(f"{path}: ratios must lie in (0, 1], got {merged['ratios']}")
    merged.setdefault("name", path.stem)
    return merged


def _size(text) -> tuple[int, int]:
    h, w = (int(v) for v in str(text).lower().split("x"))
    return h, w


def _check_settings(out: Path, spec: dict) -> None:
    """Finished steps are skipped on a re-run, so a folder must only ever hold one set of settings: a
    changed preset would otherwise mix old students into the new table without a word."""
    from dtc.io import atomic_write_text

    settings = {k: spec.get(k) for k in ("data", "teacher", "pseudo", "student")}
    path = out / "settings.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored != json.loads(json.dumps(settings)):
            changed = sorted(k for k in settings if stored.get(k) != json.loads(json.dumps(settings[k])))
            raise ValueError(f"{out} holds runs made with other {', '.join(changed)} settings ({path}); "
                             f"use another --out, or delete the folder to start again")
        return
    atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True))


def run_experiment(path, preset: str, out=None, log=print, ratios=None, seeds=None) -> dict:
    """Run (or resume) the experiment; `ratios` / `seeds` restrict it to a subset of the preset's."""
    from dtc.data.synth3d import Synth3DConfig, write_synth3d_dataset
    from dtc.volume import pipeline

    spec = load_spec(path, preset)
    for key, subset in (("ratios", ratios), ("seeds", seeds)):
        if subset:
            extra = [v for v in subset if v not in spec[key]]
            if extra:
                raise ValueError(f"--{key} {extra} are not among preset {preset!r}'s {key} {spec[key]}")
    todo_seeds = seeds or spec["seeds"]
    todo_ratios = ratios or spec["ratios"]
    out = Path(out) if out else Path("runs") / spec["name"] / preset
    _check_settings(out, spec)
    data_cfg = dict(spec.get("data") or {})
    n_train, n_test = int(data_cfg.pop("volumes", 8)), int(data_cfg.pop("test_volumes", 4))
    height, width = _size(data_cfg.pop("size", "128x128"))
    cfg = Synth3DConfig(height=height, width=width, **data_cfg)
    teacher_cfg, pseudo_cfg, student_cfg = (dict(spec.get(k) or {}) for k in ("teacher", "pseudo", "student"))
    for seed in todo_seeds:
        seed = int(seed)
        data = out / "data" / f"seed{seed}"
        for split, n, s in (("train", n_train, seed), ("test", n_test, 1000 + seed)):
            if not (data / split / "meta.json").is_file():
                log(f"simulating {n} {split} volumes (seed {s})")
                write_synth3d_dataset(data / split, n, cfg, seed=s, progress=False)
        for ratio in todo_ratios:
            run = out / f"rho{float(ratio):g}" / f"seed{seed}"
            quiet = lambda msg, run=run: None  # noqa: E731  (per-epoch lines stay out of the summary)
            if not (run / "teacher.pt").is_file() or not (run / "run.json").is_file():
                log(f"[{run}] training the teacher")
                pipeline.train_teacher(data / "train", run, ratio=float(ratio), seed=seed, log=quiet, **teacher_cfg)
            needs_pseudo = any(a in ("pseudo", "full") for a in spec["arms"])
            if needs_pseudo and not (run / "pseudo" / ".done").is_file():
                log(f"[{run}] pseudo-labels")
                pipeline.write_pseudo_labels(run, log=quiet, **pseudo_cfg)
                from dtc.io import atomic_write_text

                atomic_write_text(run / "pseudo" / ".done", "")
            for arm in spec["arms"]:
                if (run / arm / "metrics.json").is_file():
                    continue
                model = ARMS[arm]
                if model.startswith("student-") and not (run / f"{model}.pt").is_file():
                    log(f"[{run}] training the {arm} student")
                    pipeline.train_student(run, model[len("student-"):], log=quiet, **student_cfg)
                summary = pipeline.infer(run, data / "test", run / arm, model=model, log=quiet)
                log(f"[{run}] {arm}: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["mean"].items()))
    return summarise(out, spec)


def summarise(out, spec) -> dict:
    """results.csv / results.md from every finished arm: mean ± std over seeds of the per-seed means."""
    from dtc.io import atomic_write_text

    out = Path(out)
    rows = []
    for ratio in spec["ratios"]:
        for arm in spec["arms"]:
            per_seed = []
            for seed in spec["seeds"]:
                f = out / f"rho{float(ratio):g}" / f"seed{int(seed)}" / arm / "metrics.json"
                if f.is_file():
                    per_seed.append(json.loads(f.read_text())["mean"])
            if not per_seed:
                continue
            row = {"ratio": float(ratio), "arm": arm, "seeds": len(per_seed)}
            for k in METRICS:
                vals = np.array([s[k] for s in per_seed], np.float64)
                row[f"{k}_mean"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
                row[f"{k}_std"] = float(np.nanstd(vals)) if np.isfinite(vals).any() else math.nan
            rows.append(row)
    header = ["ratio", "arm", "seeds"] + [f"{k}_{s}" for k in METRICS for s in ("mean", "std")]
    csv = "\n".join([",".join(header)] + [",".join(str(r[h]) for h in header) for r in rows]) + "\n"
    md = ["| label ratio | arm | seeds | Dice | HD95 (mm) | volume error |", "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {100 * r['ratio']:g} % | {ARM_LABELS[r['arm']]} | {r['seeds']} | "
                  + " | ".join(f"{r[f'{k}_mean']:.3f} ± {r[f'{k}_std']:.3f}" for k in METRICS) + " |")
    verdict = _verdict(rows)
    if verdict:
        md += ["", verdict]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.csv", csv)
    atomic_write_text(out / "results.md", "\n".join(md) + "\n")
    return {"rows": rows, "verdict": verdict, "table": "\n".join(md)}


def _verdict(rows) -> str:
    by = {(r["ratio"], r["arm"]): r for r in rows}
    full, sparse = by.get((0.005, "full")), by.get((0.005, "sparse"))
    if not full or not sparse:
        return ""
    better = full["dice_mean"] > sparse["dice_mean"]
    return (f"At ρ = 0.5 %, full XDim-KD {'beats' if better else 'does not beat'} the sparse-label 3-D student on "
            f"Dice ({full['dice_mean']:.3f} vs {sparse['dice_mean']:.3f}, {full['seeds']} vs {sparse['seeds']} seeds).")
