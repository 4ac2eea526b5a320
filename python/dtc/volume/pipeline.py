"""The XDim-KD pipeline (docs/xdim.md, "Pipeline"): train the 2-D teacher on the sparse labelled slices,
write pseudo-labels for the training volumes, train the 3-D student, infer volumes in overlapping chunks.

A run folder holds everything one (data, ratio, seed) produces:
    run.json          settings shared by the stages (data folder, ratio, seed, network input size, chunk Z)
    labelled.json     the labelled slices of each training volume
    encoder.pt        the 2-D segmenter dtc trained as the teacher's encoder (unless one was given)
    teacher.pt        the teacher head (+ which encoder)
    pseudo/<vol>.npz  pseudo-label probability and TTA standard deviation (float16, native size)
    student-<mode>.pt the 3-D student of each mode: "sparse" (labelled slices only), "pseudo" (pseudo-labels),
                      "full" (pseudo-labels + correlation distillation)
"""
from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

STUDENT_MODES = ("sparse", "pseudo", "full")
STUDENT_FORMAT = "dtc-xdim-student-1"


def _log_default(msg: str) -> None:
    # Status lines go through logging like the rest of dtc (dtc.log): the dtc command prints them.
    logging.getLogger(__name__).info(msg)


# ---------------------------------------------------------------------------------------------- data
def list_volumes(folder) -> list[tuple[str, Path, Path | None]]:
    """(name, image path, label path or None) of each volume of a `dtc data synth3d`-style folder
    (images/*.nii[.gz], labels/<same name>), or of a single NIfTI file."""
    folder = Path(folder)
    if folder.is_file():
        name = folder.name.split(".nii")[0]
        return [(name, folder, None)]
    images = folder / "images"
    if not images.is_dir():
        raise ValueError(f"{folder}: expected a folder with images/*.nii.gz (and labels/), or a NIfTI file")
    found = sorted(p for p in images.iterdir() if p.name.endswith((".nii", ".nii.gz")))
    if not found:
        raise ValueError(f"{images}: no NIfTI volumes (*.nii, *.nii.gz)")
    out = []
    for p in found:
        label = folder / "labels" / p.name
        out.append((p.name.split(".nii")[0], p, label if label.is_file() else None))
    return out


def read_volumes(folder, need_labels: bool = True):
    """[(name, dtc.data.synth3d.Volume)] of a folder; with need_labels every volume must have its label."""
    from dtc.data.synth3d import read_volume

    out = []
    for name, image, label in list_volumes(folder):
        if need_labels and label is None:
            raise ValueError(f"{image}: no label file {Path(folder) / 'labels' / image.name}")
        out.append((name, read_volume(image, label)))
    return out


def resize_volume(volume: torch.Tensor, size, mode: str = "bicubic") -> torch.Tensor:
    """[D, H, W] -> [D, *size] slice by slice (bicubic, align_corners=True as the original code; clamped to
    [0, 1]; "bilinear" for probabilities)."""
    if tuple(volume.shape[-2:]) == tuple(size):
        return volume.clone()
    return F.interpolate(volume[:, None].float(), size=tuple(size), mode=mode, align_corners=True)[:, 0].clamp_(0, 1)


def _save_json(path, obj) -> None:
    from dtc.io import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2))


def _read_run(run) -> dict:
    path = Path(run) / "run.json"
    if not path.is_file():
        raise ValueError(f"{run}: not an XDim-KD run folder (no run.json; start with `dtc xdim train-teacher`)")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------ stage A: teacher
def train_teacher(data, run, *, ratio: float = 0.005, seed: int = 0, size: int = 256, preset: str = "dtc",
                  stratify: str | None = "volume", encoder: str | None = None, encoder_model: str = "student",
                  encoder_kwargs: dict | None = None, encoder_epochs: int = 100, epochs: int = 100, batch: int = 32,
                  lr: float = 1e-4, chunk: int = 16, log=_log_default) -> dict:
    """Select the labelled slices, train (or take) the frozen encoder, train the head; writes the run folder."""
    from dtc.models import save_checkpoint
    from dtc.volume.labels import select_labelled_slices
    from dtc.volume.teacher import SliceTeacher, encoder_from_spec, save_teacher, train_slice_segmenter, train_teacher_head

    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    if size % 32:
        raise ValueError(f"size must be a multiple of 32 (the 2-D encoders and the student downsample), got {size}")
    volumes = read_volumes(data)
    flags = select_labelled_slices([v.image.shape[0] for _, v in volumes], ratio, preset=preset, stratify=stratify,
                                   seed=seed)
    labelled = {name: np.flatnonzero(f).tolist() for (name, _), f in zip(volumes, flags)}
    n_lab = sum(len(v) for v in labelled.values())
    log(f"{n_lab} labelled slices of {sum(len(f) for f in flags)} (ratio {ratio}) in {len(volumes)} volumes")
    if n_lab == 0:
        raise ValueError(f"ratio {ratio} leaves no labelled slice under preset {preset!r}")
    slices = torch.cat([torch.from_numpy(v.image[labelled[n]]) for n, v in volumes if labelled[n]])
    labels = torch.cat([torch.from_numpy(v.mask[labelled[n]].astype(np.float32)) for n, v in volumes if labelled[n]])
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    # an epoch has as many updates as batches over all training slices, as in the original code
    steps = math.ceil(sum(len(f) for f in flags) / batch)
    if encoder is None:
        seg = train_slice_segmenter(slices, labels, name=encoder_model, kwargs=encoder_kwargs, epochs=encoder_epochs,
                                    batch=batch, size=(size, size), generator=generator, log=log, steps_per_epoch=steps)
        save_checkpoint(run / "encoder.pt", seg, name=encoder_model, kwargs=dict(encoder_kwargs or {}))
        encoder = str(run / "encoder.pt")
    spec = {"checkpoint": str(Path(encoder).resolve())}
    teacher = SliceTeacher(encoder_from_spec(spec))
    history = train_teacher_head(teacher, slices, labels, epochs=epochs, batch=batch, lr=lr, size=(size, size),
                                 generator=generator, log=log, steps_per_epoch=steps)
    save_teacher(run / "teacher.pt", teacher, spec, {"ratio": ratio, "seed": seed})
    settings = {"data": str(Path(data).resolve()), "ratio": ratio, "seed": seed, "size": size, "chunk": chunk,
                "preset": preset, "stratify": stratify, "encoder": spec, "teacher_loss": history[-1] if history else None}
    _save_json(run / "labelled.json", labelled)
    _save_json(run / "run.json", settings)
    return settings


# ------------------------------------------------------------------------------- stage B: pseudo-labels
def write_pseudo_labels(run, *, draws: int = 20, solver: str = "pcg", smooth_chunk: int | None = None,
                        lambda_tv_z: float | None = None, log=_log_default) -> list[str]:
    """Pseudo-labels of every training volume into run/pseudo/<name>.npz (prob, sigma: float16)."""
    from dtc.io import atomic_write_bytes
    from dtc.volume.teacher import load_teacher, pseudo_label_volume

    run = Path(run)
    settings = _read_run(run)
    teacher, _ = load_teacher(run / "teacher.pt")
    generator = torch.Generator().manual_seed(int(settings["seed"]) + 1)
    names = []
    for name, vol in read_volumes(settings["data"]):
        out = pseudo_label_volume(teacher, torch.from_numpy(vol.image), draws=draws, size=(settings["size"],) * 2,
                                  generator=generator, solver=solver, chunk=smooth_chunk, lambda_tv_z=lambda_tv_z)
        buf = io.BytesIO()
        np.savez_compressed(buf, prob=out["prob"].numpy(), sigma=out["sigma"].numpy())
        atomic_write_bytes(run / "pseudo" / f"{name}.npz", buf.getvalue())
        if vol.mask is not None:
            from dtc.metrics.volume import volume_metrics

            m = volume_metrics(out["prob"].float().numpy(), vol.mask, vol.spacing)
            log(f"pseudo-labels {name}: Dice {m['dice']:.3f} against the full label (for information)")
        names.append(name)
    return names


# ---------------------------------------------------------------------------------- stage C: student
def _chunk_starts(depth: int, z: int) -> list[int]:
    # one start per slice, clamped so the chunk stays inside its volume (never crossing into the next)
    return sorted({min(s, max(depth - z, 0)) for s in range(depth)})


def _take_chunk(t: torch.Tensor, start: int, z: int) -> torch.Tensor:
    piece = t[start:start + z]
    if piece.shape[0] < z:  # a volume shorter than a chunk: repeat its last slice
        piece = torch.cat([piece, piece[-1:].expand(z - piece.shape[0], *piece.shape[1:])])
    return piece


def train_student(run, mode: str = "full", *, epochs: int = 100, batch: int = 16, lr: float = 1e-4,
                  base: int = 32, chunks_per_epoch: int | None = None, lambda_self: float = 1.0,
                  lambda_perm: float = 1.0, n_points: int = 256, max_slices: int = 64, log=_log_default) -> dict:
    """Train StudentKD in one of STUDENT_MODES; writes run/student-<mode>.pt and returns the loss history."""
    from dtc.io import atomic_torch_save
    from dtc.models import StudentKD
    from dtc.volume.augment import random_affine
    from dtc.volume.corr import correlation_distillation
    from dtc.volume.teacher import load_teacher

    if mode not in STUDENT_MODES:
        raise ValueError(f"mode must be one of {STUDENT_MODES}, got {mode!r}")
    run = Path(run)
    settings = _read_run(run)
    labelled = json.loads((run / "labelled.json").read_text())
    size, z = int(settings["size"]), int(settings["chunk"])
    seed = int(settings["seed"])
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 2)
    images, targets, weights, starts = [], [], [], []
    for name, vol in read_volumes(settings["data"]):
        image = resize_volume(torch.from_numpy(vol.image), (size, size))
        gt = (resize_volume(torch.from_numpy(vol.mask.astype(np.float32)), (size, size), "bilinear") >= 0.5).float()
        flag = torch.zeros(image.shape[0])
        flag[labelled.get(name, [])] = 1
        if mode == "sparse":
            target, weight = gt * flag[:, None, None], flag
        else:
            path = run / "pseudo" / f"{name}.npz"
            if not path.is_file():
                raise ValueError(f"{path}: no pseudo-labels (run `dtc xdim pseudo` first)")
            prob = torch.from_numpy(np.load(path)["prob"].astype(np.float32))
            prob = resize_volume(prob, (size, size), "bilinear")
            # the ground truth where a slice is labelled, the pseudo-label elsewhere
            target = torch.where(flag[:, None, None] > 0, gt, prob)
            weight = torch.ones(image.shape[0])
        k = len(images)
        images.append(image)
        targets.append(target)
        weights.append(weight)
        for s in _chunk_starts(image.shape[0], z):
            if weight[s:s + z].sum() > 0:
                starts.append((k, s))
    if not starts:
        raise ValueError("no training chunk holds a labelled slice")
    teacher = load_teacher(run / "teacher.pt")[0] if mode == "full" else None
    kd_channels = teacher.encoder.channels if teacher is not None else 8
    student = StudentKD(in_channels=1, base=base, kd_channels=kd_channels)
    opt = torch.optim.Adam(student.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [math.ceil(0.7 * epochs), math.ceil(0.9 * epochs)], 0.1)
    history = []
    for epoch in range(epochs):
        student.train()
        order = torch.randperm(len(starts), generator=generator).tolist()
        if chunks_per_epoch:
            order = order[:chunks_per_epoch]
        total, steps = 0.0, 0
        for i in range(0, len(order), batch):
            picks = [starts[j] for j in order[i:i + batch]]
            x = torch.stack([_take_chunk(images[k], s, z) for k, s in picks])       # [B, Z, S, S]
            y = torch.stack([_take_chunk(targets[k], s, z) for k, s in picks])
            w = torch.stack([_take_chunk(weights[k], s, z) for k, s in picks])       # [B, Z]
            x, y = random_affine(x, y, generator)
            y = (y >= 0.5).float()  # binarised after augmentation
            logits, kd = student(x[:, None])
            bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean((2, 3))
            loss = (bce * w).sum() / w.sum().clamp_min(1)
            if teacher is not None:
                feats = teacher.features(x.reshape(-1, 1, size, size))
                l_self, l_perm = correlation_distillation(kd, feats, n_points=n_points, max_slices=max_slices,
                                                          generator=generator)
                loss = loss + lambda_self * l_self + lambda_perm * l_perm
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        sched.step()
        history.append(total / max(steps, 1))
        log(f"student[{mode}] epoch {epoch + 1}/{epochs}: loss {history[-1]:.4f}")
    state = {"format": STUDENT_FORMAT, "kwargs": student.init_kwargs,
             "state_dict": {k: v.detach().cpu() for k, v in student.state_dict().items()},
             "size": size, "chunk": z, "mode": mode, "history": history}
    atomic_torch_save(state, run / f"student-{mode}.pt")
    return {"mode": mode, "history": history}


def load_student(path):
    """(StudentKD in eval mode, its file's settings) from a student-<mode>.pt."""
    from dtc.models import StudentKD

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"student file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable XDim-KD student file ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != STUDENT_FORMAT:
        raise ValueError(f"{path}: not an XDim-KD student file (expected format {STUDENT_FORMAT!r})")
    net = StudentKD(**state["kwargs"])
    net.load_state_dict(state["state_dict"])
    return net.eval(), state


# ------------------------------------------------------------------------------------------ inference
def chunk_weights(z: int, overlap: int) -> torch.Tensor:
    """Per-slice blending weights of a chunk: a linear ramp over the overlapping slices at each end, 1 in
    between (all ones without overlap)."""
    w = torch.ones(z, dtype=torch.float64)
    for i in range(min(overlap, z // 2)):
        w[i] = w[z - 1 - i] = (i + 1) / (overlap + 1)
    return w


def _network_device(net, fallback: torch.device) -> torch.device:
    """Where `net` computes: its first parameter's device (a network without parameters runs anywhere)."""
    first = next(net.parameters(), None)
    return fallback if first is None else first.device


def predict_volume(student, image: torch.Tensor, *, size: int, z: int = 16, overlap: int | None = None,
                   batch: int = 4) -> torch.Tensor:
    """Probabilities [D, H, W] of a volume [D, H, W] in [0, 1] at native size.

    overlap=0: the original code's non-overlapping chunks, the last padded by repeating the volume's last
    slice. overlap > 0 (default z // 2, 8 for 16-slice chunks): chunks every z - overlap slices (the last one ending at the volume's end), blended
    with linear ramps across z. Slices are resized to size x size for the network and back (bilinear).
    Probabilities below 0.1 are set to 0. The network runs on its own device; the result is on the image's.
    """
    if image.dim() != 3:
        raise ValueError(f"image must be a [D, H, W] volume, got {tuple(image.shape)}")
    overlap = z // 2 if overlap is None else int(overlap)
    if not 0 <= overlap < z:
        raise ValueError(f"overlap must be in [0, z={z}), got {overlap}")
    D, H, W = image.shape
    x = resize_volume(image.float(), (size, size))
    if overlap == 0:
        padded = -(-D // z) * z
        if padded > D:
            x = torch.cat([x, x[-1:].expand(padded - D, size, size)])
        starts = list(range(0, padded, z))
    else:
        if D < z:
            x = torch.cat([x, x[-1:].expand(z - D, size, size)])
        last = max(x.shape[0] - z, 0)
        starts = list(range(0, last + 1, z - overlap))
        if starts[-1] != last:
            starts.append(last)
    ramp = chunk_weights(z, overlap).view(z, 1, 1).to(x.device)
    acc = torch.zeros(x.shape[0], size, size, dtype=torch.float64, device=x.device)
    norm = torch.zeros(x.shape[0], 1, 1, dtype=torch.float64, device=x.device)
    net_device = _network_device(student, x.device)
    student.eval()
    with torch.no_grad():
        for i in range(0, len(starts), batch):
            group = starts[i:i + batch]
            logits, _ = student(torch.stack([x[s:s + z] for s in group])[:, None].to(net_device))
            for s, lg in zip(group, torch.sigmoid(logits.double()).to(x.device)):
                w = ramp.clone()
                if s == 0:
                    w[: z // 2] = 1  # no neighbour to blend with at the volume's ends
                if s + z >= x.shape[0]:
                    w[z // 2:] = 1
                acc[s:s + z] += w * lg
                norm[s:s + z] += w
    prob = (acc / norm)[:D].float()
    prob = F.interpolate(prob[:, None], size=(H, W), mode="bilinear", align_corners=True)[:, 0].clamp_(0, 1)
    return torch.where(prob < 0.1, torch.zeros_like(prob), prob)


def predict_volume_2d(teacher, image: torch.Tensor, *, size: int, batch: int = 32) -> torch.Tensor:
    """The 2-D teacher applied slice by slice (no 3-D context): probabilities [D, H, W] at native size, on
    the image's device (the teacher runs on its own)."""
    D, H, W = image.shape
    x = resize_volume(image.float(), (size, size))[:, None]
    net_device = _network_device(teacher, x.device)
    with torch.no_grad():
        prob = torch.cat([teacher.probabilities(x[i:i + batch].to(net_device)).to(x.device)
                          for i in range(0, D, batch)])
    return F.interpolate(prob, size=(H, W), mode="bilinear", align_corners=True)[:, 0].clamp_(0, 1)


def infer(run, inputs, out, *, model: str = "student-full", overlap: int | None = None, threshold: float = 0.5,
          mesh: bool = False, log=_log_default) -> dict:
    """Segment every volume of `inputs` (a synth3d-style folder or one NIfTI file) with `model`
    ("student-<mode>" or "teacher"), write out/<name>.nii.gz (0/1, the input's affine and spacing), with
    mesh=True also <name>.stl, <name>.ply and <name>.png, and, where labels exist, metrics.json with
    per-volume Dice, HD95 (mm), relative volume error and volume (mL) and their means."""
    from dtc.data.synth3d import write_volume_nifti
    from dtc.metrics.volume import volume_metrics

    run, out = Path(run), Path(out)
    settings = _read_run(run)
    if model == "teacher":
        from dtc.volume.teacher import load_teacher

        teacher = load_teacher(run / "teacher.pt")[0]
        predict = lambda img: predict_volume_2d(teacher, img, size=settings["size"])  # noqa: E731
    elif model.startswith("student-") and model[len("student-"):] in STUDENT_MODES:
        student, state = load_student(run / f"{model}.pt")
        predict = lambda img: predict_volume(student, img, size=state["size"], z=state["chunk"], overlap=overlap)  # noqa: E731
    else:
        raise ValueError(f"model must be 'teacher' or one of {[f'student-{m}' for m in STUDENT_MODES]}, got {model!r}")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, vol in read_volumes(inputs, need_labels=False):
        prob = predict(torch.from_numpy(vol.image)).numpy()
        mask = (prob > threshold).astype(np.uint8)
        write_volume_nifti(out / f"{name}.nii.gz", mask, vol.affine, vol.spacing, label=True)
        if mesh and mask.any():
            from dtc.volume.mesh import render_mesh, surface_mesh, write_ply, write_stl

            verts, faces = surface_mesh(mask, affine=vol.affine)
            write_stl(out / f"{name}.stl", verts, faces)
            write_ply(out / f"{name}.ply", verts, faces)
            render_mesh(out / f"{name}.png", verts, faces, title=name)
        if vol.mask is not None:
            m = {"volume": name, **volume_metrics(prob, vol.mask, vol.spacing, threshold)}
            rows.append(m)
            log(f"{name}: Dice {m['dice']:.3f}, HD95 {m['hd95_mm']:.2f} mm, volume error {m['volume_error']:.3f}, "
                f"{m['volume_ml']:.1f} mL (label {m['volume_ml_gt']:.1f} mL)")
    summary = {"model": model, "volumes": rows}
    if rows:
        summary["mean"] = {k: float(np.nanmean([r[k] for r in rows])) for k in ("dice", "hd95_mm", "volume_error")}
        _save_json(out / "metrics.json", summary)
    return summary
