"""The clip teacher's spatio-temporal module, MSI-Seg, and the teacher built around an image model
(docs/v2i.md, "The clip teacher").

For each of the deepest encoder levels the module takes the features of all T frames of a clip and
returns enhanced key-frame features:

    Z_{t,l} = LN_C(Conv1x1(F_{t,l}))                                    projection to d channels
    U_l     = PW(GELU(GN(DWConv3D_{(k_t,3,3)}(Z_{., l}))))[key]         local branch: 3-D conv over time
    G_l     = Block(Z_{key,l}) - Z_{key,l}                              global branch: deformable attention
                                                                        over all T frames and all levels
    F^_l    = F_{key,l} + gamma_l * Conv1x1(U_l + G_l),  gamma_l = 0 at start (ReZero)

so with gamma = 0 the teacher is exactly the image model. The global branch samples K points per (head,
frame, level) around each key-frame token with :func:`dtc.ops.msda_st` (or its ``grid_sample``
reference); ``attn="full"`` replaces it by ordinary multi-head attention over all T frames of the same
level, for small maps.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MSISeg", "ClipTeacher", "key_index", "sine_position"]


def key_index(frames: int, causal: bool) -> int:
    """Position of the key frame in a clip of ``frames``: the last when causal, else the middle."""
    return frames - 1 if causal else frames // 2


def sine_position(h: int, w: int, d: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """2-D sine position encoding ``(h w, d)`` of the cell centres (half the channels for y, half for x)."""
    if d % 4:
        raise ValueError(f"sine_position: d must be a multiple of 4, got {d}")
    quarter = d // 4
    freq = 10000.0 ** (-torch.arange(quarter, device=device, dtype=torch.float64) / quarter)
    y = (torch.arange(h, device=device, dtype=torch.float64) + 0.5) / h * 2 * math.pi
    x = (torch.arange(w, device=device, dtype=torch.float64) + 0.5) / w * 2 * math.pi
    ey = torch.cat([torch.sin(y[:, None] * freq), torch.cos(y[:, None] * freq)], 1)  # (h, d/2)
    ex = torch.cat([torch.sin(x[:, None] * freq), torch.cos(x[:, None] * freq)], 1)  # (w, d/2)
    pe = torch.cat([ey[:, None, :].expand(h, w, -1), ex[None, :, :].expand(h, w, -1)], -1)
    return pe.reshape(h * w, d).to(dtype)


class _ChannelNorm(nn.Module):
    """LayerNorm over the channels of each pixel of an NCHW map."""

    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _groups(d: int) -> int:
    return math.gcd(32, d)


class DeformableAttentionST(nn.Module):
    """Multi-frame multi-scale deformable attention (the Deformable-DETR sampler over T·L maps)."""

    def __init__(self, d: int, heads: int, maps: int, points: int, sampler: str = "op"):
        super().__init__()
        if d % heads:
            raise ValueError(f"MSISeg: d={d} must be divisible by heads={heads}")
        if sampler not in ("op", "reference"):
            raise ValueError(f"MSISeg: sampler must be 'op' or 'reference', got {sampler!r}")
        self.d, self.heads, self.maps, self.points, self.sampler = d, heads, maps, points, sampler
        self.offsets = nn.Linear(d, heads * maps * points * 2)
        self.weights = nn.Linear(d, heads * maps * points)
        self.value = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.reset_parameters()

    def reset_parameters(self):
        # Offsets start on rays around the reference point, one direction per head, the k-th point k+1
        # cells out; attention starts uniform (zero logits).
        nn.init.zeros_(self.offsets.weight)
        theta = torch.arange(self.heads, dtype=torch.float64) * (2 * math.pi / self.heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid[:, None, None, :].repeat(1, self.maps, self.points, 1)
        grid = grid * torch.arange(1, self.points + 1, dtype=torch.float64)[None, None, :, None]
        with torch.no_grad():
            self.offsets.bias.copy_(grid.flatten().to(self.offsets.bias.dtype))
        nn.init.zeros_(self.weights.weight)
        nn.init.zeros_(self.weights.bias)
        for layer in (self.value, self.out):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, query, reference, values, shapes):
        from dtc import ops
        from dtc.ops import reference as ref_ops

        B, Q, _ = query.shape
        v = self.value(values).view(B, values.shape[1], self.heads, self.d // self.heads)
        off = self.offsets(query).view(B, Q, self.heads, self.maps, self.points, 2)
        size = torch.tensor([[w, h] for h, w in shapes], device=query.device, dtype=off.dtype)
        loc = reference[:, :, None, None, None, :] + off / size[None, None, None, :, None, :]
        a = torch.softmax(self.weights(query).view(B, Q, self.heads, -1), -1)
        a = a.view(B, Q, self.heads, self.maps, self.points)
        flat = [int(s) for hw in shapes for s in hw]
        if self.sampler == "op":
            dtype = v.dtype if v.dtype in (torch.float32, torch.float64) else torch.float32
            out = ops.msda_st(v.to(dtype), flat, loc.to(dtype), a.to(dtype)).to(v.dtype)
        else:
            out = ref_ops.msda_st(v, flat, loc, a)
        return self.out(out)


class _GlobalBlock(nn.Module):
    """Pre-LN block: deformable (or full) attention then an FFN, each with a residual."""

    def __init__(self, d, heads, maps, points, ffn, dropout, attn, sampler):
        super().__init__()
        self.attn_kind = attn
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        if attn == "deform":
            self.attn = DeformableAttentionST(d, heads, maps, points, sampler)
        else:
            self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.drop = nn.Dropout(dropout)


class MSISeg(nn.Module):
    """Multi-frame spatio-temporal enhancement of the deepest encoder levels (module docstring).

    Args:
        channels: ``C_l`` of each enhanced level, shallow to deep (the three deepest levels).
        frames: clip length T. causal: the key frame is the last (past frames only) instead of the middle.
        d, heads, points, blocks, ffn, dropout: width, attention heads, sampling points per (head, frame,
            level), blocks of the global branch, FFN width, dropout.
        attn: ``"deform"`` (the ``msda_st`` sampler) or ``"full"`` (multi-head attention over all frames of
            one level; only for maps with ``T·H_l·W_l <= 4096``).
        sampler: ``"op"`` (the fused kernels) or ``"reference"`` (``grid_sample``).
        fusion: ``"rezero"`` (``gamma`` per channel, 0 at start).

    ``forward(levels)`` takes ``[(B, T, C_l, H_l, W_l)]`` and returns the enhanced key-frame maps
    ``[(B, C_l, H_l, W_l)]``.
    """

    def __init__(self, channels: Sequence[int], frames: int = 3, causal: bool = False, d: int = 256, heads: int = 8,
                 points: int = 4, blocks: int = 1, ffn: int = 1024, dropout: float = 0.1, attn: str = "deform",
                 sampler: str = "op"):
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or any(c <= 0 for c in channels):
            raise ValueError(f"MSISeg: channels must be positive level widths, got {channels}")
        if frames < 1:
            raise ValueError(f"MSISeg: frames must be >= 1, got {frames}")
        if attn not in ("deform", "full"):
            raise ValueError(f"MSISeg: attn must be 'deform' or 'full', got {attn!r}")
        if d % 4 or d % heads:
            raise ValueError(f"MSISeg: d={d} must be a multiple of 4 and of heads={heads}")
        self.channels, self.frames, self.causal, self.d, self.attn = channels, frames, causal, d, attn
        levels = len(channels)
        kt = min(3, frames)
        self.project = nn.ModuleList(nn.Sequential(nn.Conv2d(c, d, 1), _ChannelNorm(d)) for c in channels)
        self.local_dw = nn.ModuleList(nn.Conv3d(d, d, (kt, 3, 3), padding=(kt // 2, 1, 1), groups=d) for _ in channels)
        self.local_norm = nn.ModuleList(nn.GroupNorm(_groups(d), d) for _ in channels)
        self.local_pw = nn.ModuleList(nn.Conv2d(d, d, 1) for _ in channels)
        self.level_embed = nn.Parameter(torch.zeros(levels, d))
        self.time_embed = nn.Parameter(torch.zeros(frames, d))
        nn.init.normal_(self.level_embed, std=0.02)
        nn.init.normal_(self.time_embed, std=0.02)
        self.blocks = nn.ModuleList(_GlobalBlock(d, heads, frames * levels, points, ffn, dropout, attn, sampler)
                                    for _ in range(blocks))
        self.fuse = nn.ModuleList(nn.Conv2d(d, c, 1) for c in channels)
        self.gamma = nn.ParameterList(nn.Parameter(torch.zeros(c)) for c in channels)

    @property
    def key(self) -> int:
        return key_index(self.frames, self.causal)

    def _check(self, levels):
        if len(levels) != len(self.channels):
            raise ValueError(f"MSISeg: expected {len(self.channels)} levels, got {len(levels)}")
        for l, (f, c) in enumerate(zip(levels, self.channels)):
            if f.dim() != 5 or f.shape[1] != self.frames or f.shape[2] != c:
                raise ValueError(f"MSISeg: levels[{l}] must be (B, T={self.frames}, C={c}, H, W), got {tuple(f.shape)}")

    def forward(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self._check(levels)
        B, T = levels[0].shape[:2]
        key = self.key
        z = [proj(f.flatten(0, 1)).view(B, T, self.d, *f.shape[-2:]) for proj, f in zip(self.project, levels)]
        local = []
        for l, zl in enumerate(z):
            u = self.local_dw[l](zl.transpose(1, 2))                      # (B, d, T, h, w)
            u = F.gelu(self.local_norm[l](u))[:, :, key]
            local.append(self.local_pw[l](u))
        global_ = self._global(z, key)
        out = []
        for l, f in enumerate(levels):
            update = self.fuse[l](local[l] + global_[l])
            out.append(f[:, key] + self.gamma[l].view(1, -1, 1, 1).to(update.dtype) * update)
        return out

    def _global(self, z, key):
        B, T = z[0].shape[:2]
        shapes = [tuple(zl.shape[-2:]) for zl in z]
        pos = [sine_position(h, w, self.d, zl.device, zl.dtype) + self.level_embed[l]
               for l, (zl, (h, w)) in enumerate(zip(z, shapes))]
        tokens = [zl[:, key].flatten(2).transpose(1, 2) for zl in z]        # (B, h w, d) per level
        if self.attn == "full":
            for l, (h, w) in enumerate(shapes):
                if T * h * w > 4096:
                    raise ValueError(f"MSISeg: attn='full' is for small maps (T*H*W <= 4096); level {l} has "
                                     f"{T}*{h}*{w} = {T * h * w}; use attn='deform'")
            keys = [(zl.flatten(3).permute(0, 1, 3, 2) + self.time_embed[:, None, :]
                     + pos[l][None, None]).flatten(1, 2) for l, zl in enumerate(z)]
            updates = []
            for l, x0 in enumerate(tokens):
                x = x0
                for block in self.blocks:
                    q = block.norm1(x) + pos[l]
                    a, _ = block.attn(q, keys[l], keys[l], need_weights=False)
                    x = x + block.drop(a)
                    x = x + block.drop(block.ffn(block.norm2(x)))
                updates.append(x - x0)
        else:
            x0 = torch.cat(tokens, 1)
            query_pos = torch.cat(pos, 0)[None]
            reference = torch.cat([self._reference(h, w, z[0]) for h, w in shapes], 0)[None].expand(B, -1, -1)
            values = torch.cat([(z[l][:, t].flatten(2).transpose(1, 2) + self.time_embed[t])
                                for t in range(T) for l in range(len(z))], 1)
            map_shapes = [shapes[l] for t in range(T) for l in range(len(z))]
            x = x0
            for block in self.blocks:
                x = x + block.drop(block.attn(block.norm1(x) + query_pos, reference, values, map_shapes))
                x = x + block.drop(block.ffn(block.norm2(x)))
            updates = list((x - x0).split([h * w for h, w in shapes], 1))
        return [u.transpose(1, 2).reshape(B, self.d, h, w) for u, (h, w) in zip(updates, shapes)]

    @staticmethod
    def _reference(h, w, like):
        y = (torch.arange(h, device=like.device, dtype=like.dtype) + 0.5) / h
        x = (torch.arange(w, device=like.device, dtype=like.dtype) + 0.5) / w
        return torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], -1).reshape(h * w, 2)


class ClipTeacher(nn.Module):
    """The image model plus :class:`MSISeg` on its deepest encoder levels: sees a clip, segments its key frame.

    Args:
        image_model: a net with the feature-pyramid protocol (``features``/``decode``: dtc's nets, or
            ``FeatureTaps(net, features=[...])``); the teacher shares all of its weights.
        levels: how many of the deepest levels MSI enhances (3).
        channels: the widths of those levels; read from ``image_model.feature_channels`` when it has them.
        **msi: :class:`MSISeg` arguments (frames, causal, d, heads, points, blocks, ffn, dropout, attn, sampler).

    ``forward(clip (B, T, C, H, W))`` returns the key frame's ``(logits, local, global)``;
    :meth:`forward_features` also returns the enhanced levels (the distillation targets). The key frame is
    encoded on its own, so with gamma = 0 the logits equal ``image_model(clip[:, key])`` bit for bit.
    """

    def __init__(self, image_model: nn.Module, levels: int = 3, channels: Optional[Sequence[int]] = None, **msi):
        super().__init__()
        for method in ("features", "decode"):
            if not callable(getattr(image_model, method, None)):
                raise TypeError(f"ClipTeacher: the image model has no {method}(); wrap a user's net as "
                                "FeatureTaps(net, features=[...]) to name its encoder levels")
        if channels is None:
            all_channels = getattr(image_model, "feature_channels", None)
            if all_channels is None:
                raise ValueError("ClipTeacher: pass channels=[C_l, ...] of the enhanced levels (the image model does "
                                 "not report its feature_channels)")
            channels = list(all_channels)[-levels:]
        if len(channels) != levels:
            raise ValueError(f"ClipTeacher: channels must give {levels} widths, got {list(channels)}")
        self.image_model = image_model
        self.levels = levels
        self.msi = MSISeg(channels, **msi)

    @property
    def key(self) -> int:
        return self.msi.key

    def forward_features(self, clip: torch.Tensor):
        """``((logits, local, global), enhanced levels [(B, C_l, H_l, W_l)], key-frame levels)``."""
        if clip.dim() != 5 or clip.shape[1] != self.msi.frames:
            raise ValueError(f"ClipTeacher: clip must be (B, T={self.msi.frames}, C, H, W), got {tuple(clip.shape)}")
        B, T = clip.shape[:2]
        key = self.key
        key_frame = clip[:, key]
        key_feats = list(self.image_model.features(key_frame))
        if len(key_feats) < self.levels:
            raise ValueError(f"ClipTeacher: the image model has {len(key_feats)} levels, fewer than levels={self.levels}")
        others = [t for t in range(T) if t != key]
        deep = [f[:, None] for f in key_feats[-self.levels:]]
        if others:
            ref_feats = self.image_model.features(clip[:, others].flatten(0, 1))[-self.levels:]
            stacked = []
            for kf, rf in zip(deep, ref_feats):
                rf = rf.view(B, len(others), *rf.shape[1:])
                parts = [kf if t == key else rf[:, others.index(t), None] for t in range(T)]
                stacked.append(torch.cat(parts, 1))
            deep = stacked
        enhanced = self.msi(deep)
        feats = key_feats[:-self.levels] + enhanced
        return self.image_model.decode(key_frame, feats), enhanced, key_feats

    def forward(self, clip: torch.Tensor):
        return self.forward_features(clip)[0]
