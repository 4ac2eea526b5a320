"""ops.warp on meta tensors (what torch.compile traces with): shapes only, forward and backward,
including the resized-flow path, with no kernel run and no error (issue 12)."""
from __future__ import annotations

import pytest
import torch

from dtc import ops


@pytest.mark.parametrize("flow_size", [(8, 9), (4, 5)])
def test_warp_on_meta_tensors_gives_shapes_forward_and_backward(flow_size):
    x = torch.empty(2, 3, 8, 9, device="meta", requires_grad=True)
    flow = torch.empty(2, 2, *flow_size, device="meta", requires_grad=True)
    y = ops.warp(x, flow)
    assert y.device.type == "meta" and y.shape == (2, 3, 8, 9)
    y.sum().backward()
    assert x.grad.shape == x.shape and flow.grad.shape == flow.shape
