"""Cross-view query distillation (docs/v2i.md, "Cross-view query distillation").

A small probe decoder learns in stage S1 to answer *queries* about the teacher's memory (one level of
its enhanced features): "where is the region this prototype describes?" and "is it foreground?". In
stage S2 the decoder is frozen, the same queries are decoded once on the teacher's memory and once on
the student's, and the student is pulled towards the teacher's answers. The queries come from one
*view* (the teacher's key frame, the student's own key frame, or a teacher reference frame) and are
decoded on both memories, so the student learns to answer the teacher's questions and its own the way
the teacher would.

Queries per sample (at most ``J + 2 + N_r + N_f`` = 21, padded with a validity mask):
component prototypes MAP(phi, down(Omega_j)) for the J = 3 largest components, a soft prototype
MAP(phi, M), a background prototype MAP(phi, 1 - dilate(down(Y))), N_r random points and N_f points drawn
from the EDT soft mask; a point query is phi sampled at the point plus its position encoding. Every query
is a stop-gradient; the decoder adds a learned embedding of its type.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ProbeDecoder", "QuerySet", "build_queries", "binary_kl", "probe_loss", "cqd_loss", "choose_views",
           "TYPES"]

#: Query types (the index of the type embedding).
TYPES = {"component": 0, "soft": 1, "background": 2, "random": 3, "foreground": 4}
_EPS = 1e-6


def _sine_at(xy: torch.Tensor, d: int) -> torch.Tensor:
    """Sine encoding of normalised positions ``xy (..., 2)`` in [0, 1] (the convention of
    :func:`dtc.distill.msi.sine_position`, whose cell centres are ``(j + 0.5) / w``)."""
    quarter = d // 4
    freq = 10000.0 ** (-torch.arange(quarter, device=xy.device, dtype=torch.float64) / quarter)
    x = xy[..., 0:1].double() * 2 * math.pi
    y = xy[..., 1:2].double() * 2 * math.pi
    return torch.cat([torch.sin(y * freq), torch.cos(y * freq), torch.sin(x * freq), torch.cos(x * freq)], -1).to(xy.dtype)


class ProbeDecoder(nn.Module):
    """Queries → memory: ``layers`` × (cross-attention, self-attention, FFN), pre-LN; heads for the mask
    logits ``<MLP(Q'), Psi(memory)> / sqrt(d)`` and the objectness ``Linear(Q')``; and the projection P of
    the memory level to ``d`` channels (:meth:`memory` adds the position encoding)."""

    def __init__(self, channels: int, d: int = 256, heads: int = 8, layers: int = 2, ffn: int = 1024):
        super().__init__()
        if d % 4 or d % heads:
            raise ValueError(f"ProbeDecoder: d={d} must be a multiple of 4 and of heads={heads}")
        self.d = d
        self.project = nn.Conv2d(channels, d, 1)
        self.type_embed = nn.Embedding(len(TYPES), d)
        self.layers = nn.ModuleList()
        for _ in range(layers):
            self.layers.append(nn.ModuleDict({
                "norm_cross": nn.LayerNorm(d), "cross": nn.MultiheadAttention(d, heads, batch_first=True),
                "norm_self": nn.LayerNorm(d), "self": nn.MultiheadAttention(d, heads, batch_first=True),
                "norm_ffn": nn.LayerNorm(d),
                "ffn": nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d)),
            }))
        self.norm_out = nn.LayerNorm(d)
        self.mask_mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.psi = nn.Conv2d(d, d, 1)
        self.objectness = nn.Linear(d, 1)

    def memory(self, features: torch.Tensor) -> torch.Tensor:
        """``phi = P(features) + PE``, ``(B, d, h, w)``."""
        from dtc.distill.msi import sine_position

        phi = self.project(features)
        h, w = phi.shape[-2:]
        pe = sine_position(h, w, self.d, phi.device, phi.dtype).t().reshape(1, self.d, h, w)
        return phi + pe

    def forward(self, queries: "QuerySet", memory: torch.Tensor):
        """``(refined (B, K, d), mask logits (B, K, h, w), objectness logits (B, K))``."""
        x = queries.embeddings + self.type_embed(queries.types)
        mem = memory.flatten(2).transpose(1, 2)
        padding = ~queries.valid
        for layer in self.layers:
            y = layer["norm_cross"](x)
            x = x + layer["cross"](y, mem, mem, need_weights=False)[0]
            y = layer["norm_self"](x)
            x = x + layer["self"](y, y, y, key_padding_mask=padding, need_weights=False)[0]
            x = x + layer["ffn"](layer["norm_ffn"](x))
        x = self.norm_out(x)
        h, w = memory.shape[-2:]
        masks = torch.einsum("bkd,bdp->bkp", self.mask_mlp(x), self.psi(memory).flatten(2)) / math.sqrt(self.d)
        return x, masks.view(*masks.shape[:2], h, w), self.objectness(x).squeeze(-1)


@dataclass
class QuerySet:
    embeddings: torch.Tensor   # (B, K, d), stop-gradient
    types: torch.Tensor        # (B, K) int64
    valid: torch.Tensor        # (B, K) bool
    targets: torch.Tensor      # (B, K, H, W) float, the S1 probe targets (empty when no labels)
    foreground: torch.Tensor   # (B, K) float, 1 when the target is foreground


def _sample_at(phi: torch.Tensor, points: torch.Tensor, size) -> torch.Tensor:
    """phi (d, h, w) at image points (N, 2) (x, y) in input pixels (align_corners=False)."""
    H, W = size
    grid = torch.stack([(points[:, 0] + 0.5) / W * 2 - 1, (points[:, 1] + 0.5) / H * 2 - 1], -1)
    return F.grid_sample(phi[None], grid[None, None].to(phi.dtype), align_corners=False)[0, :, 0].t()


def build_queries(phi: torch.Tensor, masks: Optional[torch.Tensor], *, stride: int, generator: torch.Generator,
                  mode: str = "random", n_random: int = 8, n_fg: int = 8, max_components: int = 3) -> QuerySet:
    """The query set of one view (module docstring).

    Args:
        phi: the view's memory ``(B, d, h, w)`` (``stride`` = the input size over ``h``).
        masks: its masks ``(B, 1, H, W)``, or None for an unlabelled view (random points only).
        generator: the source of every random choice (points), so a seed reproduces the set.
        mode: ``"random"``, or ``"fixed"``: no random points and the components' centroids as
            foreground points (deterministic).
    """
    from dtc.distill.masks import components, edt_gaussian
    from dtc.ops import edt

    if mode not in ("random", "fixed"):
        raise ValueError(f"build_queries: mode must be 'random' or 'fixed', got {mode!r}")
    phi = phi.detach()
    B, d, h, w = phi.shape
    H, W = h * stride, w * stride
    n_r = n_random if mode == "random" else 0
    K = max_components + 2 + n_r + n_fg
    emb = phi.new_zeros(B, K, d)
    types = torch.full((B, K), TYPES["random"], dtype=torch.int64)
    valid = torch.zeros(B, K, dtype=torch.bool)
    targets = torch.zeros(B, K, H, W) if masks is not None else torch.zeros(B, K, 0, 0)
    fg = torch.zeros(B, K)
    for b in range(B):
        slot = 0
        y = masks[b, 0].detach().cpu() > 0.5 if masks is not None else None
        parts = components(y, None) if y is not None else []
        labels = torch.zeros(H, W, dtype=torch.int64)
        for j, part in enumerate(parts):
            labels[part] = j + 1
        distances = [edt(part, (1.0, 1.0)) for part in parts] if mode == "random" else []

        def put(vec, kind, target=None, is_fg=0.0):
            nonlocal slot
            emb[b, slot] = vec
            types[b, slot] = TYPES[kind]
            valid[b, slot] = True
            if target is not None and targets.numel():
                targets[b, slot] = target
            fg[b, slot] = is_fg
            slot += 1

        def map_(m_full):
            down = F.avg_pool2d(m_full[None, None].to(phi.dtype).to(phi.device), stride)[0, 0] if stride > 1 \
                else m_full.to(phi.dtype).to(phi.device)
            return (phi[b] * down).sum((1, 2)) / down.sum().clamp_min(_EPS)

        def point_target(p, kind):
            xi = int(min(max(round(float(p[0])), 0), W - 1))
            yi = int(min(max(round(float(p[1])), 0), H - 1))
            j = int(labels[yi, xi])
            if j == 0 and kind == "foreground":
                # a point from the soft mask's halo stands for the component it was drawn around
                j = 1 + int(torch.stack([dist[yi, xi] for dist in distances]).argmin())
            return ((labels == j).float(), 1.0) if j > 0 else ((~y).float(), 0.0)

        def put_points(points, kind):
            feats = _sample_at(phi[b], points.to(phi.device), (H, W))
            pe = _sine_at(torch.stack([(points[:, 0] + 0.5) / W, (points[:, 1] + 0.5) / H], -1).to(phi.device), d)
            for p, f, e in zip(points, feats, pe.to(phi.dtype)):
                target, is_fg = point_target(p, kind) if y is not None else (None, 0.0)
                put(f + e, kind, target, is_fg)

        if y is not None:
            for part in parts[:max_components]:
                put(map_(part.float()), "component", part.float(), 1.0)
            slot = max_components
            soft = edt_gaussian(y, 1, max_components=max_components)
            if bool(y.any()):
                put(map_(soft), "soft", y.float(), 1.0)
            else:
                slot += 1
            down_y = F.avg_pool2d(y.float()[None, None], stride)[0, 0] if stride > 1 else y.float()
            background = 1 - F.max_pool2d(down_y[None, None], 3, 1, 1)[0, 0]
            vec = (phi[b] * background.to(phi)).sum((1, 2)) / background.sum().clamp_min(_EPS)
            put(vec, "background", (~y).float(), 0.0)
        else:
            slot = max_components + 2
        if n_r:
            u = torch.rand(n_r, 2, generator=generator, dtype=torch.float64) * torch.tensor([W, H]) - 0.5
            put_points(u, "random")
        if y is not None and bool(y.any()):
            if mode == "fixed":
                centres = torch.stack([torch.nonzero(p).double().mean(0).flip(0) for p in parts[:n_fg]])
                put_points(centres, "foreground")
            else:
                flat = soft.flatten().double()
                idx = torch.multinomial(flat / flat.sum(), n_fg, replacement=True, generator=generator)
                put_points(torch.stack([idx % W, idx // W], -1).double(), "foreground")
        elif mode == "random" or y is None:
            # no foreground: the foreground slots become extra random points
            u = torch.rand(n_fg, 2, generator=generator, dtype=torch.float64) * torch.tensor([W, H]) - 0.5
            put_points(u, "random")
    device = phi.device
    return QuerySet(emb, types.to(device), valid.to(device), targets.to(device), fg.to(device))


def binary_kl(q_logits: torch.Tensor, p_logits: torch.Tensor) -> torch.Tensor:
    """KL(q || p) of Bernoulli variables given as logits, probabilities clamped to [1e-6, 1 - 1e-6];
    element-wise, zero exactly where p = q (unlike BCE)."""
    q = torch.sigmoid(q_logits.float()).clamp(_EPS, 1 - _EPS)
    p = torch.sigmoid(p_logits.float()).clamp(_EPS, 1 - _EPS)
    return q * torch.log(q / p) + (1 - q) * torch.log((1 - q) / (1 - p))


def probe_loss(decoded, queries: QuerySet, stride: int, objectness_weight: float = 0.5) -> torch.Tensor:
    """Stage S1: mean over valid queries of BCEDice(up(mask logits), target) + 0.5 BCE(objectness, fg)."""
    from dtc import ops

    _, masks, objectness = decoded
    valid = queries.valid
    logits = F.interpolate(masks[valid][:, None], scale_factor=stride, mode="bilinear", align_corners=False)
    seg = ops.bce_dice(logits, queries.targets[valid][:, None].to(logits))[0]
    obj = F.binary_cross_entropy_with_logits(objectness[valid].float(), queries.foreground[valid].float())
    return seg + objectness_weight * obj


def cqd_loss(teacher, student, valid: torch.Tensor, *, tau: float = 1.0, w_mask: float = 1.0, w_embed: float = 1.0,
             w_obj: float = 0.5) -> torch.Tensor:
    """Stage S2: ``mean_b mean_k`` over valid queries of
    ``w_mask mean_p KL2(sigma(m_T / tau) || sigma(m_S / tau)) + w_embed (1 - cos(Q'_S, Q'_T)) + w_obj KL2(o)``."""
    (qt, mt, ot), (qs, ms, os_) = teacher, student
    qt, mt, ot = qt.detach(), mt.detach(), ot.detach()
    per_query = (w_mask * binary_kl(mt / tau, ms / tau).flatten(2).mean(-1)
                 + w_embed * (1 - F.cosine_similarity(qs.float(), qt.float(), dim=-1))
                 + w_obj * binary_kl(ot, os_))
    weights = valid.float()
    per_sample = (per_query * weights).sum(1) / weights.sum(1).clamp_min(1)
    return per_sample.mean()


def choose_views(batch: int, generator: torch.Generator, mode: str = "random",
                 probabilities=(0.4, 0.4, 0.2)) -> list[str]:
    """The source view of each sample: ``"teacher"`` (teacher key frame), ``"student"`` (the student's key
    frame) or ``"reference"`` (a teacher reference frame, before MSI); always ``"teacher"`` when fixed."""
    if mode == "fixed":
        return ["teacher"] * batch
    draw = torch.multinomial(torch.tensor(probabilities, dtype=torch.float64), batch, replacement=True,
                             generator=generator)
    return [("teacher", "student", "reference")[int(i)] for i in draw]
