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
