"""Plain-PyTorch versions of dtc's ops: the oracle for tests and a readable specification.

They are compositions of ATen ops (``grid_sample``, ``interpolate``), slower and heavier in memory
than the fused kernels but differentiable by PyTorch's own autograd.
"""
from __future__ import annotations

import math

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


# ---- Farnebäck dense optical flow (torch.ops.dtc.farneback) in float64 ------------------------------------

def _reflect101(i: torch.Tensor, n: int) -> torch.Tensor:
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * n - 2
    i = i.remainder(period)
    return torch.where(i >= n, period - i, i)


def _symmetric_pass(x: torch.Tensor, taps: list[float], dim: int, border: str) -> torch.Tensor:
    """Σ_r taps[|r|]·x[i + r] along `dim` (taps[0] is the centre), edges reflect-101 or replicated."""
    n, radius = x.shape[dim], len(taps) - 1
    offsets = torch.arange(-radius, n + radius, device=x.device)
    index = _reflect101(offsets, n) if border == "reflect101" else offsets.clamp(0, n - 1)
    padded = x.index_select(dim, index)
    out = taps[0] * padded.narrow(dim, radius, n)
    for r in range(1, radius + 1):
        out = out + taps[r] * (padded.narrow(dim, radius - r, n) + padded.narrow(dim, radius + r, n))
    return out


def _resize_taps(dst: int, src: int, device):
    """OpenCV INTER_LINEAR sample positions: (d + 0.5)·src/dst − 0.5, clamped into the source."""
    f = (torch.arange(dst, dtype=torch.float64, device=device) + 0.5) * (src / dst) - 0.5
    i0 = f.floor()
    frac = f - i0
    i0 = i0.long()
    frac = torch.where(i0 < 0, 0.0, frac)
    i0 = i0.clamp(min=0)
    frac = torch.where(i0 >= src - 1, 0.0, frac)
    i0 = i0.clamp(max=src - 1)
    return i0, (i0 + 1).clamp(max=src - 1), frac


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    y0, y1, fy = _resize_taps(h, x.shape[-2], x.device)
    x0, x1, fx = _resize_taps(w, x.shape[-1], x.device)
    rows = x[..., y0, :] * (1 - fy)[:, None] + x[..., y1, :] * fy[:, None]
    return rows[..., x0] * (1 - fx) + rows[..., x1] * fx


def _gaussian_taps(size: int, sigma: float) -> list[float]:
    """OpenCV's getGaussianKernel as the centre and one side: fixed tables for small sizes, sigma 0."""
    radius = size // 2
    if sigma <= 0 and size <= 7 and size % 2 == 1:
        return [[1.0], [0.5, 0.25], [0.375, 0.25, 0.0625], [0.28125, 0.21875, 0.109375, 0.03125]][radius]
    if sigma <= 0:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    g = [math.exp(-r * r / (2 * sigma * sigma)) for r in range(radius + 1)]
    total = g[0] + 2 * sum(g[1:])
    return [v / total for v in g]


def _poly_basis(n: int, sigma: float):
    """Applicability g, x·g, x²·g and the inverse-Gram entries of the expansion's basis [1, x, y, x², y², xy]."""
    if sigma < 1.1920929e-07:
        sigma = n * 0.3
    g = torch.tensor([math.exp(-x * x / (2 * sigma * sigma)) for x in range(n + 1)], dtype=torch.float64)
    g = g / (g[0] + 2 * g[1:].sum())
    xs = torch.arange(n + 1, dtype=torch.float64)
    full = torch.cat([g.flip(0), g[1:]])
    coords = torch.arange(-n, n + 1, dtype=torch.float64)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    wgt = full[:, None] * full[None, :]
    basis = torch.stack([torch.ones_like(x), x, y, x * x, y * y, x * y]).reshape(6, -1)
    gram = (basis * wgt.reshape(1, -1)) @ basis.T
    inv = torch.linalg.inv(gram)
    return g, xs * g, xs * xs * g, (inv[1, 1].item(), inv[0, 3].item(), inv[3, 3].item(), inv[5, 5].item())


def _poly_expansion(img: torch.Tensor, basis) -> torch.Tensor:
    """[..., h, w] -> [..., 5, h, w]: b_y, b_x, a_yy, a_xx, a_xy of the local quadratic (edges replicated)."""
    g, xg, xxg, (ig11, ig03, ig33, ig55) = basis
    n = len(g) - 1

    def along(x, dim, weights, odd):
        size = x.shape[dim]
        index = torch.arange(-n, size + n, device=x.device).clamp(0, size - 1)
        padded = x.index_select(dim, index)
        out = weights[0].item() * padded.narrow(dim, n, size) if not odd else torch.zeros_like(x)
        for k in range(1, n + 1):
            lo, hi = padded.narrow(dim, n - k, size), padded.narrow(dim, n + k, size)
            out = out + weights[k].item() * ((hi - lo) if odd else (hi + lo))
        return out

    m0, m1, m2 = along(img, -2, g, False), along(img, -2, xg, True), along(img, -2, xxg, False)
    s1, sxx, sx = along(m0, -1, g, False), along(m0, -1, xxg, False), along(m0, -1, xg, True)
    sy, sxy, syy = along(m1, -1, g, False), along(m1, -1, xg, True), along(m2, -1, g, False)
    return torch.stack([sy * ig11, sx * ig11, s1 * ig03 + syy * ig33, s1 * ig03 + sxx * ig33, sxy * ig55], -3)


def _normal_equations(R0: torch.Tensor, R1: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """[N, 5, h, w] planes g11, g12, g22, h1, h2 of Farnebäck's per-pixel constraint at the current flow."""
    N, _, h, w = R0.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    dx, dy = flow[:, 0], flow[:, 1]
    fx, fy = xs + dx, ys + dy
    flx, fly = fx.floor(), fy.floor()
    inside = (flx >= 0) & (fly >= 0) & (flx < w - 1) & (fly < h - 1)
    x1 = torch.where(inside, flx, 0).long()
    y1 = torch.where(inside, fly, 0).long()
    wx, wy = fx - flx, fy - fly
    flat = R1.reshape(N, 5, h * w)

    def tap(oy, ox):
        idx = ((y1 + oy) * w + (x1 + ox)).reshape(N, 1, h * w).expand(N, 5, h * w)
        return flat.gather(2, idx).reshape(N, 5, h, w)

    s = (tap(0, 0) * ((1 - wx) * (1 - wy))[:, None] + tap(0, 1) * (wx * (1 - wy))[:, None]
         + tap(1, 0) * ((1 - wx) * wy)[:, None] + tap(1, 1) * (wx * wy)[:, None])
    ins = inside[:, None]
    r = torch.where(ins, s[:, :2], 0.0)
    a_yy = torch.where(inside, (R0[:, 2] + s[:, 2]) * 0.5, R0[:, 2])
    a_xx = torch.where(inside, (R0[:, 3] + s[:, 3]) * 0.5, R0[:, 3])
    a_xy = torch.where(inside, (R0[:, 4] + s[:, 4]) * 0.25, R0[:, 4] * 0.5)
    db_y = (R0[:, 0] - r[:, 0]) * 0.5 + a_yy * dy + a_xy * dx
    db_x = (R0[:, 1] - r[:, 1]) * 0.5 + a_xy * dy + a_xx * dx

    def edge_weight(i, n):
        # The five outermost rows and columns saw replicated pixels in the expansion: down-weighted.
        d = torch.minimum(i, n - 1 - i)
        return torch.where(d < 2, 0.14, torch.where(d < 5, 0.4472, 1.0))

    scale = edge_weight(xs, w) * edge_weight(ys, h)
    db_y, db_x, a_yy, a_xx, a_xy = (v * scale for v in (db_y, db_x, a_yy, a_xx, a_xy))
    return torch.stack([a_yy * a_yy + a_xy * a_xy, (a_yy + a_xx) * a_xy, a_xx * a_xx + a_xy * a_xy,
                        a_yy * db_y + a_xy * db_x, a_xy * db_y + a_xx * db_x], 1)


def _median(flow: torch.Tensor, k: int) -> torch.Tensor:
    r = k // 2
    N, C, h, w = flow.shape
    padded = F.pad(flow.reshape(N * C, 1, h, w), (r, r, r, r), mode="replicate")
    return F.unfold(padded, k).median(dim=1).values.reshape(N, C, h, w)


def farneback(prev: torch.Tensor, next: torch.Tensor, pyr_scale: float = 0.5, levels: int = 3, winsize: int = 15,
              iterations: int = 3, poly_n: int = 5, poly_sigma: float = 1.2, gaussian_window: bool = False,
              median: int = 0) -> torch.Tensor:
    """Farnebäck's flow [N, 2, H, W] (dx, dy) from greyscale batches [N, 1, H, W] on the 0–255 scale, in
    float64 with plain tensor ops: the oracle of ``torch.ops.dtc.farneback`` (same pyramid, expansion,
    window and border rules as OpenCV's calcOpticalFlowFarneback, which the kernels follow)."""
    images = torch.cat([prev, next], 1).to(torch.float64)
    N, _, H, W = images.shape
    basis = _poly_basis(poly_n, poly_sigma)
    used, scale = 0, 1.0
    while used < levels:
        scale *= pyr_scale
        if W * scale < 32 or H * scale < 32:
            break
        used += 1
    m = winsize // 2
    if gaussian_window:
        sigma = m * 0.3
        window = [1.0] + [math.exp(-r * r / (2 * sigma * sigma)) for r in range(1, m + 1)]
        total = window[0] + 2 * sum(window[1:])
        window, window_scale = [v / total for v in window], 1.0
    else:
        window, window_scale = [1.0] * (m + 1), 1.0 / (winsize * winsize)
    flow = None
    for k in range(used, -1, -1):
        s = pyr_scale ** k
        sigma = (1 / s - 1) * 0.5
        size = max(int(round(sigma * 5)) | 1, 3)
        taps = _gaussian_taps(size, sigma)
        smoothed = _symmetric_pass(_symmetric_pass(images, taps, -2, "reflect101"), taps, -1, "reflect101")
        h, w = int(round(H * s)), int(round(W * s))
        level = _resize(smoothed, h, w) if (h, w) != (H, W) else smoothed
        R = _poly_expansion(level, basis)  # [N, 2, 5, h, w]
        flow = torch.zeros(N, 2, h, w, dtype=torch.float64) if flow is None else _resize(flow, h, w) / pyr_scale
        for _ in range(iterations):
            M = _normal_equations(R[:, 0], R[:, 1], flow)
            M = _symmetric_pass(_symmetric_pass(M, window, -2, "replicate"), window, -1, "replicate") * window_scale
            g11, g12, g22, h1, h2 = M.unbind(1)
            idet = 1 / (g11 * g22 - g12 * g12 + 1e-3)
            flow = torch.stack([(g11 * h2 - g12 * h1) * idet, (g22 * h1 - g12 * h2) * idet], 1)
    return _median(flow, median) if median in (3, 5) else flow
