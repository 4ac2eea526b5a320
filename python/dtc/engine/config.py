"""Typed run configuration: dataclasses, YAML files and ``key=value`` overrides.

A run is configured by one :class:`TrainConfig` (sections ``data``, ``model``, ``optim``, ``loss``,
``flow``, ``run``). Every value is validated before any training starts, and the resolved
configuration is saved in the run folder so a run can be reproduced or resumed from it.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

__all__ = ["DataConfig", "ModelConfig", "OptimConfig", "FlowConfig", "RunConfig", "TrainConfig",
           "load_config", "apply_overrides", "ConfigError"]


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range (the message names the key)."""


@dataclass
class DataConfig:
    """Where windows come from. ``source="synthetic"`` is the embedded simulator (no files needed)."""

    source: str = "synthetic"          # synthetic | csv | sunseg | folder | video | nifti | stills | dicom
    root: Optional[str] = None         # dataset root (csv: the CSV file; video/nifti/dicom: a file or a folder of them)
    masks: Optional[str] = None        # video/dicom: masks/<stem>/ per-frame masks; nifti: masks/<file> mask volumes
    spacing_csv: Optional[str] = None  # stills: the pixel-size CSV (columns filename, pixel size(mm))
    num_videos: int = 12               # synthetic: videos (patients x views)
    frames: int = 24                   # synthetic: frames per video
    height: int = 256
    width: int = 448
    T: int = 3                         # frames per window (stage 2)
    stride: int = 1
    frame_gap: int = 1
    batch_size: int = 8
    num_workers: int = 0
    augment: bool = False              # stage 1: still-image augmentation; stage 2 (dtc preset): sequence-consistent
    seed: int = 0                      # dataset seed (simulator, split)
    folds: Optional[int] = None        # patient-level k-fold cross-validation (k >= 2) instead of the 70/15/15 split
    fold: int = 0                      # with folds: the fold whose patients are the test split
    max_windows: Optional[int] = None  # cap windows per epoch (quick runs)
    benchmark: str = "calm"            # synthetic: a named simulator setting, dtc.data.synth.BENCHMARKS (calm | events)
    synth: dict = field(default_factory=dict)  # synthetic: SynthConfig settings on top of the benchmark (data.synth.gain_rate=3)
    events_in_stills: bool = False     # synthetic, stage 1: also train the teacher on event frames (curated stills are clean)


@dataclass
class ModelConfig:
    name: str = "student"              # a dtc.models name (built-in or registered) or an import path "pkg.mod:factory"
    kwargs: dict = field(default_factory=dict)  # the factory's keyword arguments, checked against its signature
    taps: dict = field(default_factory=dict)    # FeatureTaps layers of a user's net: {local: decoder.4, global: bottleneck, features: [enc.3, enc.4]}


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 10
    grad_clip: Optional[float] = 1.0
    accumulate: int = 1                # gradient accumulation steps
    amp: str = "off"                   # off | bf16 | fp16
    scheduler: str = "cosine_restarts"  # cosine_restarts (stage 2) | poly (stage 1) | none
    t0: int = 10
    t_mult: int = 2
    min_lr: float = 1e-6
    poly_power: float = 0.9
    early_stop_patience: Optional[int] = None  # epochs without validation improvement


@dataclass
class FlowConfig:
    provider: str = "gt"               # gt | farneback | opencv | cached:<inner>
    cache_dir: Optional[str] = None
    params: dict = field(default_factory=dict)


@dataclass
class RunConfig:
    out_dir: str = "runs/run"
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    log_every: int = 10                # steps between CSV/TensorBoard rows
    val_every: int = 1                 # epochs between validations
    progress: bool = True
    threads: Optional[int] = None      # torch CPU threads
    channels_last: bool = False        # NHWC activations: much faster convolutions on CPUs (oneDNN)


@dataclass
class TrainConfig:
    stage: str = "student"             # teacher (stage 1) | student (stage 2)
    preset: str = "dtc"                # dtc | reference (docs/method.md)
    teacher_checkpoint: Optional[str] = None  # stage 2: the frozen stage-1 teacher
    init_from_teacher: bool = True     # stage 2: the student starts as a copy of the teacher
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: dict = field(default_factory=dict)  # overrides of dtc.losses.DTCLossConfig (stage 2)
    flow: FlowConfig = field(default_factory=FlowConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return _build(cls, data, "")

    def synth_config(self, split: str = "test"):
        """The simulator's SynthConfig for ``split``: ``data.benchmark`` with ``data.synth`` on top; a stage-1
        teacher's training stills are clean (no transient events) unless ``data.events_in_stills``."""
        from dtc.data.synth import BENCHMARKS, synth_config

        d = self.data
        _choice("data.benchmark", d.benchmark, sorted(BENCHMARKS))
        clean = self.stage == "teacher" and split == "train" and not d.events_in_stills
        try:
            return synth_config(d.benchmark, d.synth, events=not clean)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"data.synth: {exc}") from exc

    def make_flow_provider(self, *, cached: bool = True):
        """The stage-2 flow provider ``flow.*`` describes; ``cached=False`` builds only the provider that
        computes flow (what validation checks ``flow.params`` against, without touching the cache)."""
        from dtc.flow import make_flow_provider

        provider = self.flow.provider
        inner = provider.removeprefix("cached:")
        kwargs = dict(self.flow.params)
        # The preset picks the Farnebäck preprocessing of the provider that computes flow, which under
        # "cached:" is the inner one; ground-truth flow has no preprocessing to pick.
        if inner != "gt":
            kwargs.setdefault("preset", self.preset)
        if cached and provider.startswith("cached:"):
            kwargs["root"] = self.flow.cache_dir
            return make_flow_provider(provider, **kwargs)
        return make_flow_provider(inner, **kwargs)

    def validate(self, *, check_paths: bool = True, teacher_given: bool = False) -> "TrainConfig":
        """Raise :class:`ConfigError` naming the first bad value; called before anything is trained.
        ``teacher_given``: stage 2 gets its teacher as a module (``Trainer(teacher=...)``), not a checkpoint."""
        _choice("stage", self.stage, ("teacher", "student"))
        _choice("preset", self.preset, ("dtc", "reference"))
        d, o, r = self.data, self.optim, self.run
        from dtc.data.index import SOURCES

        _choice("data.source", d.source, ("synthetic", *SOURCES))
        for key in ("num_videos", "frames", "height", "width", "T", "stride", "frame_gap", "batch_size"):
            if getattr(d, key) < 1:
                raise ConfigError(f"data.{key} must be >= 1, got {getattr(d, key)}")
        if d.fold < 0 or (d.folds is None and d.fold != 0) or (d.folds is not None and (d.folds < 2 or d.fold >= d.folds)):
            raise ConfigError(f"data.folds must be null or >= 2, and data.fold in [0, data.folds) (0 without folds), "
                              f"got folds={d.folds}, fold={d.fold}")
        if d.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {d.num_workers}")
        if self.stage == "student" and d.T < 2:
            raise ConfigError(f"data.T must be >= 2 for stage 2 (temporal terms need a previous frame), got {d.T}")
        if d.height % 16 or d.width % 16:
            raise ConfigError(f"data.height and data.width must be multiples of 16, got {d.height}x{d.width}")
        if d.source == "synthetic":
            self.synth_config()  # every data.synth.* value, checked by the simulator itself
        if d.source != "synthetic":
            if not d.root:
                raise ConfigError(f"data.root is required for data.source={d.source!r}")
            if check_paths and not Path(d.root).exists():
                raise ConfigError(f"data.root does not exist: {d.root}")
            for key in ("masks", "spacing_csv"):
                if check_paths and getattr(d, key) and not Path(getattr(d, key)).exists():
                    raise ConfigError(f"data.{key} does not exist: {getattr(d, key)}")
        if o.lr <= 0 or o.weight_decay < 0 or o.epochs < 1 or o.accumulate < 1:
            raise ConfigError(f"optim: lr > 0, weight_decay >= 0, epochs >= 1, accumulate >= 1 required, got "
                              f"lr={o.lr}, weight_decay={o.weight_decay}, epochs={o.epochs}, accumulate={o.accumulate}")
        if d.max_windows is not None and d.max_windows < 1:
            raise ConfigError(f"data.max_windows must be >= 1 or null (no cap), got {d.max_windows}")
        for key in ("seed",):
            for section, value in (("data", d.seed), ("run", r.seed)):
                if not 0 <= value < 2**32:
                    raise ConfigError(f"{section}.{key} must be in [0, 2**32), got {value}")
        if o.t0 < 1 or o.t_mult < 1:
            raise ConfigError(f"optim.t0 and optim.t_mult must be >= 1 (epochs of the first cosine cycle and its "
                              f"growth), got t0={o.t0}, t_mult={o.t_mult}")
        if o.min_lr < 0 or o.poly_power < 0:
            raise ConfigError(f"optim.min_lr and optim.poly_power must be >= 0, got min_lr={o.min_lr}, "
                              f"poly_power={o.poly_power}")
        if r.threads is not None and r.threads < 1:
            raise ConfigError(f"run.threads must be >= 1 or null (torch's default), got {r.threads}")
        if o.grad_clip is not None and o.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip must be positive or null, got {o.grad_clip}")
        _choice("optim.amp", o.amp, ("off", "bf16", "fp16"))
        _choice("optim.scheduler", o.scheduler, ("cosine_restarts", "poly", "none"))
        if o.early_stop_patience is not None and o.early_stop_patience < 1:
            raise ConfigError(f"optim.early_stop_patience must be >= 1 or null, got {o.early_stop_patience}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", r.device):
            raise ConfigError(f"run.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {r.device!r}")
        if r.log_every < 1 or r.val_every < 1:
            raise ConfigError("run.log_every and run.val_every must be >= 1")
        if self.stage == "student":
            if not self.teacher_checkpoint and not teacher_given:
                raise ConfigError("teacher_checkpoint is required for stage 2 (train the teacher first: dtc train-teacher)")
            if check_paths and self.teacher_checkpoint and not Path(self.teacher_checkpoint).is_file():
                raise ConfigError(f"teacher_checkpoint does not exist: {self.teacher_checkpoint}")
            provider = self.flow.provider
            base = provider.split(":", 1)[1] if provider.startswith("cached:") else provider
            _choice("flow.provider", base, ("gt", "farneback", "opencv"))
            if provider.startswith("cached:") and not self.flow.cache_dir:
                raise ConfigError("flow.cache_dir is required with flow.provider='cached:...'")
            if provider.startswith("cached:") and self.data.augment:
                # A cached flow belongs to the frames it was computed on; augmented frames change every
                # epoch, so a cache hit would pair them with another geometry's flow, silently.
                raise ConfigError("flow.provider='cached:...' cannot be used with data.augment=true (the frames "
                                  "change every epoch); set data.augment=false or use an uncached provider")
            try:
                self.make_flow_provider(cached=False)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"flow.params: {exc}") from exc
            from dtc.losses import DTCLossConfig

            try:
                loss = DTCLossConfig.from_preset(self.preset, **self.loss)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"loss: {exc}") from exc
            if loss.occlusion_check and provider == "cached:gt":
                # The ground truth is inverted for the occlusion test, not read for the reversed pairs, and a
                # cache of it would store the wrong flow under the reversed pairs' names.
                raise ConfigError("loss.occlusion_check with flow.provider='cached:gt' is not supported; use "
                                  "flow.provider=gt (nothing to cache: the flow is read from the data)")
        self.validate_model()
        return self

    def validate_model(self) -> None:
        """``model.name`` resolves (built-in, registered or importable) and ``model.kwargs`` fit its factory's
        signature; ``model.taps`` has only ``local``/``global`` layer names and a ``features`` list."""
        from dtc.models import check_kwargs

        m = self.model
        try:
            check_kwargs(m.name, m.kwargs, where="model.kwargs")
        except ValueError as exc:
            raise ConfigError(f"model.name: {exc}") from exc
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc
        unknown = sorted(set(m.taps) - {"local", "global", "features"})
        if unknown:
            raise ConfigError(f"model.taps: unknown key(s) {unknown}; expected local, global and/or features "
                              "(layer names)")
        for role, layer in m.taps.items():
            if role == "features":
                if layer is not None and (not isinstance(layer, list) or not all(isinstance(n, str) for n in layer)):
                    raise ConfigError(f"model.taps.features must be a list of layer names (shallow to deep), "
                                      f"got {layer!r}")
                continue
            if layer is not None and not isinstance(layer, str):
                raise ConfigError(f"model.taps.{role} must be a layer name (a string), got {layer!r}")


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {[prefix + k for k in unknown]}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, prefix + name)
    return cls(**kwargs)


def _coerce(hint, value, key: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(next(a for a in args if a is not type(None)), value, key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                # nan passes every "x <= 0" check and inf reaches torch as an lr; neither is a setting.
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            # YAML 1.1 reads off/no/false (and on/yes/true) as booleans; in a string field the user meant
            # the word, and "off" is the spelling the choices use (optim.amp=off).
            return "on" if value else "off"
        raise ConfigError(f"{key} must be a string, got {value!r}")
    if hint is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{key} must be a mapping, got {value!r}")
    return value


def yaml_error_message(exc: Exception, source: str) -> str:
    """``"cfg.yaml, line 3, column 7: not valid YAML (mapping values are not allowed here)"``."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else source
    return f"{where}: not valid YAML ({problem}); fix the syntax there (quote values holding ':' or '#')"


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a nested config dict."""
    data = _deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=1e-3)")
        key, raw = item.split("=", 1)
        try:
            value: Any = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(yaml_error_message(exc, f"override {item!r}")) from None
        # YAML reads 1e-3 as a string; accept numeric strings where a number is plainly meant.
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                pass
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def _deepcopy(data):
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def load_config(path: Optional[str | os.PathLike] = None, overrides: Optional[list[str]] = None,
                defaults: Optional[dict] = None) -> TrainConfig:
    """``defaults`` (a nested dict), then the YAML file at ``path``, then ``key=value`` overrides."""
    data = _deepcopy(defaults or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(yaml_error_message(exc, f"config file {path}")) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must contain a mapping at the top level")
        data = _merge(data, loaded)
    data = apply_overrides(data, overrides or [])
    return TrainConfig.from_dict(data)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
