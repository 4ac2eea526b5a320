"""torch.ops.dtc.msda_st: parity with the grid_sample composition (several shapes, float32/float64,
non-contiguous input), gradients against the reference, gradcheck in float64, opcheck, hand values,
bad input, and the CUDA twin (oracle O-A2)."""
from __future__ import annotations

import pytest
import torch

import dtc.ops
from dtc.ops import reference


def _case(B=2, Q=5, heads=2, D=3, shapes=((4, 5), (2, 3), (4, 5)), K=3, seed=0, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    S = sum(h * w for h, w in shapes)
    M = len(shapes)
    value = torch.randn(B, S, heads, D, generator=g, dtype=torch.float64)
    # locations spill a little outside [0, 1] so the zero padding is exercised
    loc = torch.rand(B, Q, heads, M, K, 2, generator=g, dtype=torch.float64) * 1.3 - 0.15
    attn = torch.softmax(torch.randn(B, Q, heads, M * K, generator=g, dtype=torch.float64), -1).view(B, Q, heads, M, K)
    return value.to(device, dtype), [list(s) for s in shapes], loc.to(device, dtype), attn.to(device, dtype)


SHAPES = [dict(), dict(B=1, Q=1, heads=1, D=1, shapes=((1, 1),), K=1), dict(B=3, Q=7, heads=4, D=8, shapes=((6, 4), (3, 2)), K=4)]


@pytest.mark.parametrize("kw", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_grid_sample_reference(kw, dtype):
    value, shapes, loc, attn = _case(**kw, dtype=dtype)
    got = dtc.ops.msda_st(value, shapes, loc, attn)
    want = reference.msda_st(value, shapes, loc, attn)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert got.shape == want.shape and got.dtype == dtype
    assert torch.allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("kw", SHAPES)
def test_gradients_match_reference(kw):
    value, shapes, loc, attn = _case(**kw, seed=1)
    ours = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
    theirs = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
    w = torch.randn(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3], dtype=torch.float64)
    (dtc.ops.msda_st(ours[0], shapes, ours[1], ours[2]) * w).sum().backward()
    (reference.msda_st(theirs[0], shapes, theirs[1], theirs[2]) * w).sum().backward()
    for a, b in zip(ours, theirs):
        assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_gradcheck_float64():
    value, shapes, loc, attn = _case(B=1, Q=3, heads=2, D=2, shapes=((3, 4), (2, 2)), K=2, seed=2)
    # keep points off the integer grid lines, where bilinear sampling has a kink
    loc = loc.clamp(0.02, 0.98)
    args = tuple(t.clone().requires_grad_(True) for t in (value, loc, attn))
    assert torch.autograd.gradcheck(lambda v, l, a: torch.ops.dtc.msda_st(v, [3, 4, 2, 2], l, a), args)
    assert torch.autograd.gradcheck(lambda v, l, a: reference.msda_st(v, [3, 4, 2, 2], l, a), args)


def test_non_contiguous_inputs():
    value, shapes, loc, attn = _case(seed=3)
    v_nc = value.transpose(2, 3).contiguous().transpose(2, 3)
    a_nc = attn.transpose(3, 4).contiguous().transpose(3, 4)
    assert not v_nc.is_contiguous() and not a_nc.is_contiguous()
    assert torch.allclose(dtc.ops.msda_st(v_nc, shapes, loc, a_nc), reference.msda_st(value, shapes, loc, attn),
                          rtol=1e-12, atol=1e-12)


def test_hand_values_cell_centres_and_outside():
    # one 2 x 3 map, one head, D = 1: a location at a cell centre reads that cell; far outside reads 0
    value = torch.arange(6, dtype=torch.float64).view(1, 6, 1, 1)
    loc = torch.tensor([[(0.5 / 3, 0.5 / 2)], [(2.5 / 3, 1.5 / 2)], [(1.0 / 3, 0.5 / 2)], [(5.0, 5.0)]],
                       dtype=torch.float64).view(1, 4, 1, 1, 1, 2)
    attn = torch.ones(1, 4, 1, 1, 1, dtype=torch.float64)
    out = dtc.ops.msda_st(value, [(2, 3)], loc, attn).flatten().tolist()
    assert out == [0.0, 5.0, 0.5, 0.0]


def test_opcheck():
    value, shapes, loc, attn = _case(seed=4)
    flat = [v for s in shapes for v in s]
    torch.library.opcheck(torch.ops.dtc.msda_st.default,
                          (value.requires_grad_(True), flat, loc.requires_grad_(True), attn.requires_grad_(True)))


def test_bad_input():
    value, shapes, loc, attn = _case(seed=5)
    flat = [v for s in shapes for v in s]
    with pytest.raises(ValueError, match="value must be"):
        torch.ops.dtc.msda_st(value[0], flat, loc, attn)
    with pytest.raises(ValueError, match="spatial_shapes must list"):
        torch.ops.dtc.msda_st(value, flat[:-1], loc, attn)
    with pytest.raises(ValueError, match="sum to"):
        torch.ops.dtc.msda_st(value, [4, 5, 2, 3, 4, 4], loc, attn)
    with pytest.raises(ValueError, match="must be positive"):
        torch.ops.dtc.msda_st(value, [4, 5, 0, 3, 4, 5], loc, attn)
    with pytest.raises(ValueError, match="sampling_locations must be"):
        torch.ops.dtc.msda_st(value, flat, loc[..., :1], attn)
    with pytest.raises(ValueError, match="attention_weights must be"):
        torch.ops.dtc.msda_st(value, flat, loc, attn[..., :2])
    with pytest.raises(TypeError, match="float32 or all float64"):
        torch.ops.dtc.msda_st(value.float(), flat, loc, attn)


@pytest.mark.cuda
@pytest.mark.parametrize("kw", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_reference_forward_and_backward(kw, dtype):
    value, shapes, loc, attn = _case(**kw, seed=6, dtype=dtype)
    ours = [t.cuda().requires_grad_(True) for t in (value, loc, attn)]
    theirs = [t.double().clone().requires_grad_(True) for t in (value, loc, attn)]
    out = dtc.ops.msda_st(ours[0], shapes, ours[1], ours[2])
    want = reference.msda_st(theirs[0], shapes, theirs[1], theirs[2])
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(out.cpu().double(), want, rtol=tol, atol=tol)
    w = torch.randn(want.shape, dtype=torch.float64)
    (out * w.to(out)).sum().backward()
    (want * w).sum().backward()
    for a, b in zip(ours, theirs):
        assert torch.allclose(a.grad.cpu().double(), b.grad, rtol=tol, atol=tol)


def test_torch_compile_matches_eager():
    value, shapes, loc, attn = _case(seed=7, dtype=torch.float32)
    flat = [v for s in shapes for v in s]
    compiled = torch.compile(lambda v, l, a: torch.ops.dtc.msda_st(v, flat, l, a), backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(value, loc, attn), torch.ops.dtc.msda_st(value, flat, loc, attn))
