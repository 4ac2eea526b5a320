"""Fake (meta) kernels of every dtc op, so torch.compile and opcheck can trace them.

Shape checks mirror the C++ ones closely enough for tracing; the real kernels own the messages.
"""
from __future__ import annotations

import torch


@torch.library.register_fake("dtc::warp")
def _warp_fake(x, flow, padding="border"):
    torch._check(x.dim() == 4, lambda: f"warp: x must be a 4-D tensor [N, C, H, W], got shape {tuple(x.shape)}")
    torch._check(flow.dim() == 4 and flow.shape[1] == 2, lambda: f"warp: flow must have shape [N, 2, H, W], got {tuple(flow.shape)}")
    torch._check(flow.dtype == x.dtype, lambda: "warp: x and flow must have the same dtype")
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("dtc::warp_backward")
def _warp_backward_fake(grad_out, x, flow, padding, output_mask):
    grad_x = torch.empty_like(x, memory_format=torch.contiguous_format) if output_mask[0] else None
    grad_flow = torch.empty_like(flow, memory_format=torch.contiguous_format) if output_mask[1] else None
    return grad_x, grad_flow


# ---- DTC loss ops: output shapes only (the real kernels own validation).
def _window_check(name, x):
    torch._check(x.dim() == 5, lambda: f"{name} must be a window batch [B, T, C, H, W], got {tuple(x.shape)}")


@torch.library.register_fake("dtc::temporal_consistency")
def _temporal_consistency_fake(logits, images, flows, flows_backward, channel_scale, alpha, confidence, soft_target,
                               normalise, return_maps):
    _window_check("logits", logits)
    B, T, _, H, W = logits.shape
    pairs = logits.new_empty((T - 1,))
    if return_maps:
        maps = (logits.new_empty((B, T - 1, 1, H, W)), logits.new_empty((B, T - 1, 1, H, W)))
    else:
        maps = (logits.new_empty((0,)), logits.new_empty((0,)))
    return pairs, logits.new_empty((T - 1,)), *maps


@torch.library.register_fake("dtc::temporal_consistency_backward")
def _temporal_consistency_backward_fake(grad_loss, mass, logits, images, flows, flows_backward, channel_scale, alpha,
                                        confidence, soft_target, normalise):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.register_fake("dtc::local_prototypes")
def _local_prototypes_fake(probs, features, flows, threshold, rescale_flow, hard_target=False):
    _window_check("features", features)
    B, T, C = features.shape[:3]
    return features.new_empty((B, T - 1, C)), features.new_empty((B, T - 1, C)), features.new_empty((B, T - 1))


@torch.library.register_fake("dtc::local_prototypes_backward")
def _local_prototypes_backward_fake(grad_prev, grad_cur, mass, probs, features, flows, threshold, rescale_flow,
                                    hard_target=False):
    return torch.empty_like(features, memory_format=torch.contiguous_format)


@torch.library.register_fake("dtc::global_prototypes")
def _global_prototypes_fake(probs, features, threshold):
    _window_check("features", features)
    B, T, C = features.shape[:3]
    return (features.new_empty((B, T - 1, C)), features.new_empty((B, T - 1, C)), features.new_empty((B, T - 1)),
            features.new_empty((B, T - 1)))


@torch.library.register_fake("dtc::global_prototypes_backward")
def _global_prototypes_backward_fake(grad_prev, grad_cur, mass_prev, mass_cur, probs, features, threshold):
    return torch.empty_like(features, memory_format=torch.contiguous_format)


@torch.library.register_fake("dtc::bce_dice")
def _bce_dice_fake(logits, target, smooth):
    torch._check(logits.dim() >= 3, lambda: f"bce_dice: logits must be [..., C, H, W], got {tuple(logits.shape)}")
    n = logits.numel() // (logits.shape[-1] * logits.shape[-2] * logits.shape[-3])
    return logits.new_empty(()), logits.new_empty((n, 2))


@torch.library.register_fake("dtc::bce_dice_backward")
def _bce_dice_backward_fake(grad_loss, stats, logits, target, smooth):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.register_fake("dtc::kd_loss")
def _kd_loss_fake(student, teacher, tau):
    return student.new_empty(())


@torch.library.register_fake("dtc::kd_loss_backward")
def _kd_loss_backward_fake(grad_loss, student, teacher, tau):
    return torch.empty_like(student, memory_format=torch.contiguous_format)


@torch.library.register_fake("dtc::farneback")
def _farneback_fake(prev, next, pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2,
                    gaussian_window=False, median=3):
    torch._check(prev.dim() == 4 and prev.shape[1] == 1,
                 lambda: f"farneback: prev must be a greyscale batch [N, 1, H, W], got {tuple(prev.shape)}")
    torch._check(prev.shape == next.shape, lambda: "farneback: prev and next must have the same shape")
    return prev.new_empty((prev.shape[0], 2, prev.shape[2], prev.shape[3]), dtype=torch.float32)


# Registered only when the core was built with OpenCV C++ (the op then exists); register_fake on a
# missing op would raise at import and break every build without OpenCV.
if hasattr(torch.ops.dtc, "farneback_opencv"):

    @torch.library.register_fake("dtc::farneback_opencv")
    def _farneback_opencv_fake(prev, next, pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5,
                               poly_sigma=1.2, gaussian_window=False, median=3):
        return _farneback_fake(prev, next, pyr_scale, levels, winsize, iterations, poly_n, poly_sigma,
                               gaussian_window, median)


@torch.library.register_fake("dtc::smooth3d_pcg")
def _smooth3d_pcg_fake(target, weight, kappa_z, kappa_xy, tol, max_iter):
    torch._check(target.dim() == 3, lambda: f"smooth3d_pcg: target must be [D, H, W], got {tuple(target.shape)}")
    return torch.empty_like(target, memory_format=torch.contiguous_format), target.new_empty((2,), dtype=torch.float64)


@torch.library.register_fake("dtc::corr_distill_loss")
def _corr_distill_loss_fake(student, teacher, pair, b0=0.1, clamp_max=0.8):
    torch._check(student.dim() == 3, lambda: f"corr_distill_loss: student must be [M, n, C_s], got {tuple(student.shape)}")
    torch._check(teacher.dim() == 3, lambda: f"corr_distill_loss: teacher must be [M, n, C_t], got {tuple(teacher.shape)}")
    return student.new_empty(())


@torch.library.register_fake("dtc::corr_distill_loss_backward")
def _corr_distill_loss_backward_fake(grad_loss, student, teacher, pair, b0, clamp_max):
    return torch.empty_like(student, memory_format=torch.contiguous_format)


@torch.library.register_fake("dtc::tta_accumulate")
def _tta_accumulate_fake(preds, params, size, eps=1e-9):
    torch._check(preds.dim() == 4, lambda: f"tta_accumulate: preds must be [B, N, h, w], got {tuple(preds.shape)}")
    out = preds.new_empty((preds.shape[0], size[0], size[1]))
    return out, torch.empty_like(out), torch.empty_like(out)


@torch.library.register_fake("dtc::edt")
def _edt_fake(mask, spacing):
    torch._check(1 <= len(spacing) <= 3, lambda: f"edt: spacing must give 1, 2 or 3 values, got {len(spacing)}")
    torch._check(mask.dim() >= len(spacing), lambda: f"edt: mask must have at least {len(spacing)} dimensions")
    return mask.new_empty(mask.shape, dtype=torch.float64)


@torch.library.register_fake("dtc::tfd_loss")
def _tfd_loss_fake(student, teacher, mask, alpha_fg=1.0, alpha_bg=0.5, norm="pixel_ln", attn_weight=False):
    torch._check(student.dim() == 4, lambda: f"tfd_loss: student must be [B, C, H, W], got {tuple(student.shape)}")
    torch._check(teacher.shape == student.shape, lambda: "tfd_loss: teacher must have the student's shape")
    acc = torch.float64 if student.dtype == torch.float64 else torch.float32
    return student.new_empty((), dtype=acc)


@torch.library.register_fake("dtc::tfd_loss_backward")
def _tfd_loss_backward_fake(grad_loss, student, teacher, mask, alpha_fg, alpha_bg, norm, attn_weight):
    return torch.empty_like(student, memory_format=torch.contiguous_format)


@torch.library.register_fake("dtc::msda_st")
def _msda_st_fake(value, spatial_shapes, sampling_locations, attention_weights):
    torch._check(value.dim() == 4, lambda: f"msda_st: value must be [B, S, heads, D], got {tuple(value.shape)}")
    torch._check(sampling_locations.dim() == 6, lambda: "msda_st: sampling_locations must be [B, Q, heads, M, K, 2]")
    B, _, heads, D = value.shape
    return value.new_empty((B, sampling_locations.shape[1], heads * D))


@torch.library.register_fake("dtc::msda_st_backward")
def _msda_st_backward_fake(grad_out, value, spatial_shapes, sampling_locations, attention_weights):
    return (torch.empty_like(value, memory_format=torch.contiguous_format),
            torch.empty_like(sampling_locations, memory_format=torch.contiguous_format),
            torch.empty_like(attention_weights, memory_format=torch.contiguous_format))
