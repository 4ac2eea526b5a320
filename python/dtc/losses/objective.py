"""The stage-2 objective of docs/method.md §2 in one module."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from dtc.losses import functional as LF
from dtc.losses.config import TERMS, DTCLossConfig
from dtc.losses.pseudo import flip_pseudo_labels

__all__ = ["DTCObjective"]

LOGGED = ("seg", "kd", "con", "proto", "loc", "glob")


class DTCObjective(nn.Module):
    """``L = l_seg L_seg + l_KD L_KD + l_con L_con + l_proto L_proto`` for a window batch (docs/method.md §2).

    ``DTCObjective(preset="dtc", **overrides)`` builds a :class:`DTCLossConfig` (unknown keys raise
    ValueError); ``DTCObjective(config=cfg)`` takes one ready-made.

    Convention:
        All per-frame tensors are window batches ``(B, T, ...)``; see :mod:`dtc.losses.functional` for the
        flow convention (``flows[:, t]``: frame ``t-1`` to ``t``, ``W(A)(p) = A(p - F(p))``; ``flows[:, 0]``
        ignored). ``images`` are raw intensities in ``[0, 1]``; the reference preset's confidence uses the
        configured ImageNet mean/std itself. Terms switched off (weight 0 or absent from ``terms``) are
        not computed and are reported as 0.
    """

    def __init__(self, preset: str = "dtc", *, config: Optional[DTCLossConfig] = None, **overrides):
        super().__init__()
        if config is not None and overrides:
            raise ValueError(f"DTCObjective: pass either config or overrides, got both (overrides {sorted(overrides)})")
        self.config = config if config is not None else DTCLossConfig.from_preset(preset, **overrides)

    def extra_repr(self) -> str:
        return repr(self.config)

    @property
    def active_terms(self) -> tuple:
        return tuple(t for t in TERMS if self.config.weight(t) > 0)

    def pseudo_labels(self, student: nn.Module, teacher: Optional[nn.Module], x: torch.Tensor) -> torch.Tensor:
        """Flip pseudo-labels ``(N, 1, H, W)`` for frames ``x (N, 3, H, W)`` from the configured source."""
        source = student if self.config.pseudo_source == "student" else teacher
        if source is None:
            raise ValueError("DTCObjective.pseudo_labels: pseudo_source='teacher' needs a teacher model")
        labels = flip_pseudo_labels(source, x, mode=self.config.pseudo_label)
        return (labels > 0.5).to(labels.dtype) if self.config.pseudo_binarise else labels

    def forward(
        self,
        student_logits: torch.Tensor,
        local: Optional[torch.Tensor],
        global_: Optional[torch.Tensor],
        teacher_logits: Optional[torch.Tensor],
        pseudo_labels: Optional[torch.Tensor],
        images: Optional[torch.Tensor],
        flows: Optional[torch.Tensor],
        flows_backward: Optional[torch.Tensor] = None,
    ):
        """Returns ``(total, terms)``: the scalar loss and the detached terms ``seg, kd, con, proto, loc, glob``.

        Args:
            student_logits: ``(B, T, 1, H, W)``.
            local: ``(B, T, C_l, h_l, w_l)`` decoder features (proto term).
            global_: ``(B, T, C_g, h_g, w_g)`` bottleneck features (proto term).
            teacher_logits: ``(B, T, 1, H, W)`` (KD term).
            pseudo_labels: ``(B, T, 1, H, W)`` soft labels in ``[0, 1]`` (seg term).
            images: ``(B, T, C, H, W)`` in ``[0, 1]`` (con term).
            flows: ``(B, T, 2, H, W)`` (con and proto terms).
            flows_backward: ``(B, T, 2, H, W)``, required with ``occlusion_check``.
        """
        cfg = self.config
        impl, check = cfg.implementation, cfg.check_inputs
        # Under AMP the networks emit half-precision tensors; the loss is computed in float32.
        low = (torch.float16, torch.bfloat16)
        student_logits, local, global_, teacher_logits, pseudo_labels, images, flows, flows_backward = (
            t.float() if isinstance(t, torch.Tensor) and t.dtype in low else t
            for t in (student_logits, local, global_, teacher_logits, pseudo_labels, images, flows, flows_backward))
        LF._check_window("student_logits", student_logits, channels=1, temporal=False)
        if check:
            _check_finite_and_range(images, flows, flows_backward)
        zero = student_logits.new_zeros(())
        terms = {name: zero for name in LOGGED}
        total = zero
        needs_pairs = cfg.weight("con") > 0 or cfg.weight("proto") > 0
        if needs_pairs and student_logits.shape[1] < 2:
            raise ValueError(f"student_logits must hold T >= 2 frames per window for the temporal terms (con, "
                             f"proto), got T = {student_logits.shape[1]}")

        def need(name, value):
            if value is None:
                raise ValueError(f"DTCObjective: {name} is required while its term is on (weights {cfg.weights}, "
                                 f"terms {cfg.terms})")
            return value

        w = cfg.weight("seg")
        if w > 0:
            target = need("pseudo_labels", pseudo_labels)
            if target.shape != student_logits.shape:
                raise ValueError(f"pseudo_labels must have student_logits's shape {tuple(student_logits.shape)}, got "
                                 f"{tuple(target.shape)}")
            terms["seg"] = LF.bce_dice(student_logits, target.detach(), smooth=cfg.dice_smooth, check=check, impl=impl)
            total = total + w * terms["seg"]
        w = cfg.weight("kd")
        if w > 0:
            terms["kd"] = LF.kd_loss(student_logits, need("teacher_logits", teacher_logits), cfg.tau, impl=impl)
            total = total + w * terms["kd"]
        w = cfg.weight("con")
        if w > 0:
            if cfg.occlusion_check:
                need("flows_backward (occlusion_check=True)", flows_backward)
            imgs = need("images", images)
            if cfg.confidence_input == "structure":
                imgs = LF.structure_images(imgs)
            terms["con"] = LF.temporal_consistency(
                student_logits, imgs, need("flows", flows),
                flows_backward=flows_backward if cfg.occlusion_check else None, alpha=cfg.alpha,
                confidence=cfg.confidence, channel_scale=cfg.channel_scale(imgs.shape[2]) if imgs.dim() == 5 else None,
                warped_target=cfg.warped_target, normalise=cfg.con_normalise, impl=impl)
            total = total + w * terms["con"]
        w = cfg.weight("proto")
        if w > 0:
            probs = torch.sigmoid(student_logits.detach())
            scales = cfg.prototype_scales
            terms["proto"], parts = LF.prototype_alignment(
                probs, local if scales != "global" else None, global_ if scales != "local" else None,
                need("flows", flows), threshold=cfg.fg_threshold, rescale_flow=cfg.rescale_flow, scales=scales,
                warped_target=cfg.warped_target, check=False, impl=impl)
            terms["loc"], terms["glob"] = parts["loc"], parts["glob"]
            total = total + w * terms["proto"]
        return total, {name: value.detach() for name, value in terms.items()}


def _check_finite_and_range(images, flows, flows_backward) -> None:
    """The con term treats a NaN flow as "no pair" and 0..255 images as saturated colour distances, so
    both would give a finite, gradient-free loss without a word; refuse them while ``check_inputs`` is on."""
    for name, flow in (("flows", flows), ("flows_backward", flows_backward)):
        if isinstance(flow, torch.Tensor) and not bool(torch.isfinite(flow).all()):
            raise ValueError(f"DTCObjective: {name} holds NaN or infinite values; check the flow provider's output")
    if isinstance(images, torch.Tensor) and images.numel():
        if not bool(torch.isfinite(images).all()):
            raise ValueError("DTCObjective: images hold NaN or infinite values")
        low, high = float(images.min()), float(images.max())
        if low < -1e-3 or high > 1 + 1e-3:
            raise ValueError(f"DTCObjective: images must be in [0, 1] (divide 8-bit frames by 255), got values in "
                             f"[{low:g}, {high:g}]")
