"""MONAI-style metric objects: ``metric(pred, gt, video_id=..., frame_index=...)`` per frame or batch,
``metric.aggregate()`` for per-video and overall results, ``metric.reset()``.

Presets:
    ``"sunseg"`` (default): every frame is scored, frames are ordered by ``frame_index`` within each
    video, averaged per video (SUN-SEG drops each video's first and last frame, ``drop_ends``), then
    averaged over videos. Full precision.
    ``"reference"``: the DTC authors' released evaluation: one value per call (a batch), averaged over
    batches with no per-video step and no frame dropping, rounded to 3 decimals. Threshold metrics
    pool the batch's pixels before dividing ("batch-pooled"); curve metrics average the batch's frames.

Convention:
    ``pred``: (H, W) or (N, H, W) probabilities in [0, 1]; ``gt``: same shape, binary. MONAI's
    conventions work too: ``(B, 1, H, W)`` tensors (the channel axis is dropped) and the keywords
    ``y_pred=`` / ``y=`` for ``pred`` / ``gt``.
    ``video_id``: a hashable or a sequence of N; ``frame_index``: int or sequence of N (defaults to
    arrival order within the video).
"""
from __future__ import annotations

from collections import OrderedDict, defaultdict

import numpy as np

from dtc.metrics import reference as ref
from dtc.metrics import sunseg as sunseg_mod
from dtc.metrics._checks import as_array, check_mask, check_prob_map

PRESETS = ("sunseg", "reference")


def _check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    return preset


def _drop_channel(x, name: str):
    """``(B, 1, H, W)`` -> ``(B, H, W)`` (MONAI's layout of a one-class segmentation), on the input's device."""
    shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
    if len(shape) == 4:
        if shape[1] != 1:
            raise ValueError(f"{name}: a 4-D input must be (B, 1, H, W) with one foreground channel, got shape {shape}")
        return x[:, 0]
    return x


def _inputs(owner: str, pred, gt, y_pred, y, *, gt_required: bool = True):
    """Resolve MONAI's ``y_pred``/``y`` keywords against ``pred``/``gt`` and drop a channel axis of one."""
    if y_pred is not None:
        if pred is not None:
            raise TypeError(f"{owner}: pass pred or y_pred, not both")
        pred = y_pred
    if y is not None:
        if gt is not None:
            raise TypeError(f"{owner}: pass gt or y, not both")
        gt = y
    if pred is None:
        raise TypeError(f"{owner}: pred (or y_pred) is required")
    if gt is None and gt_required:
        raise TypeError(f"{owner}: gt (or y) is required")
    return _drop_channel(pred, "pred"), (None if gt is None else _drop_channel(gt, "gt"))


def _split_batch(pred, gt, video_id, frame_index):
    """Yield (video_id, frame_index or None, pred (H,W) float64, gt (H,W) bool) from a frame or a batch."""
    p = as_array(pred, "pred")
    g = as_array(gt, "gt")
    if p.ndim == 2:
        p, g = p[None], g[None] if g.ndim == 2 else g
    if p.ndim != 3:
        raise ValueError(f"pred must be (H, W) or (N, H, W), got shape {tuple(p.shape)}")
    if g.shape != p.shape:
        raise ValueError(f"gt must have pred's shape {tuple(p.shape)}, got {tuple(g.shape)}")
    n = p.shape[0]
    if n == 0:
        raise ValueError("pred is an empty batch (N = 0)")
    vids = list(video_id) if isinstance(video_id, (list, tuple, np.ndarray)) else [video_id] * n
    if len(vids) != n:
        raise ValueError(f"video_id must be one id or {n} ids (one per frame), got {len(vids)}")
    if frame_index is None:
        idxs = [None] * n
    else:
        idxs = list(frame_index) if isinstance(frame_index, (list, tuple, np.ndarray)) else [frame_index]
        if len(idxs) != n:
            raise ValueError(f"frame_index must be one index or {n} indices, got {len(idxs)}")
    for i in range(n):
        yield vids[i], idxs[i], check_prob_map(p[i], "pred"), check_mask(g[i], "gt")


def _torch_records(preds: list, gts: list, original_pred) -> list[dict]:
    """Score validated, prepared frames as one batch with the torch backend, on the input's device."""
    import torch

    from dtc.metrics import torch_backend

    device = original_pred.device if isinstance(original_pred, torch.Tensor) else torch.device("cpu")
    batch = torch_backend.sunseg_frames(torch.from_numpy(np.stack(preds)).to(device),
                                        torch.from_numpy(np.stack(gts)).to(device), check=False)
    return torch_backend.to_records(batch)


class _PerVideo:
    def __init__(self, preset: str):
        self.preset = _check_preset(preset)
        self.reset()

    def reset(self) -> None:
        self._frames: dict = defaultdict(list)  # video -> [(frame_index, record)]
        self._batches: list = []
        self._arrival: dict = defaultdict(int)

    def _index(self, video, frame_index):
        idx = self._arrival[video] if frame_index is None else int(frame_index)
        self._arrival[video] += 1
        return idx

    def _ordered(self) -> "OrderedDict":
        if not self._frames:
            raise ValueError("no frames were accumulated; call the metric on predictions before aggregate()")
        out = OrderedDict()
        for video in sorted(self._frames, key=lambda v: sunseg_mod.natural_key(str(v))):
            frames = sorted(self._frames[video], key=lambda fr: fr[0])
            out[video] = [r for _, r in frames]
        return out


class SUNSegMetric(_PerVideo):
    """The SUN-SEG suite (S-measure, E-measures, weighted F, F-measures, MAE, Dice/Sen/Spe/IoU curves).

    ``normalize="minmax"`` applies the toolbox's per-frame min-max stretch (needed to reproduce its
    tables); ``None`` scores the probabilities as they are. ``case_decimals=3`` rounds each video's
    scalar scores before the mean over videos, as the toolbox version that produced its published
    tables did (:mod:`dtc.metrics.sunseg`). ``backend="torch"`` scores each call's frames as one batch
    (:mod:`dtc.metrics.torch_backend`) on the device of a tensor ``pred``.
    """

    def __init__(self, preset: str = "sunseg", normalize: str | None = "minmax", drop_ends: bool | None = None,
                 backend: str = "auto", case_decimals: int | None = None):
        from dtc.metrics.functional import resolve_backend

        if normalize not in ("minmax", None):
            raise ValueError(f"normalize must be 'minmax' or None, got {normalize!r}")
        self.normalize = normalize
        self.drop_ends = (preset == "sunseg") if drop_ends is None else bool(drop_ends)
        self.backend = resolve_backend(backend)
        sunseg_mod.check_case_decimals(case_decimals)
        self.case_decimals = case_decimals
        super().__init__(preset)

    def __call__(self, pred=None, gt=None, video_id="video", frame_index=None, *, y_pred=None, y=None) -> list[dict]:
        from dtc.metrics.functional import sunseg_frame

        pred, gt = _inputs("SUNSegMetric", pred, gt, y_pred, y)
        frames = []
        for vid, fi, p, g in _split_batch(pred, gt, video_id, frame_index):
            if self.normalize == "minmax":
                p = sunseg_mod.minmax_normalize(p)
            frames.append((vid, fi, p, g))
        if self.backend == "torch":
            records = _torch_records([p for _, _, p, _ in frames], [g for _, _, _, g in frames], pred)
        else:
            records = [sunseg_frame(p, g, backend=self.backend) for _, _, p, g in frames]
        batch = []
        for (vid, fi, _, _), rec in zip(frames, records):
            self._frames[vid].append((self._index(vid, fi), rec))
            batch.append(rec)
        self._batches.append(sunseg_mod.mean_records(batch))
        return batch

    def aggregate(self) -> dict:
        """``{"per_video": {video: {column: value}}, "overall": {column: value}}`` (toolbox columns)."""
        if self.preset == "reference":
            if not self._batches:
                raise ValueError("no frames were accumulated; call the metric on predictions before aggregate()")
            per_batch = [sunseg_mod.summarize(b) for b in self._batches]
            overall = OrderedDict((k, round(float(np.mean([b[k] for b in per_batch])), 3)) for k in per_batch[0])
            per_video = {v: sunseg_mod.summarize(sunseg_mod.mean_records(recs)) for v, recs in self._ordered().items()}
            return {"per_video": per_video, "overall": overall}
        per_video, overall = sunseg_mod.per_case_protocol(self._ordered(), drop_ends=self.drop_ends,
                                                             case_decimals=self.case_decimals)
        return {"per_video": per_video, "overall": overall}


class BinaryMetric(_PerVideo):
    """Metrics at a fixed threshold (default 0.5): IoU, Dice, sensitivity, precision, specificity,
    accuracy, F1, and HD95/ASSD (pixels, or ``spacing`` units). Per-video means skip NaN (undefined)
    frames; see :func:`dtc.metrics.reference.binary_metrics` for the empty-mask conventions."""

    def __init__(self, preset: str = "sunseg", threshold: float = 0.5, spacing=None, distances: bool = True):
        self.threshold = float(threshold)
        self.spacing = tuple(spacing) if spacing is not None else (1.0, 1.0)
        self.distances = distances
        super().__init__(preset)

    def __call__(self, pred=None, gt=None, video_id="video", frame_index=None, *, y_pred=None, y=None) -> list[dict]:
        pred, gt = _inputs("BinaryMetric", pred, gt, y_pred, y)
        batch, counts = [], np.zeros(4)
        for vid, fi, p, g in _split_batch(pred, gt, video_id, frame_index):
            rec = ref.binary_metrics(p, g, self.threshold)
            if self.distances:
                rec["HD95"], rec["ASSD"] = ref.hd95_assd(p, g, self.threshold, self.spacing)
            b = p > self.threshold
            counts += [np.count_nonzero(b & g), np.count_nonzero(b & ~g), np.count_nonzero(~b & g),
                       np.count_nonzero(~b & ~g)]
            self._frames[vid].append((self._index(vid, fi), rec))
            batch.append(rec)
        self._batches.append(ref._ratios_from_counts(*counts))
        return batch

    @staticmethod
    def _mean(records: list[dict]) -> "OrderedDict[str, float]":
        keys = records[0].keys()
        out = OrderedDict()
        for k in keys:
            v = np.array([r[k] for r in records], dtype=np.float64)
            out[k] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
        return out

    def aggregate(self) -> dict:
        per_video = {v: self._mean(recs) for v, recs in self._ordered().items()}
        if self.preset == "reference":
            overall = OrderedDict((k, round(v, 3)) for k, v in self._mean(self._batches).items())
        else:
            overall = self._mean(list(per_video.values()))
        return {"per_video": per_video, "overall": overall}


class TemporalMetric(_PerVideo):
    """Temporal stability per video: TC, and with ``flow``: TC_flow, warping IoU, warping error (Lai et
    al.; occlusion-masked when ``flow_backward`` or ``mask`` is given); area flicker, and with ``gt``:
    Dice flicker, the worst frame's Dice (``worst_Dice``) and, from the per-frame ``event`` flags (a
    transient event touched the frame; frames without a flag count as calm), the mean Dice on event
    frames and on calm frames (``Dice_event``, ``Dice_calm``; NaN for a video without such frames).
    Frames of a video must arrive in increasing ``frame_index`` order, because each frame is compared
    with the previous one of its video."""

    def __init__(self, preset: str = "sunseg", threshold: float = 0.5, warp=None):
        self.threshold = float(threshold)
        self.warp = warp
        super().__init__(preset)

    def reset(self) -> None:
        super().reset()
        self._prev: dict = {}

    def __call__(self, pred=None, gt=None, video_id="video", frame_index=None, flow=None, flow_backward=None,
                 mask=None, event=None, *, y_pred=None, y=None) -> list[dict]:
        """One frame ``(H, W)``, or a batch of consecutive frames ``(N, H, W)`` / ``(N, 1, H, W)`` in time
        order (then ``video_id`` and ``frame_index`` may be one value or N, and ``flow``,
        ``flow_backward`` and ``mask`` carry a leading N, ``event`` is one flag or N: entry ``i`` relates frame ``i`` to the frame
        before it, which for ``i = 0`` is the previous call's last frame of that video)."""
        pred, gt = _inputs("TemporalMetric", pred, gt, y_pred, y, gt_required=False)
        p_all = as_array(pred, "pred")
        if p_all.ndim == 2:
            return [self._frame(p_all, gt, video_id, frame_index, flow, flow_backward, mask, event)]
        if p_all.ndim != 3 or p_all.shape[0] == 0:
            raise ValueError(f"TemporalMetric takes a frame (H, W) or consecutive frames (N, H, W) / (N, 1, H, W), "
                             f"got pred of shape {tuple(p_all.shape)}")
        n = p_all.shape[0]
        g_all = None if gt is None else as_array(gt, "gt")
        if g_all is not None and g_all.shape != p_all.shape:
            raise ValueError(f"gt must have pred's shape {tuple(p_all.shape)}, got {tuple(g_all.shape)}")

        def per_frame(value, name):
            if not isinstance(value, str) and np.ndim(value) >= 1:
                if len(value) != n:
                    raise ValueError(f"{name} must hold one entry per frame ({n}), got {len(value)}")
                return list(value)
            return [value] * n

        vids = per_frame(video_id, "video_id")
        idxs = [None] * n if frame_index is None else per_frame(frame_index, "frame_index")
        events = [None] * n if event is None else per_frame(event, "event")
        extras = {}
        for name, value in (("flow", flow), ("flow_backward", flow_backward), ("mask", mask)):
            if value is not None and (not hasattr(value, "shape") or len(value.shape) < 3 or value.shape[0] != n):
                raise ValueError(f"{name} must carry one entry per frame (N = {n} leading), got "
                                 f"{tuple(value.shape) if hasattr(value, 'shape') else type(value).__name__}")
            extras[name] = [None] * n if value is None else [value[i] for i in range(n)]
        return [self._frame(p_all[i], None if g_all is None else g_all[i], vids[i], idxs[i], extras["flow"][i],
                            extras["flow_backward"][i], extras["mask"][i], events[i]) for i in range(n)]

    def _frame(self, p, gt, video_id, frame_index, flow, flow_backward, mask, event) -> dict:
        from dtc.metrics import temporal as tm

        p = check_prob_map(p, "pred")
        g = None
        if gt is not None:
            g = check_mask(gt, "gt")
            if g.shape != p.shape:
                raise ValueError(f"gt must have pred's shape {p.shape}, got {g.shape}")
        idx = self._index(video_id, frame_index)
        rec = {"area": float(np.mean(p > self.threshold))}
        if event is not None:
            if not isinstance(event, (bool, np.bool_)) and event not in (0, 1):
                raise ValueError(f"event must be a bool (a transient event touched the frame), got {event!r}")
            rec["event"] = bool(event)
        if g is not None:
            rec["Dice"] = ref.binary_metrics(p, g, self.threshold)["Dice"]
        prev = self._prev.get(video_id)
        if prev is not None:
            prev_idx, q = prev
            if idx <= prev_idx:
                raise ValueError(f"frame_index must increase within video {video_id!r}: got {idx} after {prev_idx}")
            if q.shape != p.shape:
                raise ValueError(f"pred shape {p.shape} differs from the previous frame's {q.shape} in video {video_id!r}")
            rec["TC"] = float(1.0 - np.mean(np.abs(p - q)))
            if flow is not None:
                rec["TC_flow"] = tm.flow_temporal_consistency(p, q, flow, self.warp)
                rec["warp_IoU"] = tm.warping_iou(p, q, flow, self.threshold, self.warp)
                rec["warp_error"] = tm.warping_error(p, q, flow, mask=mask, flow_backward=flow_backward, warp=self.warp)
        self._prev[video_id] = (idx, p)
        self._frames[video_id].append((idx, rec))
        return rec

    def aggregate(self) -> dict:
        per_video = OrderedDict()
        for video, recs in self._ordered().items():
            out = OrderedDict()
            for k in ("TC", "TC_flow", "warp_IoU", "warp_error"):
                v = [r[k] for r in recs if k in r and np.isfinite(r[k])]
                out[k] = float(np.mean(v)) if v else float("nan")
            from dtc.metrics.temporal import event_split, flicker, worst_frame

            out["area_flicker"] = flicker([r["area"] for r in recs])
            scored = [r for r in recs if "Dice" in r]
            dices = [r["Dice"] for r in scored]
            out["dice_flicker"] = flicker(dices) if dices else float("nan")
            out["worst_Dice"] = worst_frame(dices) if dices else float("nan")
            out["Dice_event"], out["Dice_calm"] = (event_split(dices, [r.get("event", False) for r in scored])
                                                   if dices else (float("nan"), float("nan")))
            per_video[video] = out
        keys = next(iter(per_video.values())).keys()
        overall = OrderedDict()
        for k in keys:
            v = np.array([pv[k] for pv in per_video.values()])
            overall[k] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            if self.preset == "reference":
                overall[k] = round(overall[k], 3)
        return {"per_video": per_video, "overall": overall}
