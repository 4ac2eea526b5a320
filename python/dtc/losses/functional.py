"""The stage-2 loss terms of docs/method.md §2 as functions.

Each function validates its input with messages that name the argument, then runs either the fused
C++/CUDA op (``impl="fused"``, the default: ``torch.ops.dtc.*``) or the plain-PyTorch composition
(``impl="reference"``, :mod:`dtc.ops.reference`). Both give the same values and gradients.

Convention (every function here):
    A *window batch* tensor is ``(B, T, C, H, W)``: ``B`` windows of ``T`` consecutive frames. Pairs are
    ``(t-1, t)`` for ``t = 1..T-1``. ``flows[:, t]`` is the flow from frame ``t-1`` to frame ``t`` in pixels
    (channel 0 = dx, 1 = dy) in the backward-warp convention ``W(A)(p) = A(p - F(p))``, bilinear with
    border padding and ``align_corners=True`` pixel centres; ``flows[:, 0]`` is ignored. Flows and images
    are constants (no gradient flows into them). Logits are raw network outputs; probabilities are
    ``sigmoid(logits)`` in ``[0, 1]``.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

__all__ = [
    "bce_dice", "kd_loss", "foreground_threshold", "temporal_consistency", "prototype_alignment",
    "masked_average_pool", "structure_images",
]

_IMPLS = ("fused", "reference")


def _backend(impl: str):
    if impl not in _IMPLS:
        raise ValueError(f"impl must be 'fused' or 'reference', got {impl!r}")
    # Imported here: dtc.losses must import without the compiled core (dtc.ops loads it).
    if impl == "fused":
        import dtc.ops as backend
    else:
        from dtc.ops import reference as backend
    return backend


def _check_tensor(name: str, x, dims: Optional[int] = None):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{name} must be a {dims}-D tensor, got shape {tuple(x.shape)}")


def _check_like(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor):
    if x.device != ref.device:
        raise ValueError(f"{name} must be on {ref_name}'s device {ref.device}, got {x.device}")
    if x.dtype != ref.dtype:
        raise TypeError(f"{name} must have {ref_name}'s dtype {ref.dtype}, got {x.dtype}")


def _check_window(name: str, x, channels: Optional[int] = None, temporal: bool = True):
    _check_tensor(name, x)
    if x.dim() != 5:
        raise ValueError(f"{name} must be a window batch [B, T, C, H, W], got shape {list(x.shape)}")
    if temporal and x.shape[1] < 2:
        raise ValueError(f"{name} must hold T >= 2 frames per window for the temporal terms, got T = {x.shape[1]}")
    if channels is not None and x.shape[2] != channels:
        raise ValueError(f"{name} must have {channels} channel(s) in dim 2 (B, T, {channels}, H, W), "
                         f"got shape {tuple(x.shape)}")
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(f"{name} must have non-zero height and width, got shape {tuple(x.shape)}")


def _check_same_frames(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor, spatial: bool = True):
    _check_like(name, x, ref_name, ref)
    if x.shape[:2] != ref.shape[:2]:
        raise ValueError(f"{name} must have {ref_name}'s [B, T] = {list(ref.shape[:2])}, got shape {list(x.shape)}")
    if spatial and x.shape[-2:] != ref.shape[-2:]:
        raise ValueError(f"{name} must have {ref_name}'s spatial size {list(ref.shape[-2:])}, got shape "
                         f"{list(x.shape)}")


def check_probabilities(name: str, x: torch.Tensor) -> None:
    """Raise ValueError if ``x`` leaves ``[0, 1]`` (or is NaN). Costs one host sync on CUDA."""
    if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
        raise ValueError(f"{name} must hold probabilities in [0, 1], got values in "
                         f"[{x.min().item():.4g}, {x.max().item():.4g}]")


def bce_dice(logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1e-5, check: bool = True,
             impl: str = "fused") -> torch.Tensor:
    """``0.5 * BCE(z, y) + 1 - mean_n softDice_n(sigmoid(z), y)`` (docs/method.md §1), stable from logits.

    Args:
        logits: ``(..., C, H, W)``; each trailing ``(C, H, W)`` block is one sample of the soft Dice.
        target: same shape, dtype and device, soft labels in ``[0, 1]``. No gradient flows into it.
        smooth: Dice smoothing ``(2 sum py + s) / (sum p + sum y + s)``.
        check: verify ``target`` lies in ``[0, 1]`` (a host sync on CUDA).

    Convention:
        BCE is the mean over every element, ``max(z, 0) - z*y + log(1 + exp(-|z|))``; the Dice is per
        sample, averaged over samples.
    """
    _check_tensor("logits", logits)
    _check_tensor("target", target)
    if logits.dim() < 3:
        raise ValueError(f"logits must be (..., C, H, W), got shape {tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(f"target must have logits's shape {tuple(logits.shape)}, got {tuple(target.shape)}")
    _check_like("target", target, "logits", logits)
    if check:
        check_probabilities("target", target)
    return _backend(impl).bce_dice(logits, target, smooth)[0]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 4.0, *,
            impl: str = "fused") -> torch.Tensor:
    """Temperature-scaled sigmoid distillation ``tau^2 * mean((sigmoid(z/tau) - sigmoid(z_T/tau))^2)``.

    ``teacher_logits`` (same shape, dtype, device) receives no gradient."""
    _check_tensor("student_logits", student_logits)
    _check_tensor("teacher_logits", teacher_logits)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits must have student_logits's shape {tuple(student_logits.shape)}, got "
                         f"{tuple(teacher_logits.shape)}")
    _check_like("teacher_logits", teacher_logits, "student_logits", student_logits)
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return _backend(impl).kd_loss(student_logits, teacher_logits.detach(), float(tau))


def foreground_threshold(probs: torch.Tensor, threshold: Union[str, float] = 0.5, *,
                         impl: str = "fused") -> torch.Tensor:
    """The foreground threshold of each pair ``t = 1..T-1``, shape ``(T-1,)``, on ``probs``' device.

    ``"percentile70"`` (reference): ``mean_b sort(P_t[b].flatten())[int(0.7 N)]``, ``N = H W``: the
    order statistic the authors' code indexes, without the interpolation ``torch.quantile`` would add;
    computed with a batched selection on the device (no sort, no host sync). A float (dtc: 0.5) is used
    for every pair.
    """
    _check_window("probs", probs, channels=1)
    T = probs.shape[1]
    if isinstance(threshold, str):
        if threshold != "percentile70":
            raise ValueError(f"threshold must be 'percentile70' or a float in (0, 1), got {threshold!r}")
        return _backend(impl).foreground_threshold(probs.detach(), 0.7)
    if not 0 < float(threshold) < 1:
        raise ValueError(f"threshold must be 'percentile70' or a float in (0, 1), got {threshold!r}")
    return torch.full((T - 1,), float(threshold), dtype=probs.dtype, device=probs.device)


def temporal_consistency(
    logits: torch.Tensor,
    images: torch.Tensor,
    flows: torch.Tensor,
    *,
    flows_backward: Optional[torch.Tensor] = None,
    alpha: float = 13.3,
    confidence: str = "mean_abs",
    channel_scale=None,
    warped_target: str = "hard",
    normalise: bool = False,
    return_maps: bool = False,
    impl: str = "fused",
):
    """Confidence-weighted temporal consistency ``L_con`` (docs/method.md §2.5), the mean over the T-1 pairs.

    Per pair: ``P~ = W(P_{t-1})`` (binarised at 0.5 when ``warped_target="hard"``, which then carries no
    gradient), ``M = exp(-alpha * r)`` with ``r = |sum_c s_c dI_c|`` (``confidence="abs_sum"``, reference)
    or ``mean_c |s_c dI_c|`` (``"mean_abs"``, dtc), ``dI = I_t - W(I_{t-1})`` and ``s = channel_scale``
    (``1/std`` reproduces the residual of normalised images; default 1). With ``flows_backward`` the
    forward-backward test ``|F(p) + F_bw(p - F(p))|^2 < 0.01(|F|^2 + |F_bw(p - F(p))|^2) + 0.5`` multiplies
    ``M`` (``F_bw`` sampled bilinearly, border). ``L_t = 1 - mean_{b,h,w} M (1 - |P_t - P~|)``, or
    ``1 - sum(M (1 - |P_t - P~|)) / sum(M)`` with ``normalise``.

    Args:
        logits: ``(B, T, 1, H, W)`` student logits, ``T >= 2``.
        images: ``(B, T, C, H, W)`` in the units the residual is meant in (``[0, 1]``).
        flows, flows_backward: ``(B, T, 2, H, W)``; ``flows_backward[:, t]`` is the flow from frame ``t``
            to ``t-1`` in the same convention, at frame ``t-1``'s pixels (so ``F(p) + F_bw(p - F(p)) ~ 0`` where
            nothing is occluded; ``FlowProvider.backward_flows`` gives it).
        return_maps: also return ``M`` and the warped target ``(B, T-1, 1, H, W)`` (detached).

    Returns:
        The scalar loss, or ``(loss, {"confidence", "target", "per_pair", "mass"})`` with ``return_maps``.
    """
    _check_window("logits", logits, channels=1)
    _check_window("images", images)
    _check_window("flows", flows, channels=2)
    _check_same_frames("images", images, "logits", logits)
    _check_same_frames("flows", flows, "logits", logits)
    if flows_backward is not None:
        _check_window("flows_backward", flows_backward, channels=2)
        _check_same_frames("flows_backward", flows_backward, "logits", logits)
    if confidence not in ("abs_sum", "mean_abs"):
        raise ValueError(f"confidence must be 'abs_sum' or 'mean_abs', got {confidence!r}")
    if warped_target not in ("hard", "soft"):
        raise ValueError(f"warped_target must be 'hard' or 'soft', got {warped_target!r}")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if channel_scale is not None:
        channel_scale = [float(s) for s in channel_scale]
        if len(channel_scale) != images.shape[2]:
            raise ValueError(f"channel_scale must have one entry per image channel ({images.shape[2]}), got "
                             f"{len(channel_scale)}")
    backend = _backend(impl)
    per_pair, mass, conf, target = backend.temporal_consistency(
        logits, images, flows.detach(), None if flows_backward is None else flows_backward.detach(),
        channel_scale, float(alpha), confidence, warped_target == "soft", normalise, return_maps)
    loss = per_pair.mean()
    if not return_maps:
        return loss
    return loss, {"confidence": conf, "target": target, "per_pair": per_pair.detach(), "mass": mass}


def structure_images(images: torch.Tensor, *, fine: Optional[float] = None, coarse: Optional[float] = None
                     ) -> torch.Tensor:
    """Band-pass structure ``0.5 + G_fine * I - G_coarse * I`` (clamped to ``[0, 1]``) of a window batch.

    A confidence residual taken on this is blind to brightness offsets that are smooth over ``coarse``
    pixels (gain and TGC changes, and the smooth part of shadows and dark contact-loss sectors, which on a
    log-compressed display are additive) and to speckle finer than ``fine``, while anatomy that moved where
    the flow does not say (a true occlusion, tissue entering the field of view) still leaves a residual.
    The scales default to 2 and 8 px at a width of 448, in proportion to the width (at least 0.5 px).

    Args:
        images: ``(B, T, C, H, W)`` in ``[0, 1]``.
    """
    _check_window("images", images)
    width = images.shape[-1]
    fine = max(0.5, 2.0 * width / 448.0) if fine is None else float(fine)
    coarse = max(2.0, 8.0 * width / 448.0) if coarse is None else float(coarse)
    if not 0 < fine < coarse:
        raise ValueError(f"structure_images: need 0 < fine < coarse, got fine {fine} and coarse {coarse}")
    from dtc.data.augment import gaussian_blur

    planes = images.flatten(0, 2)
    band = gaussian_blur(planes, fine) - gaussian_blur(planes, coarse)
    return (0.5 + band).clamp(0.0, 1.0).view_as(images)


def masked_average_pool(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``MAP(F, m) = sum_hw F m / max(sum_hw m, 1e-6)``: ``(N, C, h, w)`` and ``(N, 1, h, w)`` -> ``(N, C)``.

    A plain composition for ad-hoc use (the objective uses the fused window ops)."""
    _check_tensor("features", features, 4)
    _check_tensor("mask", mask, 4)
    if mask.shape[0] != features.shape[0] or mask.shape[1] != 1 or mask.shape[-2:] != features.shape[-2:]:
        raise ValueError(f"mask must have shape ({features.shape[0]}, 1, {features.shape[2]}, {features.shape[3]}), "
                         f"got {tuple(mask.shape)}")
    return (features * mask).sum((-2, -1)) / mask.sum((-2, -1)).clamp_min(1e-6)


def prototype_alignment(
    probs: torch.Tensor,
    local: Optional[torch.Tensor],
    global_: Optional[torch.Tensor],
    flows: torch.Tensor,
    *,
    threshold: Union[str, float] = 0.5,
    rescale_flow: bool = True,
    scales: str = "both",
    warped_target: str = "soft",
    check: bool = True,
    impl: str = "fused",
):
    """Prototype alignment ``L_proto`` (docs/method.md §2.5), the mean over the T-1 pairs.

    Per pair: ``fg_x = 1[P_x > thr]``; local (decoder) prototypes ``v_{t-1} = MAP(W(F_loc,t-1), m)`` and
    ``v_t = MAP(F_loc,t, m)`` with ``m = fg_t * 1[P~ > thr]``, ``P~`` the warped previous prediction as the
    consistency term uses it (``W(P_{t-1})``, or ``1[W(P_{t-1}) > 0.5]`` with ``warped_target="hard"``); global (bottleneck) prototypes
    ``u_x = MAP(F_glob,x, bg_x down)`` with ``bg = 1 - fg`` nearest-downsampled per frame;
    ``L_loc = mean_b(1 - cos(v_{t-1}, v_t))``, ``L_glob`` likewise, cosine eps 1e-8, an empty mask gives a
    zero prototype (term 1). ``L_proto,t = (1 - w_fg) L_loc + w_fg L_glob`` with ``w_fg = mean(P_t)``.

    Args:
        probs: ``(B, T, 1, H, W)`` probabilities (no gradient flows into them).
        local: ``(B, T, C_l, h_l, w_l)`` or None (``scales="global"``). If smaller than ``H x W`` the mask
            is nearest-downsampled and the flow resized bilinearly (components scaled by the size ratio
            when ``rescale_flow``; the reference code does not).
        global_: ``(B, T, C_g, h_g, w_g)`` or None (``scales="local"``).
        flows: ``(B, T, 2, H, W)`` at the resolution of ``probs``.
        threshold: ``"percentile70"`` or a float, see :func:`foreground_threshold`.
        scales: ``"both"``, ``"local"`` or ``"global"`` (a single scale counts with weight 1).
        warped_target: ``"soft"`` or ``"hard"``, as in :func:`temporal_consistency` (the objective passes
            its own setting, so both terms see the same target).

    Returns:
        ``(loss, {"loc": L_loc, "glob": L_glob})``, the dict entries detached means over pairs.
    """
    if scales not in ("both", "local", "global"):
        raise ValueError(f"scales must be 'both', 'local' or 'global', got {scales!r}")
    if warped_target not in ("hard", "soft"):
        raise ValueError(f"warped_target must be 'hard' or 'soft', got {warped_target!r}")
    _check_window("probs", probs, channels=1)
    _check_window("flows", flows, channels=2)
    _check_same_frames("flows", flows, "probs", probs)
    use_local, use_global = scales in ("both", "local"), scales in ("both", "global")
    if use_local:
        if local is None:
            raise ValueError(f"local features are required with scales={scales!r}")
        _check_window("local", local)
        _check_same_frames("local", local, "probs", probs, spatial=False)
    if use_global:
        if global_ is None:
            raise ValueError(f"global_ features are required with scales={scales!r}")
        _check_window("global_", global_)
        _check_same_frames("global_", global_, "probs", probs, spatial=False)
    if check:
        check_probabilities("probs", probs)
    probs = probs.detach()
    backend = _backend(impl)
    thr = foreground_threshold(probs, threshold, impl=impl)
    v_prev = v_cur = u_prev = u_cur = None
    if use_local:
        v_prev, v_cur, _ = backend.local_prototypes(probs, local, flows.detach(), thr, rescale_flow,
                                                    hard_target=warped_target == "hard")
    if use_global:
        u_prev, u_cur, _, _ = backend.global_prototypes(probs, global_, thr)
    fg_weight = probs[:, 1:].mean((0, 2, 3, 4))
    from dtc.ops import reference

    proto, loc, glob = reference.prototype_loss(v_prev, v_cur, u_prev, u_cur, fg_weight)
    return proto.mean(), {"loc": loc.detach().mean(), "glob": glob.detach().mean()}
