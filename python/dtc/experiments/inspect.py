"""What the stage-2 objective sees on one window, as pictures: pseudo-labels, the confidence map M,
the warped target, the prototypes' masks. Built from the public loss API (:mod:`dtc.losses`) so the
notebooks show exactly what training uses.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["training_signal_maps"]


@torch.no_grad()
def training_signal_maps(student, window: dict, *, preset: str = "dtc", loss: Optional[dict] = None,
                         flow_provider: str = "gt", device="cpu") -> dict:
    """The training signals of the DTC objective on one window.

    Args:
        student: a network returning ``(logits, local, global)`` (``dtc.models.create(...)``).
        window: one dataset item (``image (T, 3, H, W)`` in [0, 1], ``mask``, and ``flow`` for ``"gt"``).
        preset, loss: the :class:`dtc.losses.DTCLossConfig` preset and overrides (as ``loss.*`` of a run).
        flow_provider: a name of :func:`dtc.flow.make_flow_provider` (``"gt"``, ``"farneback"``, ``"opencv"``).

    Returns:
        numpy arrays: ``image``, ``mask``, ``prob``, ``pseudo`` ``(T, H, W)``; per pair ``t = 1..T-1``:
        ``flow (T-1, 2, H, W)``, ``confidence`` (M, on the structure images with ``confidence_input="structure"``),
        ``warped_target`` (``P~`` as the loss uses it),
        ``local_mask`` (``fg_t * 1[P~ > thr]``, ``P~`` the warped target) ``(T-1, H, W)``, ``global_bg_prev``/``global_bg_cur``
        (background masks at the bottleneck size ``(T-1, h, w)``); ``threshold (T-1,)`` and ``loss_con``.

    Convention:
        Same as :mod:`dtc.losses.functional`: ``flow[t-1]`` here is the flow of the pair ``(t-1, t)`` in
        the backward-warp convention ``W(A)(p) = A(p - F(p))``.
    """
    from dtc.engine.inference import normalise_images
    from dtc.engine.trainer import split_outputs
    from dtc.flow import make_flow_provider
    from dtc.losses import DTCLossConfig, flip_pseudo_labels, foreground_threshold, temporal_consistency
    from dtc.losses.functional import structure_images

    if not isinstance(window, dict) or "image" not in window:
        raise ValueError("window must be a dataset item (a dict with 'image' (T, 3, H, W))")
    images = window["image"]
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] < 2 or images.shape[1] != 3:
        raise ValueError(f"window['image'] must be (T, 3, H, W) with T >= 2, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    cfg = DTCLossConfig.from_preset(preset, **(loss or {}))
    device = torch.device(device)
    T = images.shape[0]
    images = images.to(device)[None]
    batch = {k: (v.to(device)[None] if isinstance(v, torch.Tensor) else [v]) for k, v in window.items()}
    flows = make_flow_provider(flow_provider)(images, batch)
    x = normalise_images(images[0])
    was_training = student.training
    student.eval()
    try:
        logits, _, global_ = split_outputs(student(x))
        pseudo = flip_pseudo_labels(student, x, mode=cfg.pseudo_label)
    finally:
        student.train(was_training)
    logits = logits.float()[None]
    probs = torch.sigmoid(logits)
    confidence_images = structure_images(images) if cfg.confidence_input == "structure" else images
    loss_con, maps = temporal_consistency(
        logits, confidence_images, flows, alpha=cfg.alpha, confidence=cfg.confidence, channel_scale=cfg.channel_scale(3),
        warped_target=cfg.warped_target, normalise=cfg.con_normalise, return_maps=True, impl=cfg.implementation)
    thr = foreground_threshold(probs, cfg.fg_threshold, impl=cfg.implementation)
    local_masks, bg_prev, bg_cur = [], [], []
    for t in range(1, T):
        # The prototype mask tests the consistency term's warped target against the threshold.
        target = maps["target"][:, t - 1]
        fg_cur = (probs[:, t] > thr[t - 1]).float()
        local_masks.append(fg_cur * (target > thr[t - 1]).float())
        if global_ is not None:
            size = global_.shape[-2:]
            bg_prev.append(F.interpolate(1 - (probs[:, t - 1] > thr[t - 1]).float(), size=size, mode="nearest"))
            bg_cur.append(F.interpolate(1 - fg_cur, size=size, mode="nearest"))

    def arr(t):
        return t.detach().float().cpu().numpy()

    out = {
        "image": arr(images[0].mean(1)), "mask": arr(window["mask"][:, 0]), "prob": arr(probs[0, :, 0]),
        "pseudo": arr(pseudo[:, 0]), "flow": arr(flows[0, 1:]), "confidence": arr(maps["confidence"][0, :, 0]),
        "warped_target": arr(maps["target"][0, :, 0]), "local_mask": arr(torch.cat(local_masks)[:, 0]),
        "threshold": arr(thr), "loss_con": float(loss_con),
    }
    if bg_prev:
        out["global_bg_prev"] = arr(torch.cat(bg_prev)[:, 0])
        out["global_bg_cur"] = arr(torch.cat(bg_cur)[:, 0])
    return out
