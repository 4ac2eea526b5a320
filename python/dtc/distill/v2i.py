"""The V2I-Seg stages (docs/v2i.md): S0 trains the image model, S1 the clip teacher around it, S2 the
single-frame student (initialised from the image model) against the frozen teacher.

Everything is driven by one :class:`V2IConfig`; :func:`run_stage` trains a stage into a folder (and skips
it when that folder already holds its result), :func:`run_all` chains S0 → S1 → S2. The deployed student
is a plain checkpoint of the image-model architecture (:func:`dtc.models.load_checkpoint` reads it): the
adapters and the teacher stay behind, so it has exactly the image model's parameters and speed.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
__all__ = ["V2IConfig", "PRESETS", "ClipSampler", "run_stage", "run_all", "evaluate_key_frames", "load_teacher"]

STAGES = ("s0", "s1", "s2")


@dataclass
class V2IConfig:
    # data: the synthetic TRUS simulator (train/val split by patient); benchmark names a
    # dtc.data.synth.BENCHMARKS entry ("events" = the hard benchmark with transient acoustic events)
    benchmark: str = "calm"
    height: int = 64
    width: int = 96
    num_videos: int = 8
    frames: int = 24
    seed: int = 0
    # model: the image model M0 (= the deployed student's architecture)
    model: str = "student"
    model_kwargs: dict = field(default_factory=lambda: {"base": 8})
    # clip
    T: int = 3
    delta_max: int = 3
    eval_delta: int = 2
    causal: bool = False
    # teacher (MSI-Seg); msi=False is ablation arm A1 (the teacher is M0 itself)
    msi: bool = True
    msi_d: int = 64
    msi_heads: int = 4
    msi_points: int = 4
    msi_blocks: int = 1
    msi_attn: str = "deform"
    freeze_encoder_s1: bool = False
    # distillation
    tfd: str = "edt"            # off | hard | box | moment | edt
    lambda_tfd: float = 1.0
    alpha_fg: float = 1.0
    alpha_bg: float = 0.5
    feat_norm: str = "pixel_ln"
    lambda_kd: float = 0.0
    kd_tau: float = 4.0
    # DTC-TRUS temporal consistency on the student's predictions over the clip (docs/method.md §2),
    # with the simulator's exact flow; 0 leaves it out
    lambda_con: float = 0.0
    con_alpha: float = 13.3
    cqd: str = "off"            # off | fixed | random (cross-view query distillation)
    lambda_cqd: float = 0.5
    lambda_probe: float = 0.5
    warmup_iters: int = 500
    # optimisation
    epochs_s0: int = 4
    epochs_s1: int = 4
    epochs_s2: int = 4
    batch_size: int = 4
    lr: float = 3e-4
    encoder_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    max_windows: Optional[int] = None
    device: str = "cpu"

    def validate(self) -> "V2IConfig":
        from dtc.distill.masks import MODES

        from dtc.data.synth import BENCHMARKS

        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"v2i.benchmark must be one of {sorted(BENCHMARKS)}, got {self.benchmark!r}")
        if self.tfd not in ("off",) + MODES:
            raise ValueError(f"v2i.tfd must be 'off' or one of {MODES}, got {self.tfd!r}")
        if self.cqd not in ("off", "fixed", "random"):
            raise ValueError(f"v2i.cqd must be 'off', 'fixed' or 'random', got {self.cqd!r}")
        if self.T < 1 or self.delta_max < 1 or self.eval_delta < 1:
            raise ValueError(f"v2i: T, delta_max and eval_delta must be >= 1, got {self.T}, {self.delta_max}, "
                             f"{self.eval_delta}")
        if self.msi_attn not in ("deform", "full"):
            raise ValueError(f"v2i.msi_attn must be 'deform' or 'full', got {self.msi_attn!r}")
        for name in ("epochs_s0", "epochs_s1", "epochs_s2", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"v2i.{name} must be >= 1, got {getattr(self, name)}")
        return self

    def replace(self, **changes) -> "V2IConfig":
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"v2i: unknown setting(s) {unknown}")
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: Starting points sized for a laptop CPU and for one GPU (the gpu preset has docs/v2i.md's sizes: d=256, 8 heads, 50 epochs).
PRESETS = {
    "cpu": {},
    "gpu": dict(height=256, width=448, num_videos=40, frames=48, model="unet", model_kwargs={"base": 32},
                msi_d=256, msi_heads=8, epochs_s0=50, epochs_s1=50, epochs_s2=50, batch_size=8, device="cuda"),
}


def _offsets(T: int, delta: int, causal: bool) -> list[int]:
    if causal:
        return [-(T - 1 - k) * delta for k in range(T)]
    half = T // 2
    return [(k - half) * delta for k in range(T)]


class ClipSampler(torch.utils.data.Dataset):
    """Clips ``(T, 3, H, W)`` around a key frame with a random gap delta ~ U{1..delta_max} per clip (fixed
    ``delta`` for evaluation), frame indices clamped into the video. Items: ``image (T, 3, H, W)``,
    ``mask (T, 1, H, W)``; the key frame is :func:`dtc.distill.key_index`."""

    def __init__(self, cfg: V2IConfig, split: str, delta: Optional[int] = None):
        from dtc.data import SyntheticTRUSDataset
        from dtc.data.synth import synth_config

        self.cfg, self.delta = cfg, delta
        self.frames = SyntheticTRUSDataset(num_videos=cfg.num_videos, frames=cfg.frames, size=(cfg.height, cfg.width),
                                           T=1, seed=cfg.seed, split=split, config=synth_config(cfg.benchmark))
        per_video = cfg.frames
        self.keys = [(vi, t) for vi in range(len(self.frames.videos)) for t in range(per_video)]
        if cfg.max_windows is not None:
            step = max(1, len(self.keys) // cfg.max_windows)
            self.keys = self.keys[::step][: cfg.max_windows]

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict:
        vi, key = self.keys[index]
        if self.delta is None:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + index)
            delta = int(torch.randint(1, self.cfg.delta_max + 1, (1,), generator=g))
        else:
            delta = self.delta
        scene = self.frames.scene(vi)
        images, masks, flows, previous = [], [], [], None
        for off in _offsets(self.cfg.T, delta, self.cfg.causal):
            t = min(max(key + off, 0), self.cfg.frames - 1)
            # the flow from the previous clip frame (what the temporal term warps with); zero for the first
            f, m, flow, _ = scene.render(t, flow_from=previous)
            images.append(torch.from_numpy(f)[None].expand(3, -1, -1))
            masks.append(torch.from_numpy(m).float()[None])
            flows.append(torch.from_numpy(flow) if previous is not None else torch.zeros(2, *f.shape))
            previous = t
        return {"image": torch.stack(images).contiguous(), "mask": torch.stack(masks), "flow": torch.stack(flows)}


def _normalise(x: torch.Tensor) -> torch.Tensor:
    from dtc.engine.data import IMAGE_MEAN, IMAGE_STD

    mean = torch.tensor(IMAGE_MEAN, device=x.device, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=x.device, dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / std


def _loader(cfg, split, shuffle, delta=None):
    data = ClipSampler(cfg, split, delta)
    g = torch.Generator().manual_seed(cfg.seed)
    return torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=shuffle, generator=g, drop_last=False)


def _image_model(cfg: V2IConfig):
    from dtc import models

    return models.create(cfg.model, **cfg.model_kwargs)


def _teacher(cfg: V2IConfig, image_model):
    from dtc.distill.msi import ClipTeacher

    return ClipTeacher(image_model, frames=cfg.T, causal=cfg.causal, d=cfg.msi_d, heads=cfg.msi_heads,
                       points=cfg.msi_points, blocks=cfg.msi_blocks, ffn=4 * cfg.msi_d, attn=cfg.msi_attn)


def _poly(optimizer, total: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: max(0.0, 1 - it / max(total, 1)) ** 0.9)


def _seg_loss(logits, target):
    from dtc import ops

    return ops.bce_dice(logits, target)[0]


def evaluate_key_frames(model_fn, cfg: V2IConfig) -> dict:
    """Mean key-frame Dice (at 0.5) over the validation clips (fixed gap ``eval_delta``) and the mean
    absolute change of the key-frame probability between consecutive key frames of a video (flicker)."""
    from dtc.distill.msi import key_index

    key = key_index(cfg.T, cfg.causal)
    dices, flick, previous = [], [], None
    device = torch.device(cfg.device)
    data = ClipSampler(cfg, "val", cfg.eval_delta)
    with torch.no_grad():
        for index in range(len(data)):
            item = data[index]
            clip = _normalise(item["image"].to(device))[None]
            prob = torch.sigmoid(model_fn(clip)).float()
            target = item["mask"][key].to(device)
            pred = (prob[0] > 0.5).float()
            inter, total = (pred * target).sum(), pred.sum() + target.sum()
            dices.append(1.0 if total == 0 else float(2 * inter / total))
            vi = data.keys[index][0]
            if previous is not None and previous[0] == vi:
                flick.append(float((prob[0] - previous[1]).abs().mean()))
            previous = (vi, prob[0])
    return {"dice": sum(dices) / len(dices), "flicker": sum(flick) / max(len(flick), 1)}


def _fit(cfg, params, loader, epochs, step_fn, modules):
    groups = [dict(p) for p in params]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = _poly(optimizer, epochs * len(loader))
    it = 0
    for _ in range(epochs):
        for m in modules:
            m.train()
        for batch in loader:
            loss = step_fn(batch, it)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            it += 1
    return it


def _key(cfg):
    from dtc.distill.msi import key_index

    return key_index(cfg.T, cfg.causal)


def train_s0(cfg: V2IConfig, out: Path) -> dict:
    """The image model on labelled key frames."""
    from dtc import models

    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    net = _image_model(cfg).to(device)
    key = _key(cfg)

    def step(batch, it):
        x = _normalise(batch["image"][:, key].to(device))
        return _seg_loss(net(x)[0], batch["mask"][:, key].to(device))

    _fit(cfg, [{"params": list(net.parameters())}], _loader(cfg, "train", True), cfg.epochs_s0, step, [net])
    net.eval()
    metrics = evaluate_key_frames(lambda clip: net(clip[:, key])[0], cfg)
    models.save_checkpoint(out / "image_model.pt", net, name=cfg.model, kwargs=cfg.model_kwargs, extra={"metrics": metrics})
    return metrics


def load_teacher(cfg: V2IConfig, image_path: Path, teacher_path: Optional[Path] = None):
    from dtc import models

    image_model, _ = models.load_checkpoint(image_path, map_location=cfg.device)
    if not cfg.msi:
        return image_model, None
    teacher = _teacher(cfg, image_model).to(cfg.device)
    if teacher_path is not None:
        payload = torch.load(teacher_path, map_location=cfg.device, weights_only=True)
        teacher.load_state_dict(payload["state_dict"])
    return image_model, teacher


def _decoder(cfg: V2IConfig, channels: int):
    from dtc.distill.cqd import ProbeDecoder

    return ProbeDecoder(channels, d=cfg.msi_d, heads=cfg.msi_heads, layers=2, ffn=4 * cfg.msi_d)


def _generator(cfg: V2IConfig, stage: int, it: int) -> torch.Generator:
    # every random choice of an iteration (views, points) from (seed, stage, iteration): reproducible runs
    return torch.Generator().manual_seed((cfg.seed * 1_000 + stage) * 1_000_003 + it)


def train_s1(cfg: V2IConfig, out: Path, image_path: Path) -> dict:
    """The clip teacher: M0's weights plus MSI-Seg, trained on clips (encoder at lr x encoder_lr_scale); with
    CQD on, also the probe decoder on the teacher's (stop-gradient) memory level."""
    from dtc.distill.cqd import build_queries, probe_loss
    from dtc.io import atomic_torch_save

    torch.manual_seed(cfg.seed + 1)
    device = torch.device(cfg.device)
    image_model, teacher = load_teacher(cfg, image_path)
    key = _key(cfg)
    strides = list(image_model.feature_strides)[-3:]
    decoder = _decoder(cfg, list(image_model.feature_channels)[-2]).to(device) if cfg.cqd != "off" else None
    groups = []
    if teacher is not None:
        base = list(teacher.image_model.parameters())
        if cfg.freeze_encoder_s1:
            for p in base:
                p.requires_grad_(False)
        groups.append({"params": list(teacher.msi.parameters())})
        if not cfg.freeze_encoder_s1:
            groups.append({"params": base, "lr": cfg.lr * cfg.encoder_lr_scale})
    else:  # arm A1: the teacher is M0 itself, frozen
        image_model.eval()
        for p in image_model.parameters():
            p.requires_grad_(False)
    if decoder is not None:
        groups.append({"params": list(decoder.parameters())})

    def step(batch, it):
        clip = _normalise(batch["image"].to(device))
        target = batch["mask"][:, key].to(device)
        loss = torch.zeros((), device=device)
        if teacher is not None:
            (logits, _, _), enhanced, _ = teacher.forward_features(clip)
            loss = loss + _seg_loss(logits, target)
        else:
            with torch.no_grad():
                enhanced = image_model.features(clip[:, key])[-3:]
        if decoder is not None:
            phi = decoder.memory(enhanced[1].detach())
            queries = build_queries(phi, target, stride=strides[1], generator=_generator(cfg, 1, it), mode=cfg.cqd)
            loss = loss + cfg.lambda_probe * probe_loss(decoder(queries, phi), queries, strides[1])
        return loss

    if groups:
        _fit(cfg, groups, _loader(cfg, "train", True), cfg.epochs_s1, step,
             [m for m in (teacher, decoder) if m is not None])
    frozen = teacher if teacher is not None else image_model
    frozen.eval()
    metrics = evaluate_key_frames((lambda clip: teacher(clip)[0]) if teacher is not None
                                  else (lambda clip: image_model(clip[:, key])[0]), cfg)
    state = {k: v.detach().cpu() for k, v in teacher.state_dict().items()} if teacher is not None else {}
    atomic_torch_save({"msi": teacher is not None, "state_dict": state, "metrics": metrics,
                       "decoder": ({k: v.detach().cpu() for k, v in decoder.state_dict().items()}
                                   if decoder is not None else None)}, out / "teacher.pt")
    return metrics


def train_s2(cfg: V2IConfig, out: Path, image_path: Path, teacher_path: Path) -> dict:
    """The single-frame student from M0, distilled from the frozen teacher (TFD on soft masks, optional KD)."""
    from dtc import models, ops
    from dtc.distill.masks import soft_foreground
    from dtc.distill.tfd import FeatureAdapters, tfd_loss

    torch.manual_seed(cfg.seed + 2)
    device = torch.device(cfg.device)
    payload = torch.load(teacher_path, map_location=device, weights_only=True)
    image_model, teacher = load_teacher(cfg.replace(msi=bool(payload["msi"])), image_path, teacher_path)
    frozen = teacher if teacher is not None else image_model
    frozen.eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    student, _ = models.load_checkpoint(image_path, map_location=device)
    levels = 3
    strides = list(student.feature_strides)[-levels:] if hasattr(student, "feature_strides") else None
    channels = list(student.feature_channels)[-levels:]
    adapters = FeatureAdapters(channels, channels).to(device)
    key = _key(cfg)
    decoder = None
    if cfg.cqd != "off":
        if payload.get("decoder") is None:
            raise ValueError(f"v2i s2: cqd={cfg.cqd!r} needs the probe decoder, but {teacher_path} was trained "
                             "without it; rerun s1 with the same cqd setting")
        decoder = _decoder(cfg, channels[1]).to(device)
        decoder.load_state_dict(payload["decoder"])
        decoder.eval()  # frozen, but not under no_grad: the student's decode back-propagates through it
        for p in decoder.parameters():
            p.requires_grad_(False)
    pre_msi = teacher.image_model if teacher is not None else image_model

    def step(batch, it):
        clip = _normalise(batch["image"].to(device))
        target = batch["mask"][:, key].to(device)
        x = clip[:, key]
        with torch.no_grad():
            if teacher is not None:
                (t_logits, _, _), t_feats, _ = teacher.forward_features(clip)
            else:
                t_feats = image_model.features(x)[-levels:]
                t_logits = image_model(x)[0]
        s_feats = student.features(x)
        logits = student.decode(x, s_feats)[0]
        loss = _seg_loss(logits, target)
        ramp = min(1.0, (it + 1) / max(cfg.warmup_iters, 1))
        if cfg.tfd != "off" and cfg.lambda_tfd > 0:
            masks = soft_foreground(target, strides=strides, mode=cfg.tfd)
            loss = loss + ramp * cfg.lambda_tfd * tfd_loss(adapters(s_feats[-levels:]), t_feats, masks,
                                                           alpha_fg=cfg.alpha_fg, alpha_bg=cfg.alpha_bg,
                                                           norm=cfg.feat_norm)
        if decoder is not None and cfg.lambda_cqd > 0:
            adapted_m = adapters.adapters[1](s_feats[-2])
            loss = loss + ramp * cfg.lambda_cqd * _cqd_term(cfg, decoder, pre_msi, clip, batch["mask"].to(device), key,
                                                            t_feats[1], adapted_m, strides[1], it)
        if cfg.lambda_kd > 0:
            loss = loss + cfg.lambda_kd * ops.kd_loss(logits, t_logits, cfg.kd_tau)
        if cfg.lambda_con > 0 and clip.shape[1] > 1:
            # the student on every clip frame, held consistent along the flow (the DTC-TRUS term)
            B, T = clip.shape[:2]
            frames = torch.cat([clip[:, t][:, None] if t != key else x[:, None] for t in range(T)], 1)
            all_logits = student(frames.flatten(0, 1))[0].view(B, T, 1, *x.shape[-2:])
            con = ops.temporal_consistency(all_logits, batch["image"].to(device), batch["flow"].to(device),
                                           alpha=cfg.con_alpha)[0].mean()
            loss = loss + cfg.lambda_con * con
        return loss

    params = [{"params": list(student.parameters()) + list(adapters.parameters())}]
    _fit(cfg, params, _loader(cfg, "train", True), cfg.epochs_s2, step, [student, adapters])
    student.eval()
    metrics = evaluate_key_frames(lambda clip: student(clip[:, key])[0], cfg)
    # Deployed: the image-model architecture only (adapters and teacher are training-time modules).
    models.save_checkpoint(out / "student.pt", student, name=cfg.model, kwargs=cfg.model_kwargs,
                           extra={"metrics": metrics})
    return metrics


def _cqd_term(cfg, decoder, pre_msi, clip, masks, key, teacher_m, student_m, stride, it):
    """L_CQD of one batch: per sample a source view, its queries decoded on both memories."""
    from dtc.distill.cqd import QuerySet, build_queries, choose_views, cqd_loss

    g = _generator(cfg, 2, it)
    phi_t = decoder.memory(teacher_m).detach()
    phi_s = decoder.memory(student_m)
    views = choose_views(clip.shape[0], g, mode=cfg.cqd)
    others = [t for t in range(clip.shape[1]) if t != key]
    ref_t = others[int(torch.randint(len(others), (1,), generator=g))] if others else key
    phi_ref = None
    if "reference" in views:
        with torch.no_grad():
            phi_ref = decoder.memory(pre_msi.features(clip[:, ref_t])[-2])
    sets = []
    for b, view in enumerate(views):
        source = {"teacher": phi_t, "student": phi_s.detach(), "reference": phi_ref}[view][b:b + 1]
        frame = ref_t if view == "reference" else key
        sets.append(build_queries(source, masks[b:b + 1, frame], stride=stride, generator=g, mode=cfg.cqd))
    queries = QuerySet(*(torch.cat([getattr(q, f) for q in sets]) for f in
                         ("embeddings", "types", "valid", "targets", "foreground")))
    with torch.no_grad():
        teacher_out = decoder(queries, phi_t)
    return cqd_loss(teacher_out, decoder(queries, phi_s), queries.valid)


# Settings a stage does not read, so a finished stage can be shared by runs that differ only in them
# (the ablation's arms share S0 and, per teacher, S1). The device never changes what a stage computes.
_S2_ONLY = {"tfd", "lambda_tfd", "alpha_fg", "alpha_bg", "feat_norm", "lambda_kd", "kd_tau", "lambda_con", "con_alpha",
            "lambda_cqd", "warmup_iters", "epochs_s2"}
_NOT_READ_BY = {
    "s0": _S2_ONLY | {"msi", "msi_d", "msi_heads", "msi_points", "msi_blocks", "msi_attn", "freeze_encoder_s1",
                      "encoder_lr_scale", "epochs_s1", "lambda_probe", "cqd", "device"},
    "s1": _S2_ONLY | {"device"},
    "s2": {"device"},
}


def _done(out: Path, stage: str, cfg: V2IConfig) -> Optional[dict]:
    """The finished stage's metrics, or None. A stage finished under other settings is an error: skipping
    it would put its results under the new settings' name."""
    path = out / f"{stage}.json"
    if not path.exists():
        return None
    done = json.loads(path.read_text())
    defaults, wanted = V2IConfig().to_dict(), cfg.to_dict()
    stored = {**defaults, **(done.get("config") or {})}  # settings added since it ran had their defaults
    changed = sorted(k for k in wanted if k not in _NOT_READ_BY[stage] and stored.get(k) != wanted[k])
    if changed:
        raise ValueError(f"v2i {stage}: {path} was trained with other settings ("
                         + ", ".join(f"{k}={stored.get(k)!r}, now {wanted[k]!r}" for k in changed)
                         + "); use another --out, or delete that folder to train it again")
    return done


def run_stage(cfg: V2IConfig, stage: str, out, *, image_path=None, teacher_path=None) -> dict:
    """Train ``stage`` (``"s0"``, ``"s1"`` or ``"s2"``) into ``out`` and return its validation metrics; a
    stage whose ``<stage>.json`` exists is not trained again. S1 needs S0's ``image_model.pt`` (default: in
    ``out``), S2 also S1's ``teacher.pt``."""
    from dtc.io import atomic_write_text

    cfg = cfg.validate()
    if stage not in STAGES:
        raise ValueError(f"v2i: stage must be one of {STAGES}, got {stage!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = _done(out, stage, cfg)
    if done is not None:
        return done
    image_path = Path(image_path) if image_path else out / "image_model.pt"
    teacher_path = Path(teacher_path) if teacher_path else out / "teacher.pt"
    for needed, path in (("s1", image_path), ("s2", image_path), ("s2", teacher_path)):
        if stage == needed and not path.is_file():
            raise FileNotFoundError(f"v2i {stage}: {path} does not exist; run the earlier stage first")
    if stage == "s0":
        metrics = train_s0(cfg, out)
    elif stage == "s1":
        metrics = train_s1(cfg, out, image_path)
    else:
        metrics = train_s2(cfg, out, image_path, teacher_path)
    atomic_write_text(out / f"{stage}.json", json.dumps({**metrics, "config": cfg.to_dict()}, indent=2))
    return {**metrics, "config": cfg.to_dict()}


def run_all(cfg: V2IConfig, out) -> dict:
    """S0 → S1 → S2 into ``out``; returns ``{"s0": ..., "s1": ..., "s2": ...}`` (image model, teacher, student)."""
    return {stage: run_stage(cfg, stage, out) for stage in STAGES}


# ------------------------------------------------------------------------------------------- ablation
def load_ablation(path) -> dict:
    """Read an ablation file (``experiments/ablation-v2i.yaml``): ``presets`` (seeds and settings) and
    ``arms`` (settings each arm changes). Every setting is checked against :class:`V2IConfig`."""
    import yaml

    spec = yaml.safe_load(Path(path).read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("presets"), dict) or not isinstance(spec.get("arms"), dict):
        raise ValueError(f"{path}: an ablation file needs mappings 'presets' and 'arms'")
    for name, preset in spec["presets"].items():
        if not isinstance(preset, dict) or not preset.get("seeds"):
            raise ValueError(f"{path}: preset {name!r} needs a list of seeds")
        V2IConfig().replace(**(preset.get("settings") or {}))
    for name, arm in spec["arms"].items():
        V2IConfig().replace(**(arm or {}))
    return spec


def run_ablation(path, preset: str, out, *, seeds=None, arms=None, log=print) -> list[dict]:
    """Train every arm of ``path`` for every seed of ``preset`` under ``out``; returns one row per (arm,
    seed) and writes ``results.md`` (mean ± std over seeds). S0 is shared by all arms of a seed and S1 by
    the arms with the same teacher settings; finished stages are not trained again."""
    import statistics

    from dtc.io import atomic_write_text

    spec = load_ablation(path)
    if preset not in spec["presets"]:
        raise ValueError(f"{path}: no preset {preset!r}; it has {sorted(spec['presets'])}")
    chosen = spec["presets"][preset]
    seeds = list(seeds or chosen["seeds"])
    arm_names = list(arms or spec["arms"])
    unknown = sorted(set(arm_names) - set(spec["arms"]))
    if unknown:
        raise ValueError(f"{path}: no arm(s) {unknown}; it has {sorted(spec['arms'])}")
    out = Path(out)
    rows = []
    for seed in seeds:
        base = V2IConfig().replace(**(chosen.get("settings") or {}), seed=seed)
        s0_dir = out / f"seed{seed}" / "s0"
        run_stage(base, "s0", s0_dir)
        for arm in arm_names:
            cfg = base.replace(**(spec["arms"][arm] or {}))
            teacher_key = ("msi" if cfg.msi else "no-msi") + ("" if cfg.cqd == "off" else f"-cqd-{cfg.cqd}")
            t_dir = out / f"seed{seed}" / f"s1-{teacher_key}"
            log(f"[v2i] seed {seed} arm {arm}")
            s0 = run_stage(cfg, "s0", s0_dir)
            s1 = run_stage(cfg, "s1", t_dir, image_path=s0_dir / "image_model.pt")
            s2 = run_stage(cfg, "s2", out / f"seed{seed}" / arm, image_path=s0_dir / "image_model.pt",
                           teacher_path=t_dir / "teacher.pt")
            rows.append({"arm": arm, "seed": seed, "image_dice": s0["dice"], "teacher_dice": s1["dice"],
                         "student_dice": s2["dice"], "image_flicker": s0["flicker"], "teacher_flicker": s1["flicker"],
                         "student_flicker": s2["flicker"]})

    def stat(values):
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"

    keys = ["image_dice", "teacher_dice", "student_dice", "image_flicker", "teacher_flicker", "student_flicker"]
    control = "a2-tfd-off" if "a2-tfd-off" in arm_names else None
    by_seed = {(r["arm"], r["seed"]): r for r in rows}

    def paired(arm, key, other=None):
        """mean ± std over seeds of arm's key minus the image model's (or minus arm `other`'s student),
        and in how many seeds the arm is better (higher Dice, lower flicker)."""
        diffs = [r[key] - (r[key.replace("student", "image")] if other is None else by_seed[(other, r["seed"])][key])
                 for r in rows if r["arm"] == arm]
        better = sum((d < 0) if key.endswith("flicker") else (d > 0) for d in diffs)
        return f"{stat(diffs)} ({better}/{len(diffs)})"

    extra = ["student − image model, Dice", "student − image model, flicker"]
    if control:
        extra.append(f"student − {control} (same epochs, no distillation), Dice")
    lines = [f"Seeds {seeds}; mean ± std over seeds of validation key-frame metrics; after each paired difference, "
             "the seeds where the student is better (higher Dice, lower flicker).", "",
             "| arm | " + " | ".join(keys + extra) + " |", "|---" * (len(keys) + len(extra) + 1) + "|"]
    for arm in arm_names:
        mine = [r for r in rows if r["arm"] == arm]
        cells = [stat([r[k] for r in mine]) for k in keys]
        cells += [paired(arm, "student_dice"), paired(arm, "student_flicker")]
        if control:
            cells.append(paired(arm, "student_dice", control))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    first = [r for r in rows if r["arm"] == arm_names[0]]  # the teachers are shared: one row per seed suffices
    teacher_dice = [r["teacher_dice"] - r["image_dice"] for r in first if r["teacher_dice"] == r["teacher_dice"]]
    teacher_flicker = [r["teacher_flicker"] - r["image_flicker"] for r in first]
    if teacher_dice:
        lines += ["", f"Clip teacher ({arm_names[0]}'s) − image model: validation Dice {stat(teacher_dice)} "
                      f"(teacher ahead in {sum(d > 0 for d in teacher_dice)}/{len(teacher_dice)} seeds), flicker "
                      f"{stat(teacher_flicker)} (teacher steadier in {sum(d < 0 for d in teacher_flicker)}/"
                      f"{len(teacher_flicker)} seeds)."]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2))
    return rows
