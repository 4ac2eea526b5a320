"""Experiment files: a declarative grid of training runs, expanded into one plan.

An experiment file (YAML) describes a two-stage study::

    name: ablation-paper
    seeds: [0, 1, 2]
    seed_keys: [run.seed, data.seed]     # config keys each seed is written to (default both)
    base:    {data: {...}, model: {...}} # every run (teacher and students)
    teacher: {optim: {...}}              # stage 1, trained ONCE per seed and shared by every arm
    student: {optim: {...}, flow: {...}} # stage 2, every arm
    grid:                                # named arms: stage-2 overrides (+ an optional display label)
      seg:  {label: "L_seg", loss: {ablation: seg}}
      full: {label: "full", loss: {ablation: full}}
    evaluation: {batch_size: 8, baseline: seg}  # baseline: the arm the others are compared with, by seed
    presets:                             # size variants; each may override seeds, arms and any section
      cpu-small: {seeds: [0, 1], base: {...}, teacher: {...}, student: {...}}

Sections are nested mappings of :class:`dtc.engine.TrainConfig` keys; a dotted key (``data.height: 96``)
is the same as the nested form. Later layers win: ``base`` < ``teacher``/``student`` < arm < preset
sections (preset ``base`` < preset ``teacher``/``student``) < command-line ``key=value`` overrides.

Convention:
    Runs live under ``<out>/<name>/<preset>/seed<k>/<arm>/`` (the teacher under ``.../seed<k>/teacher/``);
    a run id is ``seed<k>/<arm>``. Students start from (and distil) their seed's ``teacher/best.pt``.

    ``folds: k`` (top level or in a preset) runs patient-level k-fold cross-validation: every seed and
    arm (teacher included) is trained once per fold under ``seed<s>/fold<f>/<arm>`` with
    ``data.folds=k, data.fold=f``, so a fold's test patients are never seen in its training or model
    selection. With folds, ``seed_keys`` defaults to ``[run.seed]``: the data (and so each fold's test
    patients) stay the same across seeds, which the ensemble over seeds needs (``evaluation.ensemble``,
    on by default with folds; ``evaluation.flip_tta`` adds the horizontal-flip average).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

__all__ = ["Experiment", "RunSpec", "load_experiment", "ExperimentError", "TEACHER"]

TEACHER = "teacher"
_TOP_KEYS = {"name", "description", "seeds", "folds", "seed_keys", "base", "teacher", "student", "grid", "evaluation",
             "presets"}
_PRESET_KEYS = {"description", "seeds", "folds", "arms", "base", "teacher", "student", "evaluation"}
_EVAL_KEYS = {"batch_size", "split", "baseline", "ensemble", "flip_tta"}
# Keys the experiment sets itself; an arm or preset that set them would break the plan's layout.
_RESERVED = {"stage", "run.out_dir", "teacher_checkpoint", "data.folds", "data.fold"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]*$")


class ExperimentError(ValueError):
    """The experiment file is malformed (the message names the file and the key)."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; experiment files are full of learning rates written so."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."))


@dataclass(frozen=True)
class RunSpec:
    """One training run of the plan: the resolved config dict and where it lives."""

    run_id: str                 # "seed<k>/<arm>" (the teacher's arm is "teacher")
    seed: int
    arm: str                    # TEACHER or a grid arm
    label: str                  # display name of the arm
    out_dir: Path
    config: dict                # nested TrainConfig dict, run.out_dir and stage included
    depends_on: Optional[str] = None  # the run id of the seed's teacher (students only)
    fold: Optional[int] = None  # with ``folds``: the cross-validation fold whose patients are the test split

    @property
    def epochs(self) -> int:
        return int(self.config.get("optim", {}).get("epochs", 10))

    def train_config(self):
        """The validated-on-use :class:`dtc.engine.TrainConfig` of this run."""
        from dtc.engine import load_config

        return load_config(None, None, defaults=self.config)


@dataclass
class Experiment:
    """A loaded experiment file, resolved for one preset (see the module docstring)."""

    name: str
    path: Path
    preset: Optional[str]
    seeds: list
    seed_keys: list
    base: dict
    teacher: dict
    student: dict
    arms: dict                  # arm -> (label, overrides), in file order
    evaluation: dict
    overrides: list = field(default_factory=list)
    description: str = ""
    folds: Optional[int] = None  # patient-level k-fold cross-validation

    def folder(self, out_root: str | os.PathLike) -> Path:
        """``<out_root>/<name>/<preset>``: where this experiment's runs and table live."""
        return Path(out_root) / self.name / (self.preset or "default")

    def plan(self, out_root: str | os.PathLike) -> list[RunSpec]:
        """Every run: the teachers first (one per seed), then seed-major the grid's arms in file order."""
        from dtc.engine.config import apply_overrides

        root = self.folder(out_root)
        teachers, students = [], []
        for seed in self.seeds:
            for fold in (range(self.folds) if self.folds else [None]):
                layout = {} if fold is None else {"data": {"folds": self.folds, "fold": fold}}
                seed_cfg = _merge(apply_overrides({}, [f"{key}={seed}" for key in self.seed_keys]), layout)
                unit = f"seed{seed}" if fold is None else f"seed{seed}/fold{fold}"
                seed_dir = root / unit

                def resolve(*layers: dict, seed_cfg=seed_cfg) -> dict:
                    cfg: dict = {}
                    for layer in (*layers, seed_cfg):
                        cfg = _merge(cfg, layer)
                    return apply_overrides(cfg, self.overrides)

                teacher_dir = seed_dir / TEACHER
                cfg = resolve(self.base, self.teacher, {"stage": "teacher", "run": {"out_dir": str(teacher_dir)}})
                teachers.append(RunSpec(f"{unit}/{TEACHER}", seed, TEACHER, "teacher (stage 1)", teacher_dir, cfg,
                                        fold=fold))
                for arm, (label, arm_overrides) in self.arms.items():
                    out_dir = seed_dir / arm
                    cfg = resolve(self.base, self.student, arm_overrides,
                                  {"stage": "student", "run": {"out_dir": str(out_dir)},
                                   "teacher_checkpoint": str(teacher_dir / "best.pt")})
                    students.append(RunSpec(f"{unit}/{arm}", seed, arm, label, out_dir, cfg,
                                            depends_on=f"{unit}/{TEACHER}", fold=fold))
        return teachers + students

    def validate(self, out_root: str | os.PathLike = "runs") -> None:
        """Build and validate every run's config (paths not checked: teachers do not exist yet)."""
        from dtc.engine.config import ConfigError

        for run in self.plan(out_root):
            try:
                run.train_config().validate(check_paths=False)
            except ConfigError as exc:
                raise ExperimentError(f"{self.path}: run {run.run_id}: {exc}") from exc


def _merge(base: dict, update: dict) -> dict:
    """``update`` over ``base``, mappings merged key by key (neither input is modified)."""
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _nest(mapping, where: str) -> dict:
    """A section with dotted keys turned into nested mappings; nested sections merged key by key."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise ExperimentError(f"{where} must be a mapping of config keys, got {type(mapping).__name__}")
    out: dict = {}
    for key, value in mapping.items():
        if not isinstance(key, str) or not key:
            raise ExperimentError(f"{where}: keys must be non-empty strings, got {key!r}")
        if isinstance(value, dict):
            value = _nest(value, f"{where}.{key}")
        parts = key.split(".")
        node: dict = value
        for part in reversed(parts[1:]):
            node = {part: node}
        out = _merge(out, {parts[0]: node})
    return out


def _flat_keys(mapping: dict, prefix: str = "") -> set:
    keys = set()
    for k, v in mapping.items():
        keys.add(prefix + k)
        if isinstance(v, dict):
            keys |= _flat_keys(v, prefix + k + ".")
    return keys


def _check_reserved(section: dict, where: str) -> None:
    bad = sorted(_flat_keys(section) & _RESERVED)
    if bad:
        raise ExperimentError(f"{where} must not set {bad}: the experiment sets them per run")


def _seeds(value, where: str) -> list:
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool)
                                                         and s >= 0 for s in value):
        raise ExperimentError(f"{where} must be a non-empty list of non-negative integers, got {value!r}")
    if len(set(value)) != len(value):
        raise ExperimentError(f"{where} lists a seed twice: {value}")
    return list(value)


def load_experiment(path: str | os.PathLike, preset: Optional[str] = None,
                    overrides: Optional[list[str]] = None) -> Experiment:
    """Read an experiment file and resolve it for ``preset`` (required when the file defines presets).

    ``overrides`` are ``key=value`` config overrides applied to every run last (e.g. ``run.device=cpu``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment file not found: {path}")
    try:
        doc = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as exc:
        from dtc.engine.config import yaml_error_message

        raise ExperimentError(yaml_error_message(exc, str(path))) from None
    if not isinstance(doc, dict):
        raise ExperimentError(f"{path}: the top level must be a mapping with keys {sorted(_TOP_KEYS)}")
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise ExperimentError(f"{path}: unknown top-level key(s) {unknown}; known: {sorted(_TOP_KEYS)}")
    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ExperimentError(f"{path}: name must be a folder-safe string (letters, digits, _.+-), got {name!r}")
    grid = doc.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise ExperimentError(f"{path}: grid must be a non-empty mapping of arm name -> overrides")
    arms = {}
    for arm, spec in grid.items():
        if not isinstance(arm, str) or not _NAME.match(arm) or arm == TEACHER:
            raise ExperimentError(f"{path}: grid arm names must be folder-safe strings other than {TEACHER!r}, "
                                  f"got {arm!r}")
        spec = dict(spec or {})
        label = spec.pop("label", arm)
        if not isinstance(label, str):
            raise ExperimentError(f"{path}: grid.{arm}.label must be a string, got {label!r}")
        section = _nest(spec, f"{path}: grid.{arm}")
        _check_reserved(section, f"{path}: grid.{arm}")
        arms[arm] = (label, section)
    sections = {key: _nest(doc.get(key), f"{path}: {key}") for key in ("base", "teacher", "student")}
    for key, section in sections.items():
        _check_reserved(section, f"{path}: {key}")
    seeds = _seeds(doc.get("seeds", [0]), f"{path}: seeds")
    folds = doc.get("folds")
    evaluation = dict(doc.get("evaluation") or {})
    presets = doc.get("presets") or {}
    if not isinstance(presets, dict):
        raise ExperimentError(f"{path}: presets must be a mapping of preset name -> overrides")
    description = doc.get("description", "") or ""
    if presets and preset is None:
        raise ExperimentError(f"{path} defines presets {sorted(presets)}; choose one with --preset")
    if preset is not None:
        if preset not in presets:
            raise ExperimentError(f"{path}: preset must be one of {sorted(presets)}, got {preset!r}")
        if not _NAME.match(preset):
            raise ExperimentError(f"{path}: preset names must be folder-safe, got {preset!r}")
        p = presets[preset] or {}
        if not isinstance(p, dict):
            raise ExperimentError(f"{path}: presets.{preset} must be a mapping")
        unknown = sorted(set(p) - _PRESET_KEYS)
        if unknown:
            raise ExperimentError(f"{path}: presets.{preset}: unknown key(s) {unknown}; known: {sorted(_PRESET_KEYS)}")
        for key in ("base", "teacher", "student"):
            section = _nest(p.get(key), f"{path}: presets.{preset}.{key}")
            _check_reserved(section, f"{path}: presets.{preset}.{key}")
            sections[key] = _merge(sections[key], section)
        if "seeds" in p:
            seeds = _seeds(p["seeds"], f"{path}: presets.{preset}.seeds")
        folds = p.get("folds", folds)
        if "arms" in p:
            chosen = p["arms"]
            if not isinstance(chosen, list) or not chosen or any(a not in arms for a in chosen):
                raise ExperimentError(f"{path}: presets.{preset}.arms must list arms of the grid {list(arms)}, "
                                      f"got {chosen!r}")
            arms = {a: arms[a] for a in chosen}
        evaluation.update(p.get("evaluation") or {})
        description = p.get("description", description)
    if folds is not None and (not isinstance(folds, int) or isinstance(folds, bool) or folds < 2):
        raise ExperimentError(f"{path}: folds must be an integer >= 2 (patient-level k-fold), got {folds!r}")
    seed_keys = doc.get("seed_keys", ["run.seed"] if folds else ["run.seed", "data.seed"])
    if not isinstance(seed_keys, list) or not all(isinstance(k, str) and k for k in seed_keys):
        raise ExperimentError(f"{path}: seed_keys must be a list of config keys, got {seed_keys!r}")
    for key in ("ensemble", "flip_tta"):
        value = evaluation.setdefault(key, bool(folds) if key == "ensemble" else False)
        if not isinstance(value, bool):
            raise ExperimentError(f"{path}: evaluation.{key} must be true or false, got {value!r}")
    if evaluation["ensemble"] and not folds:
        raise ExperimentError(f"{path}: evaluation.ensemble needs folds (the ensemble is per fold, over seeds)")
    if evaluation["ensemble"] and "data.seed" in seed_keys:
        raise ExperimentError(f"{path}: evaluation.ensemble averages seeds on the same test patients, so data.seed "
                              "must not vary with the seed: drop it from seed_keys")
    unknown = sorted(set(evaluation) - _EVAL_KEYS)
    if unknown:
        raise ExperimentError(f"{path}: evaluation: unknown key(s) {unknown}; known: {sorted(_EVAL_KEYS)}")
    evaluation.setdefault("split", "test")
    if evaluation["split"] not in ("val", "test"):
        raise ExperimentError(f"{path}: evaluation.split must be 'val' or 'test', got {evaluation['split']!r}")
    bs = evaluation.setdefault("batch_size", 8)
    if not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
        raise ExperimentError(f"{path}: evaluation.batch_size must be a positive integer, got {bs!r}")
    # The arm every other arm is compared with, paired by seed (the per-frame baseline of the ablation).
    baseline = evaluation.setdefault("baseline", "seg+kd" if "seg+kd" in arms else None)
    if baseline is not None and baseline not in arms:
        raise ExperimentError(f"{path}: evaluation.baseline must be an arm of the experiment {list(arms)}, "
                              f"got {baseline!r}")
    overrides = list(overrides or [])
    bad = [o for o in overrides if o.split("=", 1)[0].strip() in _RESERVED]
    if bad:
        raise ExperimentError(f"overrides {bad} set keys the experiment sets per run ({sorted(_RESERVED)})")
    return Experiment(name=name, path=path, preset=preset, seeds=seeds, seed_keys=list(seed_keys),
                      base=sections["base"], teacher=sections["teacher"], student=sections["student"], arms=arms,
                      evaluation=evaluation, overrides=overrides, description=str(description).strip(), folds=folds)
