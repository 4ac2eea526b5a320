"""Plain-PyTorch versions of dtc's ops: the oracle for tests and a readable specification.

They are compositions of ATen ops (``grid_sample``, ``interpolate``), slower and heavier in memory
than the fused kernels but differentiable by PyTorch's own autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_flow(flow: torch.Tensor, size, *, align_corners: bool = True, rescale: bool = True) -> torch.Tensor:
    h, w = flow.shape[-2:]
    H, W = int(size[0]), int(size[1])
    if (h, w) == (H, W):
        return flow
    out = F.interpolate(flow, size=(H, W), mode="bilinear", align_corners=align_corners)
    if not rescale:
        return out
    if align_corners:
        sx = (W - 1) / (w - 1) if w > 1 else 1.0
        sy = (H - 1) / (h - 1) if h > 1 else 1.0
    else:
        sx, sy = W / w, H / h
    return torch.cat([out[:, :1] * sx, out[:, 1:] * sy], dim=1)


def warp(x: torch.Tensor, flow: torch.Tensor, *, padding: str = "border", align_corners: bool = True,
         rescale: bool = True) -> torch.Tensor:
    """``x(p - F(p))`` through ``grid_sample`` with an identity grid (see :func:`dtc.ops.warp`)."""
    N, _, H, W = x.shape
    flow = resize_flow(flow, (H, W), align_corners=align_corners, rescale=rescale)
    ys = torch.arange(H, dtype=x.dtype, device=x.device).view(1, H, 1)
    xs = torch.arange(W, dtype=x.dtype, device=x.device).view(1, 1, W)
    sample_x = xs - flow[:, 0]
    sample_y = ys - flow[:, 1]
    # Normalise with grid_sample's align_corners=False mapping, pixel i <-> (2i + 1)/size - 1, which
    # unnormalises back to the same pixel coordinate and, unlike align_corners=True, also exists
    # for images one pixel wide. Border clipping is in pixel coordinates either way.
    grid = torch.stack([(2 * sample_x + 1) / W - 1, (2 * sample_y + 1) / H - 1], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


# ---------------------------------------------------------------------------------------------
# The DTC training signals (docs/method.md §2) as plain-PyTorch compositions: the "unfused" baseline of
# `python -m dtc.bench losses` and the fallback behind `impl="reference"` in dtc.losses. They take the
# same arguments and return the same tuples as the fused torch.ops.dtc.* ops.

# Masked average pooling divides by max(sum(m), MAP_EPS) (docs/method.md §2.5), so an empty mask pools to 0.
MAP_EPS = 1e-6
# Guard of the ``con_normalise`` denominator sum(M): only reached when the occlusion test rejects every
# pixel of a pair, where the numerator is 0 as well and the pair's loss becomes 1.
MASS_EPS = 1e-6


def _pairs(x: torch.Tensor):
    """Split a window tensor ``(B, T, C, H, W)`` into the previous / current frames of its T-1 pairs,
    each ``(B*(T-1), C, H, W)``."""
    B, T = x.shape[:2]
    prev = x[:, :-1].reshape(B * (T - 1), *x.shape[2:])
    cur = x[:, 1:].reshape(B * (T - 1), *x.shape[2:])
    return prev, cur


def bce_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5):
    """``0.5 * BCE(z, y) + 1 - mean_n softDice_n(sigmoid(z), y)``; a sample is one ``(C, H, W)`` frame.

    Returns ``(loss, stats)`` with ``stats[n] = (sum p*y, sum p + sum y)`` per sample, like the op."""
    z = logits.reshape(-1, logits.shape[-3:].numel())
    y = target.reshape(z.shape)
    bce = F.binary_cross_entropy_with_logits(z, y, reduction="mean")
    p = torch.sigmoid(z)
    inter = (p * y).sum(1)
    total = p.sum(1) + y.sum(1)
    dice = (2 * inter + smooth) / (total + smooth)
    return 0.5 * bce + 1 - dice.mean(), torch.stack([inter, total], 1).detach()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    """``tau^2 * mean((sigmoid(z/tau) - sigmoid(z_T/tau))^2)``."""
    return tau * tau * (torch.sigmoid(student_logits / tau) - torch.sigmoid(teacher_logits / tau)).square().mean()


def foreground_threshold(probs: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    """Per pair ``t = 1..T-1``: ``mean_b sort(P_t[b].flatten())[int(q N)]`` (no interpolation), shape ``(T-1,)``."""
    cur = probs[:, 1:].flatten(2)
    n = cur.shape[2]
    index = min(int(q * n), n - 1)
    return cur.sort(dim=2).values[:, :, index].mean(0)


def temporal_consistency(logits, images, flows, flows_backward=None, channel_scale=None, alpha: float = 13.3,
                         confidence: str = "mean_abs", soft_target: bool = False, normalise: bool = False,
                         return_maps: bool = False):
    """Per pair: ``1 - mean(M * (1 - |P_t - target|))`` (see :func:`dtc.losses.temporal_consistency`).

    Returns ``(loss (T-1,), mass (T-1,), confidence (B,T-1,1,H,W), target (B,T-1,1,H,W))``; the maps are
    empty tensors unless ``return_maps``."""
    B, T, _, H, W = logits.shape
    probs = torch.sigmoid(logits)
    p_prev, p_cur = _pairs(probs)
    i_prev, i_cur = _pairs(images)
    _, flow = _pairs(flows)
    warped = warp(p_prev, flow)
    target = warped if soft_target else (warped > 0.5).to(warped.dtype)
    diff = i_cur - warp(i_prev, flow)
    if channel_scale is not None:
        diff = diff * torch.as_tensor(channel_scale, dtype=diff.dtype, device=diff.device).view(1, -1, 1, 1)
    residual = diff.sum(1, keepdim=True).abs() if confidence == "abs_sum" else diff.abs().mean(1, keepdim=True)
    conf = torch.exp(-alpha * residual)
    if flows_backward is not None:
        _, back = _pairs(flows_backward)
        back_at = warp(back, flow)  # F_bw(p - F(p)): p's point in frame t-1, where F_bw lives
        err = (flow + back_at).square().sum(1, keepdim=True)
        bound = 0.01 * (flow.square().sum(1, keepdim=True) + back_at.square().sum(1, keepdim=True)) + 0.5
        conf = conf * (err < bound).to(conf.dtype)
    agree = conf * (1 - (p_cur - target).abs())
    per_pair = agree.view(B, T - 1, -1).sum((0, 2))
    mass = conf.detach().view(B, T - 1, -1).sum((0, 2))
    denom = mass.clamp_min(MASS_EPS) if normalise else torch.full_like(mass, B * H * W)
    loss = 1 - per_pair / denom
    if return_maps:
        return loss, mass, conf.detach().view(B, T - 1, 1, H, W), target.detach().view(B, T - 1, 1, H, W)
    empty = logits.new_empty(0)
    return loss, mass, empty, empty


def _map(features: torch.Tensor, mask: torch.Tensor):
    mass = mask.sum((-2, -1))
    pooled = (features * mask).sum((-2, -1)) / mass.clamp_min(MAP_EPS)
    return pooled, mass.squeeze(-1)


def local_prototypes(probs, features, flows, threshold, rescale_flow: bool = True, hard_target: bool = False):
    """``v_{t-1} = MAP(W(F_{t-1}), m)``, ``v_t = MAP(F_t, m)`` with ``m = 1[P_t > thr] * 1[P~ > thr]``,
    ``P~ = W(P_{t-1})``, binarised at 0.5 first when ``hard_target``.

    Returns ``(v_prev (B,T-1,C), v_cur (B,T-1,C), mass (B,T-1))``."""
    B, T, C, h, w = features.shape
    p_prev, p_cur = _pairs(probs)
    _, flow = _pairs(flows)
    thr = threshold.repeat(B).view(-1, 1, 1, 1)
    warped = warp(p_prev, flow)
    if hard_target:
        warped = (warped > 0.5).to(warped.dtype)
    mask = ((p_cur > thr) & (warped > thr)).to(features.dtype)
    if mask.shape[-2:] != (h, w):
        mask = F.interpolate(mask, size=(h, w), mode="nearest")
    f_prev, f_cur = _pairs(features)
    v_prev, mass = _map(warp(f_prev, flow, rescale=rescale_flow), mask)
    v_cur, _ = _map(f_cur, mask)
    return v_prev.view(B, T - 1, C), v_cur.view(B, T - 1, C), mass.view(B, T - 1)


def global_prototypes(probs, features, threshold):
    """``u_x = MAP(G_x, bg_x down)`` for both frames of each pair, ``bg = 1 - 1[P > thr_t]`` nearest-downsampled.

    Returns ``(u_prev (B,T-1,C), u_cur (B,T-1,C), mass_prev (B,T-1), mass_cur (B,T-1))``."""
    B, T, C, h, w = features.shape
    p_prev, p_cur = _pairs(probs)
    thr = threshold.repeat(B).view(-1, 1, 1, 1)
    f_prev, f_cur = _pairs(features)
    out = []
    for p, f in ((p_prev, f_prev), (p_cur, f_cur)):
        bg = (p <= thr).to(features.dtype)
        if bg.shape[-2:] != (h, w):
            bg = F.interpolate(bg, size=(h, w), mode="nearest")
        out.append(_map(f, bg))
    (u_prev, m_prev), (u_cur, m_cur) = out
    return u_prev.view(B, T - 1, C), u_cur.view(B, T - 1, C), m_prev.view(B, T - 1), m_cur.view(B, T - 1)


def prototype_loss(v_prev, v_cur, u_prev, u_cur, fg_weight):
    """``(1 - w_fg) * mean_b(1 - cos(v)) + w_fg * mean_b(1 - cos(u))`` per pair; ``None`` skips a scale
    (the other then counts with weight 1). Returns ``(proto (T-1,), loc (T-1,), glob (T-1,))``."""
    loc = (1 - F.cosine_similarity(v_prev, v_cur, dim=-1, eps=1e-8)).mean(0) if v_prev is not None else None
    glob = (1 - F.cosine_similarity(u_prev, u_cur, dim=-1, eps=1e-8)).mean(0) if u_prev is not None else None
    if loc is not None and glob is not None:
        return (1 - fg_weight) * loc + fg_weight * glob, loc, glob
    only = loc if loc is not None else glob
    zero = torch.zeros_like(only)
    return only, (loc if loc is not None else zero), (glob if glob is not None else zero)


def corr_distill_loss(student_points: torch.Tensor, teacher_points: torch.Tensor, pair: torch.Tensor,
                      b0: float = 0.1, clamp_max: float = 0.8) -> torch.Tensor:
    """Plain-PyTorch twin of ``torch.ops.dtc.corr_distill_loss`` (materialises the [M, n, n] correlations)."""
    teacher = teacher_points.detach()
    f = torch.einsum("mac,mbc->mab", teacher, teacher[pair])
    f = f - f.mean(dim=2, keepdim=True) + f.mean()
    c = torch.einsum("mac,mbc->mab", student_points, student_points[pair])
    return -(c.clamp(0, clamp_max) * (f - b0)).mean()


def edt(mask: torch.Tensor, spacing=(1.0, 1.0)) -> torch.Tensor:
    """Brute force: for every element, the minimum over all object elements of the spacing-weighted
    distance (quadratic in the number of elements; for tests)."""
    k = len(spacing)
    spatial = mask.shape[mask.dim() - k:]
    flat = mask.reshape(-1, *spatial)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in spatial], indexing="ij"), -1)
    coords = grid.reshape(-1, k) * torch.tensor(spacing, dtype=torch.float64)
    out = torch.full((flat.shape[0], coords.shape[0]), float("inf"), dtype=torch.float64)
    for b in range(flat.shape[0]):
        sites = coords[flat[b].reshape(-1).cpu() != 0]
        if len(sites):
            out[b] = torch.cdist(coords, sites, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    return out.reshape(mask.shape)


def _standardise(x: torch.Tensor, dims) -> torch.Tensor:
    var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5)


def tfd_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, alpha_fg: float = 1.0,
             alpha_bg: float = 0.5, norm: str = "pixel_ln", attn_weight: bool = False) -> torch.Tensor:
    """Plain-PyTorch target-guided feature distillation (the oracle of torch.ops.dtc.tfd_loss)."""
    acc = torch.float64 if student.dtype == torch.float64 else torch.float32
    s, t = student.to(acc), teacher.detach().to(acc)
    if norm == "pixel_ln":
        s, t = _standardise(s, 1), _standardise(t, 1)
    elif norm == "pearson":
        s, t = _standardise(s, (2, 3)), _standardise(t, (2, 3))
    elif norm != "none":
        raise ValueError(f"tfd_loss: norm must be 'pixel_ln', 'pearson' or 'none', got {norm!r}")
    e = ((s - t) ** 2).mean(1)
    B, H, W = e.shape
    if attn_weight:
        act = teacher.detach().to(acc).abs().mean(1).reshape(B, -1)
        e = e * (H * W * torch.softmax(act / 0.5, 1)).reshape(B, H, W)
    m = mask.to(acc).reshape(B, H, W)
    fg, bg = m.sum((1, 2)), (1 - m).sum((1, 2))
    l_fg = torch.where(fg >= 1e-6, (m * e).sum((1, 2)) / fg.clamp_min(1e-6), torch.zeros_like(fg))
    l_bg = ((1 - m) * e).sum((1, 2)) / bg.clamp_min(1e-6)
    return (alpha_fg * l_fg + alpha_bg * l_bg).mean()


def msda_st(value: torch.Tensor, spatial_shapes, sampling_locations: torch.Tensor,
            attention_weights: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` composition of torch.ops.dtc.msda_st: one bilinear, zero-padded,
    ``align_corners=False`` sampling per value map (the CPU oracle of the fused kernels)."""
    import torch.nn.functional as F

    flat = [int(v) for item in spatial_shapes for v in (item if isinstance(item, (tuple, list)) else (item,))]
    shapes = list(zip(flat[0::2], flat[1::2]))
    B, S, heads, D = value.shape
    _, Q, _, M, K, _ = sampling_locations.shape
    maps = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    samples = []
    for m, (h, w) in enumerate(shapes):
        v = maps[m].flatten(2).transpose(1, 2).reshape(B * heads, D, h, w)
        grid = grids[:, :, :, m].transpose(1, 2).flatten(0, 1)  # (B heads, Q, K, 2)
        samples.append(F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(samples, dim=-2).flatten(-2)  # (B heads, D, Q, M K)
    weights = attention_weights.transpose(1, 2).reshape(B * heads, 1, Q, M * K)
    out = (stacked * weights).sum(-1).view(B, heads * D, Q)
    return out.transpose(1, 2).contiguous()
