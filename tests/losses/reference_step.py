"""The loss of one stage-2 training step of preset "reference", re-implemented from scratch in float64
NumPy from the text of docs/method.md §2, pixel by pixel where the text is per pixel.

It shares no code with dtc (not dtc.ops.reference, not the torch oracle in oracle.py, not
torch.nn.functional): its own bilinear sampler, resize, nearest resampling, sort and cosine. The point is
a second, independent reading of the specification, so that a misreading in dtc (or in the other
oracle) shows up as a disagreement.
"""
from __future__ import annotations

import math

import numpy as np

IMAGE_STD = (0.229, 0.224, 0.225)  # the reference's input normalisation (the mean cancels in ΔI)
WEIGHTS = (3.0, 1.0, 2.0, 0.1)      # λ_seg, λ_KD, λ_con, λ_proto
TAU = 4.0
DICE_SMOOTH = 1e-5
ALPHA = 1.0
MAP_EPS = 1e-6
COS_EPS = 1e-8


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def sample(plane, x, y):
    """Bilinear value of ``plane`` (H, W) at pixel coordinates (x, y), border padding: the coordinate is
    clamped into the image, then the four neighbours are blended."""
    H, W = plane.shape
    x = min(max(x, 0.0), W - 1.0)
    y = min(max(y, 0.0), H - 1.0)
    x0, y0 = int(math.floor(x)), int(math.floor(y))
    x1, y1 = min(x0 + 1, W - 1), min(y0 + 1, H - 1)
    ax, ay = x - x0, y - y0
    top = (1 - ax) * plane[y0, x0] + ax * plane[y0, x1]
    bottom = (1 - ax) * plane[y1, x0] + ax * plane[y1, x1]
    return (1 - ay) * top + ay * bottom


def warp(planes, flow):
    """W(A)(p) = A(p - F(p)) for every plane of ``planes`` (C, H, W); ``flow`` (2, H, W) in pixels."""
    C, H, W = planes.shape
    out = np.empty_like(planes)
    for i in range(H):
        for j in range(W):
            x, y = j - flow[0, i, j], i - flow[1, i, j]
            for c in range(C):
                out[c, i, j] = sample(planes[c], x, y)
    return out


def resize_flow(flow, h, w):
    """Bilinear resize of a flow (2, H, W) to (h, w), pixel centres at align_corners positions; the
    reference does not scale the components."""
    _, H, W = flow.shape
    if (h, w) == (H, W):
        return flow
    out = np.empty((2, h, w))
    for i in range(h):
        for j in range(w):
            y = i * (H - 1) / (h - 1) if h > 1 else 0.0
            x = j * (W - 1) / (w - 1) if w > 1 else 0.0
            for c in range(2):
                out[c, i, j] = sample(flow[c], x, y)
    return out


def nearest(mask, h, w):
    """Nearest-neighbour resampling of ``mask`` (H, W) to (h, w): source index floor(dst * in / out)."""
    H, W = mask.shape
    rows = [min(int(math.floor(i * H / h)), H - 1) for i in range(h)]
    cols = [min(int(math.floor(j * W / w)), W - 1) for j in range(w)]
    return mask[np.ix_(rows, cols)]


def masked_average(features, mask):
    """MAP(F, m) = Σ_hw F·m / max(Σ_hw m, 1e-6) for features (C, h, w), mask (h, w)."""
    return (features * mask).sum(axis=(1, 2)) / max(mask.sum(), MAP_EPS)


def one_minus_cos(a, b):
    return 1.0 - float(a @ b) / max(math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)), COS_EPS)


def order_statistic_threshold(probs_t):
    """thr = mean_b sort(P_t[b].flatten())[floor(0.7 N)], N = H·W."""
    B = probs_t.shape[0]
    values = []
    for b in range(B):
        flat = np.sort(probs_t[b].ravel())
        values.append(flat[int(math.floor(0.7 * flat.size))])
    return sum(values) / B


def bce_dice(z, y):
    """0.5·BCE(z, y) + (1 − mean_n softDice_n), a sample n being one frame."""
    p = sigmoid(z)
    # log σ(z) = -log(1 + e^-z), log(1 - σ(z)) = -log(1 + e^z), both written stably.
    log_p = -np.logaddexp(0.0, -z)
    log_q = -np.logaddexp(0.0, z)
    bce = -(y * log_p + (1 - y) * log_q).mean()
    n = z.shape[0]
    dice = [(2 * (p[k] * y[k]).sum() + DICE_SMOOTH) / (p[k].sum() + y[k].sum() + DICE_SMOOTH) for k in range(n)]
    return 0.5 * bce + 1 - sum(dice) / n


def step_loss(z, loc, glob, zt, y, images, flows):
    """The reference preset's training-step loss and its terms.

    Args (NumPy float64): student logits ``z`` (B, T, 1, H, W); decoder features ``loc`` (B, T, C_l, h_l,
    w_l); bottleneck features ``glob`` (B, T, C_g, h_g, w_g); teacher logits ``zt``; pseudo-labels ``y``
    (B, T, 1, H, W); images in [0, 1] ``images`` (B, T, 3, H, W); flows ``flows`` (B, T, 2, H, W), frame
    t's entry the flow from t-1 to t.
    """
    B, T = z.shape[:2]
    H, W = z.shape[-2:]
    frames = B * T
    seg = bce_dice(z.reshape(frames, -1), y.reshape(frames, -1))
    kd = TAU ** 2 * ((sigmoid(z / TAU) - sigmoid(zt / TAU)) ** 2).mean()
    P = sigmoid(z)[:, :, 0]                       # (B, T, H, W)
    scale = np.asarray([1.0 / s for s in IMAGE_STD]).reshape(3, 1, 1)
    con_terms, proto_terms, loc_terms, glob_terms = [], [], [], []
    for t in range(1, T):
        # Consistency: hard warped target, confidence on the signed channel sum of the normalised residual.
        agree = 0.0
        warped_targets = []
        for b in range(B):
            flow = flows[b, t]
            warped_prob = warp(P[b, t - 1][None], flow)[0]
            target = (warped_prob > 0.5).astype(np.float64)
            warped_targets.append(target)
            residual = (images[b, t] - warp(images[b, t - 1], flow)) * scale
            confidence = np.exp(-ALPHA * np.abs(residual.sum(axis=0)))
            agree += (confidence * (1 - np.abs(P[b, t] - target))).sum()
        con_terms.append(1 - agree / (B * H * W))
        # Prototypes under the pair's threshold, computed from the current frames.
        thr = order_statistic_threshold(P[:, t])
        l_loc, l_glob = 0.0, 0.0
        for b in range(B):
            fg_cur = (P[b, t] > thr).astype(np.float64)
            fg_prev = (P[b, t - 1] > thr).astype(np.float64)
            m = fg_cur * (warped_targets[b] > thr)
            hl, wl = loc.shape[-2:]
            m_small = nearest(m, hl, wl)
            v_prev = masked_average(warp(loc[b, t - 1], resize_flow(flows[b, t], hl, wl)), m_small)
            v_cur = masked_average(loc[b, t], m_small)
            l_loc += one_minus_cos(v_prev, v_cur) / B
            hg, wg = glob.shape[-2:]
            u_prev = masked_average(glob[b, t - 1], nearest(1 - fg_prev, hg, wg))
            u_cur = masked_average(glob[b, t], nearest(1 - fg_cur, hg, wg))
            l_glob += one_minus_cos(u_prev, u_cur) / B
        w_fg = P[:, t].mean()
        proto_terms.append((1 - w_fg) * l_loc + w_fg * l_glob)
        loc_terms.append(l_loc)
        glob_terms.append(l_glob)
    pairs = T - 1
    terms = {"seg": seg, "kd": kd, "con": sum(con_terms) / pairs, "proto": sum(proto_terms) / pairs,
             "loc": sum(loc_terms) / pairs, "glob": sum(glob_terms) / pairs}
    terms["total"] = (WEIGHTS[0] * seg + WEIGHTS[1] * kd + WEIGHTS[2] * terms["con"] + WEIGHTS[3] * terms["proto"])
    return terms
