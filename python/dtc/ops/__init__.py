"""dtc's tensor ops: thin wrappers over ``torch.ops.dtc.*`` (C++/CUDA kernels with C++ autograd).

Each op here has a plain-PyTorch twin in :mod:`dtc.ops.reference` that the tests use as the oracle.
"""
from __future__ import annotations

import torch

from dtc._extension import load as _load

# Loading registers torch.ops.dtc.*; done at import so the op calls below stay traceable by
# torch.compile (dynamo cannot step into the pybind11 loader).
_load()

__all__ = ["warp", "resize_flow"]


def resize_flow(flow: torch.Tensor, size, *, align_corners: bool = True, rescale: bool = True) -> torch.Tensor:
    """Bilinearly resize a flow field ``(N, 2, h, w)`` to ``size = (H, W)``.

    Convention:
        With ``rescale`` the components are multiplied by the size ratio so they stay displacements
        in pixels of the new grid: ``(W-1)/(w-1)`` for x with ``align_corners=True``, ``W/w`` without
        (likewise for y). The authors' released code does not rescale (``preset="reference"``).
    """
    return torch.ops.dtc.resize_flow(flow, [int(s) for s in size], align_corners, rescale)


def warp(
    x: torch.Tensor,
    flow: torch.Tensor,
    *,
    padding: str = "border",
    align_corners: bool = True,
    rescale: bool = True,
) -> torch.Tensor:
    """Backward-warp ``x`` with ``flow``: ``W(x)(p) = x(p - F(p))``, bilinear.

    Args:
        x: ``(N, C, H, W)``, float32/float64 (also float16/bfloat16 on CUDA); any strides.
        flow: ``(N, 2, h, w)``, same dtype and device. If ``(h, w) != (H, W)`` it is resized with
            :func:`resize_flow` (``align_corners``, ``rescale``) first.
        padding: ``"border"`` clamps the sample point into the image; ``"zeros"`` reads 0 outside.

    Returns:
        ``(N, C, H, W)``, contiguous, differentiable in ``x`` and ``flow``.

    Convention:
        Flow is in pixels, channel 0 = dx (along W), channel 1 = dy (along H), evaluated at the
        target pixel and negated (a first-order backward warp, METHOD.md §2.5). Pixel ``(i, j)``
        sits at integer coordinates (``align_corners=True`` placement), so zero flow is the identity
        and an integer flow is an exact shift. A NaN/Inf flow vector yields NaN in every channel of
        that output pixel and no gradient (checking for it would cost a host sync per call).
        On CUDA the gradient with respect to ``x`` uses atomics and is not bitwise deterministic.
    """
    if x.dim() == 4 and flow.dim() == 4 and flow.shape[-2:] != x.shape[-2:]:
        flow = torch.ops.dtc.resize_flow(flow, [x.shape[-2], x.shape[-1]], align_corners, rescale)
    return torch.ops.dtc.warp(x, flow, padding)
