"""Float64 oracle of docs/method.md §2, written from the text one term at a time, with explicit loops over
pairs and samples. Deliberately independent of dtc.ops.reference (which batches pairs and uses its own
grid normalisation)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_MEAN = (0.485, 0.456, 0.406)


def warp(a: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """W(A)(p) = A(p - F(p)), bilinear, border padding, align_corners=True (needs H, W > 1)."""
    n, _, h, w = a.shape
    if flow.shape[-2:] != (h, w):
        raise AssertionError("oracle.warp expects a flow at A's size; resize it first")
    ys, xs = torch.meshgrid(torch.arange(h, dtype=a.dtype), torch.arange(w, dtype=a.dtype), indexing="ij")
    sx = xs - flow[:, 0]
    sy = ys - flow[:, 1]
    grid = torch.stack([2 * sx / (w - 1) - 1, 2 * sy / (h - 1) - 1], dim=-1)
    return F.grid_sample(a, grid, mode="bilinear", padding_mode="border", align_corners=True)


def resize_flow(flow, size, rescale):
    h, w = flow.shape[-2:]
    if (h, w) == tuple(size):
        return flow
    out = F.interpolate(flow, size=size, mode="bilinear", align_corners=True)
    if rescale:
        out = torch.stack([out[:, 0] * (size[1] - 1) / (w - 1), out[:, 1] * (size[0] - 1) / (h - 1)], 1)
    return out


def bce_dice(z, y, smooth=1e-5):
    """0.5 BCE + 1 - mean_n Dice_n; one sample per (1, H, W) frame."""
    z = z.reshape(-1, z.shape[-3] * z.shape[-2] * z.shape[-1])
    y = y.reshape(z.shape)
    p = torch.sigmoid(z)
    # log(sigmoid(z)) and log(1 - sigmoid(z)) written with logsigmoid so float64 stays finite.
    bce = -(y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z)).mean()
    dice = torch.stack([(2 * (p[n] * y[n]).sum() + smooth) / (p[n].sum() + y[n].sum() + smooth) for n in range(len(z))])
    return 0.5 * bce + (1 - dice.mean())


def kd(zs, zt, tau=4.0):
    return tau ** 2 * ((torch.sigmoid(zs / tau) - torch.sigmoid(zt / tau)) ** 2).mean()


def threshold(p_t, spec):
    """p_t (B, 1, H, W): mean_b of sort(P_t[b].flatten())[int(0.7 N)], or the fixed value.

    Written with Python's own sorted() and list indexing, as the spec reads, so that it shares nothing
    with the selection (kthvalue) or interpolation (torch.quantile) the implementations could use."""
    if spec == "percentile70":
        picks = []
        for b in range(p_t.shape[0]):
            values = sorted(p_t[b].flatten().tolist())
            picks.append(values[int(0.7 * len(values))])
        return torch.tensor(sum(picks) / len(picks), dtype=p_t.dtype)
    return torch.tensor(float(spec), dtype=p_t.dtype)


def confidence(i_prev, i_cur, flow, preset, alpha, flow_bw=None):
    if preset == "reference":
        mean = torch.tensor(IMAGENET_MEAN, dtype=i_cur.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=i_cur.dtype).view(1, 3, 1, 1)
        n_prev, n_cur = (i_prev - mean) / std, (i_cur - mean) / std
        m = torch.exp(-alpha * (n_cur - warp(n_prev, flow)).sum(1, keepdim=True).abs())
    else:
        m = torch.exp(-alpha * (i_cur - warp(i_prev, flow)).abs().mean(1, keepdim=True))
    if flow_bw is not None:
        # F_bw evaluated at p - F(p), p's point in frame t-1: a backward warp with the flow itself.
        bw = warp(flow_bw, flow)
        lhs = ((flow + bw) ** 2).sum(1, keepdim=True)
        rhs = 0.01 * ((flow ** 2).sum(1, keepdim=True) + (bw ** 2).sum(1, keepdim=True)) + 0.5
        m = m * (lhs < rhs).to(m.dtype)
    return m


def warped_previous(p_prev, flow, warped_target):
    """P~ of docs/method.md §2: W(P_{t-1}), binarised at 0.5 for the hard target. The consistency term and the
    local prototypes' mask both read this one target."""
    target = warp(p_prev, flow)
    if warped_target == "hard":
        target = (target > 0.5).to(p_prev.dtype)
    return target


def con_pair(p_prev, p_cur, i_prev, i_cur, flow, preset, alpha, warped_target="hard", normalise=False, flow_bw=None):
    target = warped_previous(p_prev, flow, warped_target)
    m = confidence(i_prev, i_cur, flow, preset, alpha, flow_bw)
    agree = m * (1 - (p_cur - target).abs())
    if normalise:
        return 1 - agree.sum() / m.sum()
    return 1 - agree.mean()


def con(z, images, flows, preset, alpha, warped_target="hard", normalise=False, flows_bw=None):
    p = torch.sigmoid(z)
    terms = [con_pair(p[:, t - 1], p[:, t], images[:, t - 1], images[:, t], flows[:, t], preset, alpha, warped_target,
                      normalise, None if flows_bw is None else flows_bw[:, t]) for t in range(1, z.shape[1])]
    return torch.stack(terms).mean()


def masked_average_pool(f, m):
    return (f * m).sum((2, 3)) / torch.clamp(m.sum((2, 3)), min=1e-6)


def nearest_down(mask, size):
    return F.interpolate(mask, size=size, mode="nearest")


def proto_pair(p_prev, p_cur, loc_prev, loc_cur, glob_prev, glob_cur, flow, thr_spec, rescale, scales="both",
               warped_target="hard"):
    thr = threshold(p_cur, thr_spec)
    fg_cur = (p_cur > thr).to(p_cur.dtype)
    fg_prev = (p_prev > thr).to(p_cur.dtype)
    terms = {}
    if scales in ("both", "local"):
        m = fg_cur * (warped_previous(p_prev, flow, warped_target) > thr).to(p_cur.dtype)
        size = loc_cur.shape[-2:]
        m = nearest_down(m, size)
        v_prev = masked_average_pool(warp(loc_prev, resize_flow(flow, size, rescale)), m)
        v_cur = masked_average_pool(loc_cur, m)
        terms["loc"] = (1 - F.cosine_similarity(v_prev, v_cur, dim=1, eps=1e-8)).mean()
    if scales in ("both", "global"):
        size = glob_cur.shape[-2:]
        u_prev = masked_average_pool(glob_prev, nearest_down(1 - fg_prev, size))
        u_cur = masked_average_pool(glob_cur, nearest_down(1 - fg_cur, size))
        terms["glob"] = (1 - F.cosine_similarity(u_prev, u_cur, dim=1, eps=1e-8)).mean()
    if scales == "both":
        w_fg = p_cur.mean()
        terms["proto"] = (1 - w_fg) * terms["loc"] + w_fg * terms["glob"]
    else:
        terms["proto"] = terms["loc" if scales == "local" else "glob"]
    return terms


def proto(p, loc, glob, flows, thr_spec, rescale, scales="both", warped_target="hard"):
    per = [proto_pair(p[:, t - 1], p[:, t], None if loc is None else loc[:, t - 1], None if loc is None else loc[:, t],
                      None if glob is None else glob[:, t - 1], None if glob is None else glob[:, t], flows[:, t],
                      thr_spec, rescale, scales, warped_target) for t in range(1, p.shape[1])]
    return {k: torch.stack([d[k] for d in per]).mean() for k in per[0]}


PRESET = {
    "dtc": dict(alpha=13.3, thr=0.5, rescale=True, warped_target="soft"),
    "reference": dict(alpha=1.0, thr="percentile70", rescale=False, warped_target="hard"),
}


def total(z, loc, glob, zt, y, images, flows, preset, weights=(3, 1, 2, 0.1), flows_bw=None, warped_target=None,
          normalise=False):
    cfg = PRESET[preset]
    warped_target = cfg["warped_target"] if warped_target is None else warped_target
    p = torch.sigmoid(z)
    out = {"seg": bce_dice(z, y), "kd": kd(z, zt, 4.0),
           "con": con(z, images, flows, preset, cfg["alpha"], warped_target, normalise, flows_bw)}
    out.update(proto(p.detach(), loc, glob, flows, cfg["thr"], cfg["rescale"], warped_target=warped_target))
    out["total"] = weights[0] * out["seg"] + weights[1] * out["kd"] + weights[2] * out["con"] + weights[3] * out["proto"]
    return out
