"""The two-stage trainer of docs/method.md §1–2: one loop, two step functions.

Stage 1 (``stage="teacher"``) fits a still-image network with BCE-Dice to labelled frames. Stage 2
(``stage="student"``) freezes that teacher and trains a student (initialised as its copy) on
unlabelled windows with the DTC objective: flip pseudo-labels, distillation, confidence-weighted
temporal consistency and prototype alignment. Model selection uses Dice on the *validation* split.

Reproducibility: every epoch reseeds torch/numpy/random from ``(run.seed, epoch)`` and shuffles with
its own generator, so a run resumed from its last checkpoint (saved at each epoch end) repeats the
remaining epochs exactly as an uninterrupted run would (bitwise in ``run.deterministic`` mode on the
CPU; on CUDA up to the ordering of the atomic adds in the scatter backwards).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import random
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Sampler

from dtc.engine.checkpoint import FORMAT, VERSION, check_architecture, load_run_checkpoint, load_weights, save_checkpoint_file
from dtc.io import atomic_write_text
from dtc.engine.config import ConfigError, TrainConfig
from dtc.engine.data import build_dataset
from dtc.engine.record import write_run_record
from dtc.engine.distributed import DistContext
from dtc.engine.inference import collate_windows, normalise_images, predict_videos, resolve_device, video_scores

__all__ = ["Trainer", "train", "logits_of", "split_outputs"]


def logits_of(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def split_outputs(output):
    """The model protocol: logits alone, or ``(logits, local, global)``."""
    if isinstance(output, (tuple, list)):
        if len(output) != 3:
            raise ValueError(f"a model must return logits or (logits, local, global), got a {len(output)}-tuple")
        return tuple(output)
    return output, None, None


class _EpochSampler(Sampler):
    """Shuffles (or not) with a generator seeded per epoch and shards across ranks like DistributedSampler."""

    def __init__(self, n: int, *, shuffle: bool, seed: int, rank: int = 0, world: int = 1, limit: Optional[int] = None):
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world
        self.limit = limit
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.limit is not None:
            order = order[: self.limit]
        # Pad so every rank gets the same number of batches (no rank waits on a collective forever).
        total = math.ceil(len(order) / self.world) * self.world
        order += order[: total - len(order)]
        return order[self.rank::self.world]

    def __iter__(self):
        return iter(self._order())

    def __len__(self) -> int:
        n = self.n if self.limit is None else min(self.n, self.limit)
        return math.ceil(n / self.world)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


_log = logging.getLogger(__name__)
_TENSORBOARD_NOTICE_GIVEN = False


def _notice_tensorboard_missing() -> None:
    """Say once per process that TensorBoard logs are off, instead of silently writing none."""
    global _TENSORBOARD_NOTICE_GIVEN
    if not _TENSORBOARD_NOTICE_GIVEN:
        _TENSORBOARD_NOTICE_GIVEN = True
        _log.warning("tensorboard is not installed, so runs write no TensorBoard logs (metrics.csv has "
                     "every epoch); install it with `pip install tensorboard` or the dtc[tensorboard] extra")


# Settings that say how a run executes, not what it computes: a resumed run may change them freely.
RUNTIME_ONLY_KEYS = ("run.out_dir", "run.progress", "run.threads", "data.num_workers", "run.log_every")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(saved: dict, current: dict) -> dict:
    """``{dotted key: (saved value, current value)}`` for every setting that differs, runtime-only keys aside."""
    a, b = _flat(saved), _flat(current)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in RUNTIME_ONLY_KEYS}


class Trainer:
    """Builds everything from a :class:`TrainConfig` (validated first) and runs :meth:`fit`.

    ``resume=True`` continues the run in ``run.out_dir`` from its ``last.pt``, under the configuration it
    was trained with: a value that differs from the checkpoint's is refused, naming every differing key,
    unless ``allow_changes`` lists it (a key, or a section such as ``optim``); allowed changes are
    recorded in the run folder's ``config_changes.json``. Settings that only say how the run executes
    (:data:`RUNTIME_ONLY_KEYS`) may always differ. A run folder that already holds a run is never
    overwritten without ``resume``.
    ``on_step(trainer, epoch, step)`` is an optional hook (used by tests to interrupt a run).

    ``model``: a network to train instead of building ``cfg.model`` (any ``nn.Module`` of the model
    protocol); its checkpoints still record ``cfg.model`` (name, kwargs, taps), which must rebuild it for
    ``dtc infer``/``evaluate`` or a later stage 2 to load them. ``teacher``: stage 2's frozen teacher as a
    module instead of ``teacher_checkpoint``.
    """

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, on_step: Optional[Callable] = None,
                 model: Optional[torch.nn.Module] = None, teacher: Optional[torch.nn.Module] = None,
                 allow_changes: Sequence[str] = ()):
        self.allow_changes = tuple(allow_changes)
        for role, given in (("model", model), ("teacher", teacher)):
            if given is not None and not isinstance(given, torch.nn.Module):
                raise TypeError(f"Trainer: {role} must be an nn.Module or None, got {type(given).__name__}")
        if teacher is not None and cfg.stage != "student":
            raise ConfigError("Trainer: teacher= is for stage 2 (stage=student); stage 1 trains the teacher itself")
        cfg.validate(teacher_given=teacher is not None)
        self.cfg, self.on_step = cfg, on_step
        run = cfg.run
        self.device = self._resolve_device(run.device)
        self.dist = DistContext.from_env(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        if run.threads:
            torch.set_num_threads(run.threads)
        if run.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            # The CUDA backward of the scatter ops (local prototypes, soft-target consistency, the warp's
            # image gradient; grid_sample's too) accumulate with atomics and would raise here: on CUDA
            # deterministic mode warns about them instead, and runs repeat up to atomic ordering.
            torch.use_deterministic_algorithms(True, warn_only=self.device.type == "cuda")
        self.out = Path(run.out_dir)
        self.last_path, self.best_path = self.out / "last.pt", self.out / "best.pt"
        if not resume and self.last_path.exists():
            raise ConfigError(f"run.out_dir {self.out} already holds a run (last.pt); resume it with --resume "
                              "or choose another run.out_dir")
        if resume and not self.last_path.exists():
            raise ConfigError(f"cannot resume: no checkpoint {self.last_path}")
        _seed_everything(run.seed)

        self.train_set = build_dataset(cfg, "train")
        self.val_set = build_dataset(cfg, "val", T=1, stride=1)
        if len(self.train_set) == 0:
            raise ConfigError("the training split has no windows (more videos or frames, or a smaller data.T)")
        self.sampler = _EpochSampler(len(self.train_set), shuffle=True, seed=run.seed, rank=self.dist.rank,
                                     world=self.dist.world_size, limit=cfg.data.max_windows)
        self.loader = DataLoader(self.train_set, batch_size=cfg.data.batch_size, sampler=self.sampler,
                                 num_workers=cfg.data.num_workers, collate_fn=collate_windows, drop_last=False)

        if model is None:
            from dtc.models import build

            try:
                model = build(cfg.model.name, cfg.model.kwargs, cfg.model.taps)
            except ValueError as exc:  # a tap naming no layer is only found once the net exists
                raise ConfigError(str(exc)) from exc
        self.model = self._place(model)
        self.teacher = None
        self.objective = None
        self.flow_provider = None
        self._proto_skipped = False
        if cfg.stage == "student":
            self._setup_student(teacher)
        self.train_module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_module = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.scheduler = self._make_scheduler()
        self.amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.optim.amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.epoch = 0  # epochs completed
        self.step = 0   # optimiser steps taken
        self.best = -math.inf
        self.bad_epochs = 0
        self.history: list[dict] = []
        if resume:
            self._restore(load_run_checkpoint(self.last_path, map_location=self.device))
        self._tb = None

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _resolve_device(name: str) -> torch.device:
        try:
            device = resolve_device(name)
        except ValueError as exc:
            raise ConfigError(f"run.device: {exc}") from exc
        if device.type == "cuda":
            import dtc

            if not dtc.build_info()["cuda"]:
                # Otherwise the first fused loss fails with the dispatcher's "Could not run 'dtc::...'
                # with arguments from the 'CUDA' backend", which does not say what to do.
                raise ConfigError(f"run.device is {device} but dtc's compiled core has no CUDA kernels "
                                  "(dtc.build_info()['cuda'] is False): reinstall with nvcc on PATH and "
                                  "DTC_CUDA=ON, or train with run.device=cpu")
            capability = torch.cuda.get_device_capability(device)
            if not dtc.cuda_arch_supported(capability):
                archs = dtc.build_info()["cuda_archs"]
                raise ConfigError(f"run.device {device} has compute capability {capability[0]}.{capability[1]}, "
                                  f"but dtc's CUDA kernels were built for {archs}: reinstall on this machine "
                                  "(DTC_CUDA_ARCHS=AUTO builds for the visible GPUs) or set DTC_CUDA_ARCHS, "
                                  "e.g. DTC_CUDA_ARCHS=80 pip install --no-build-isolation .")
        return device

    def _setup_student(self, teacher: Optional[torch.nn.Module]) -> None:
        from dtc.engine.checkpoint import model_from_checkpoint
        from dtc.losses import DTCObjective

        cfg = self.cfg
        if teacher is None:
            teacher, ckpt = model_from_checkpoint(cfg.teacher_checkpoint, map_location="cpu")
            spec = ckpt["model"]
            same_arch = (spec["name"], spec["kwargs"], spec.get("taps", {})) == \
                (cfg.model.name, cfg.model.kwargs, cfg.model.taps)
        else:
            same_arch = teacher.state_dict().keys() == self.model.state_dict().keys() and all(
                v.shape == self.model.state_dict()[k].shape for k, v in teacher.state_dict().items())
        self.teacher = self._place(teacher).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student_init = "teacher copy" if (cfg.init_from_teacher and same_arch) else "random"
        if self.student_init == "teacher copy":
            self.model.load_state_dict(self.teacher.state_dict())
        # The targets the objective checks (flip pseudo-labels, sigmoid outputs) are probabilities by
        # construction; the check would cost a host sync per step on CUDA. An explicit
        # loss.check_inputs=true still turns it on.
        self.objective = DTCObjective(cfg.preset, **{"check_inputs": False, **cfg.loss})
        self.flow_provider = cfg.make_flow_provider()

    def _place(self, model):
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.cfg.run.channels_last else model

    def _make_scheduler(self):
        o = self.cfg.optim
        if o.scheduler == "cosine_restarts":
            return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(self.optimizer, T_0=o.t0, T_mult=o.t_mult,
                                                                        eta_min=o.min_lr)
        if o.scheduler == "poly":
            total = max(1, o.epochs * math.ceil(len(self.loader) / o.accumulate))
            return torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda it: max(0.0, 1 - it / total) ** o.poly_power)
        return None

    # ------------------------------------------------------------------ steps
    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        x = normalise_images(images)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.run.channels_last and x.dim() == 4 else x

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _teacher_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        from dtc.losses import bce_dice

        images = batch["image"].to(self.device, non_blocking=True).flatten(0, 1)
        masks = batch["mask"].to(self.device, non_blocking=True).flatten(0, 1)
        # Unlabelled frames carry no supervision in stage 1. The labelled indices are found on the host
        # (the batch is still there), so selecting them on the device needs no synchronisation.
        labelled = batch["mask_valid"].flatten().nonzero().squeeze(1).to(self.device, non_blocking=True)
        with self._autocast():
            logits = logits_of(self.train_module(self._normalise(images)))
        # Masks were validated as binary when the dataset read them: no per-step range check.
        loss = bce_dice(logits.index_select(0, labelled).float(), masks.index_select(0, labelled), check=False)
        return loss, {"seg": loss.detach()}

    def _student_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        images = batch["image"].to(self.device, non_blocking=True)
        B, T = images.shape[:2]
        flows = self.flow_provider(images, {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v)
                                            for k, v in batch.items()})
        x = self._normalise(images.flatten(0, 1))
        with torch.no_grad(), self._autocast():
            teacher_logits = logits_of(self.teacher(x)).float()
            pseudo = self.objective.pseudo_labels(self.model, self.teacher, x).float()
        with self._autocast():
            logits, local, global_ = split_outputs(self.train_module(x))
        if (local is None or global_ is None) and self.objective.config.weight("proto") > 0:
            self._fit_prototype_term_to_taps(local is not None, global_ is not None)

        def window(t):
            return None if t is None else t.float().unflatten(0, (B, T))

        flows_backward = (self.flow_provider.backward_flows(images, batch) if self.objective.config.occlusion_check
                          else None)
        loss, terms = self.objective(window(logits), window(local), window(global_), window(teacher_logits),
                                     window(pseudo), images, flows, flows_backward)
        return loss, terms

    def _fit_prototype_term_to_taps(self, has_local: bool, has_global: bool) -> None:
        """A student without feature taps (logits only) trains with the prototype term off; one with a single
        tap aligns prototypes at that scale alone. Either is said once, as a warning (the objective is
        replaced, so later steps do not come here again)."""
        import dataclasses
        import warnings

        from dtc.losses import DTCObjective

        config = self.objective.config
        scales = config.prototype_scales
        if has_local or has_global:
            available = "local" if has_local else "global"
            if scales in ("both", available):
                if scales == "both":
                    self.objective = DTCObjective(config=dataclasses.replace(config, prototype_scales=available))
                    warnings.warn(f"the student {self.cfg.model.name!r} has only a {available} feature tap, so the "
                                  f"prototype term aligns {available} prototypes only (model.taps sets both)",
                                  UserWarning, stacklevel=2)
                return
        self.objective = DTCObjective(config=dataclasses.replace(
            config, terms=tuple(t for t in config.terms if t != "proto")))
        self._proto_skipped = True
        what = "logits only (no feature taps)" if not (has_local or has_global) else \
            f"no {scales} feature tap (loss.prototype_scales={scales})"
        warnings.warn(f"the student {self.cfg.model.name!r} returns {what}, so the prototype term is skipped; set "
                      "model.taps.local / model.taps.global to layer names of the network (or return "
                      "(logits, local, global)) to train with it", UserWarning, stacklevel=2)

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        cfg, is_main = self.cfg, self.dist.is_main
        if is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            write_run_record(self.out)
            self._open_tensorboard()
        stop = False
        while self.epoch < cfg.optim.epochs and not stop:
            epoch = self.epoch + 1
            train_terms = self._train_epoch(epoch)
            row = {"epoch": epoch, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"], **train_terms}
            if self.scheduler is not None and cfg.optim.scheduler == "cosine_restarts":
                self.scheduler.step()
            improved = False
            if epoch % cfg.run.val_every == 0 or epoch == cfg.optim.epochs:
                val = self.validate()
                row.update({f"val_{k}": v for k, v in val.items()})
                improved = val["dice"] > self.best
                if improved:
                    self.best = val["dice"]
                    self.bad_epochs = 0
                else:
                    self.bad_epochs += 1
            self.epoch = epoch
            self.history.append(row)
            patience = cfg.optim.early_stop_patience
            stop = self.dist.agree(patience is not None and self.bad_epochs >= patience, self.device)
            if is_main:
                self._save(self.last_path)
                if improved:
                    self._save(self.best_path)
                self._log_epoch(row)
            self.dist.barrier()
        if self._tb is not None:
            self._tb.close()
        return {"epochs": self.epoch, "steps": self.step, "best_val_dice": self.best, "early_stopped": stop,
                "history": self.history, "out_dir": str(self.out)}

    def _train_epoch(self, epoch: int) -> dict:
        cfg = self.cfg
        _seed_everything(cfg.run.seed * 1_000_003 + epoch)
        self.sampler.set_epoch(epoch)
        self.model.train()
        loss_fn = self._teacher_loss if cfg.stage == "teacher" else self._student_loss
        sums: dict[str, torch.Tensor] = {}
        batches = 0
        accumulate = cfg.optim.accumulate
        progress = None
        iterator = self.loader
        if cfg.run.progress and self.dist.is_main:
            from dtc.progress import progress_bar

            progress = progress_bar(self.loader, desc=f"{cfg.stage} epoch {epoch}/{cfg.optim.epochs}", leave=False)
            iterator = progress
        n_batches = len(self.loader)
        self.optimizer.zero_grad(set_to_none=True)
        # Reading the loss on the host every step would stall the GPU queue before each backward: the
        # finiteness check and the progress bar read it once per run.log_every batches instead.
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        checked_upto = 0
        for i, batch in enumerate(iterator):
            last_micro = (i + 1) % accumulate == 0 or i + 1 == n_batches
            sync = contextlib.nullcontext()
            if self.dist.enabled and not last_micro:
                sync = self.train_module.no_sync()
            with sync:
                loss, terms = loss_fn(batch)
                nonfinite |= ~torch.isfinite(loss.detach())
                self.scaler.scale(loss / accumulate).backward()
            if last_micro:
                if cfg.optim.grad_clip is not None:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                if self.scheduler is not None and cfg.optim.scheduler == "poly":
                    self.scheduler.step()
            terms = {"loss": loss.detach(), **terms}
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v.detach().float()
            batches += 1
            if (i + 1) % cfg.run.log_every == 0 or i + 1 == n_batches:
                # Every rank takes the same decision (a rank raising alone would leave the others in a
                # collective).
                if bool(self.dist.mean(nonfinite.float()[None]) > 0):
                    raise FloatingPointError(
                        f"{cfg.stage} epoch {epoch}: a loss in batches {checked_upto}..{i} is not finite (last "
                        f"{loss.item()}); lower optim.lr or check the input data (last.pt holds the previous epoch)")
                checked_upto = i + 1
                if progress is not None:
                    progress.set_postfix(loss=f"{loss.item():.4f}")
            if self._tb is not None and self.step % cfg.run.log_every == 0 and last_micro:
                for k, v in terms.items():
                    self._tb.add_scalar(f"train/{k}", float(v), self.step)
            if self.on_step is not None:
                self.on_step(self, epoch, i)
        if progress is not None:
            progress.close()
        names = sorted(sums)
        means = self.dist.mean(torch.stack([sums[k] / max(batches, 1) for k in names]).to(self.device))
        return {f"train_{k}": float(v) for k, v in zip(names, means.tolist())}

    def validate(self) -> dict:
        """Dice at 0.5 (per frame → per video → mean), TC (1 − mean|P_t − P_{t−1}|) on the validation split."""
        videos = predict_videos(self.model, self.val_set, device=self.device, batch_size=self.cfg.data.batch_size,
                                amp_dtype=self.amp_dtype, rank=self.dist.rank, world_size=self.dist.world_size)
        local = {vid: video_scores(v) for vid, v in videos.items()}
        merged: dict[str, dict] = {}
        for part in self.dist.gather_objects(local):
            merged.update(part)
        dice = [s["dice"] for s in merged.values() if not math.isnan(s["dice"])]
        tc = [s["tc"] for s in merged.values() if not math.isnan(s["tc"])]
        return {"dice": float(np.mean(dice)) if dice else float("nan"), "tc": float(np.mean(tc)) if tc else float("nan")}

    # ------------------------------------------------------------------ state
    def _state(self) -> dict:
        model_spec = {"name": self.cfg.model.name, "kwargs": dict(self.cfg.model.kwargs),
                      "taps": dict(self.cfg.model.taps), "state_dict": self.model.state_dict()}
        return {
            "format": FORMAT, "version": VERSION, "stage": self.cfg.stage, "preset": self.cfg.preset,
            "model": model_spec, "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step": self.step, "best": self.best,
            "bad_epochs": self.bad_epochs, "history": self.history, "config": self.cfg.to_dict(),
            "torch_version": str(torch.__version__), "preprocess": self._preprocessing().to_dict(),
        }

    def _preprocessing(self):
        # What deployment needs to feed the network as training did (dtc.deploy.Segmenter, dtc export).
        from dtc.deploy.preprocess import preprocessing_of
        from dtc.models import _unwrap

        return preprocessing_of(_unwrap(self.model), {"config": {"data": {"height": self.cfg.data.height,
                                                                          "width": self.cfg.data.width}}})

    def _check_resume_config(self, saved: dict, epoch: int) -> None:
        """Refuse to resume under other settings than the run was trained with, unless each change is allowed;
        record the allowed ones, so the run folder never claims values its epochs were not trained with."""
        changes = config_differences(saved, self.cfg.to_dict())
        allowed = {k: v for k, v in changes.items()
                   if any(k == a or k.startswith(a.rstrip(".") + ".") for a in self.allow_changes)}
        refused = {k: v for k, v in changes.items() if k not in allowed}
        if refused:
            listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
            raise ConfigError(f"cannot resume {self.last_path}: the config differs from the one it was trained with "
                              f"({listed}); use the same settings, or allow the change with --allow-change KEY")
        if allowed and self.dist.is_main:
            path = self.out / "config_changes.json"
            log = json.loads(path.read_text()) if path.is_file() else []
            log.append({"resumed_after_epoch": epoch,
                        "changes": {k: {"was": old, "now": new} for k, (old, new) in allowed.items()}})
            atomic_write_text(path, json.dumps(log, indent=2, default=str) + "\n")

    def _save(self, path: Path) -> None:
        save_checkpoint_file(self._state(), path)

    def _restore(self, ckpt: dict) -> None:
        saved = ckpt.get("config", {})
        for key in ("stage",):
            if saved.get(key) != getattr(self.cfg, key):
                raise ConfigError(f"cannot resume: the checkpoint's {key} is {saved.get(key)!r}, the config's "
                                  f"{getattr(self.cfg, key)!r}")
        m = self.cfg.model
        check_architecture(ckpt, m.name, m.kwargs, self.last_path, taps=m.taps, context="cannot resume: ",
                           error=ConfigError)
        # After the stage and architecture checks, whose messages say more than a list of keys would.
        self._check_resume_config(saved, ckpt["epoch"])
        load_weights(self.model, ckpt["model"]["state_dict"], self.last_path, m.name, m.kwargs)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step, self.best = ckpt["epoch"], ckpt["step"], ckpt["best"]
        self.bad_epochs, self.history = ckpt["bad_epochs"], list(ckpt["history"])

    # ------------------------------------------------------------------ logs
    def _open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional (dtc[tensorboard]); the CSV log always exists
            _notice_tensorboard_missing()
            return
        self._tb = SummaryWriter(str(self.out / "tensorboard"))

    def _log_epoch(self, row: dict) -> None:
        # The whole history is rewritten atomically, so a resumed run's log has no duplicate epochs.
        keys = list(dict.fromkeys(k for r in self.history for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(self.out / "metrics.csv", buf.getvalue())
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("epoch",) and isinstance(v, float):
                    self._tb.add_scalar(f"epoch/{k}", v, row["epoch"])
        if self.cfg.run.progress:
            shown = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()
                     if k in ("epoch", "train_loss", "val_dice", "val_tc", "lr")}
            _log.info("[%s] %s", self.cfg.stage, "  ".join(f"{k}={v}" for k, v in shown.items()))


def train(cfg: TrainConfig, *, resume: bool = False, allow_changes: Sequence[str] = ()) -> dict:
    """Validate ``cfg``, train, and return the summary (``best_val_dice``, ``history``, ``out_dir``)."""
    trainer = Trainer(cfg, resume=resume, allow_changes=allow_changes)
    try:
        return trainer.fit()
    finally:
        trainer.dist.shutdown()
