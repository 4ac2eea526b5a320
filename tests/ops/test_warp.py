"""The warp op against its grid_sample composition, golden cases, gradients, tracing and bad input."""
from __future__ import annotations

import pytest
import torch

from dtc import ops
from dtc.nn import Warp
from dtc.ops import reference

PADDINGS = ["border", "zeros"]
SHAPES = [(1, 1, 1, 1), (2, 1, 7, 9), (3, 4, 16, 23), (2, 64, 12, 10), (1, 3, 40, 56)]
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def random_pair(shape, dtype, device="cpu", flow_scale=3.0, seed=0, dyadic=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    flow = flow_scale * torch.randn((shape[0], 2, shape[2], shape[3]), generator=g, dtype=torch.float64)
    if dyadic:
        # Multiples of 1/256 make p - F(p) exact in float32, so a float32 result can be held to the
        # float64 oracle without the coordinate rounding that any float32 implementation incurs.
        flow = torch.round(flow * 256) / 256
    return x, flow.to(device=device, dtype=dtype)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_grid_sample_composition(shape, dtype, padding):
    x, flow = random_pair(shape, dtype, dyadic=dtype == torch.float32)
    ours = ops.warp(x, flow, padding=padding)
    # The oracle runs in float64 on the very same input values.
    ref = reference.warp(x.double(), flow.double(), padding=padding).to(dtype)
    torch.testing.assert_close(ours, ref, rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("shape", SHAPES)
def test_float32_agrees_with_float32_composition(shape, padding):
    # With arbitrary float32 flows both implementations round the sample coordinate (the
    # composition twice, through its [-1, 1] normalisation), so they agree to float32 precision.
    x, flow = random_pair(shape, torch.float32, seed=5)
    torch.testing.assert_close(ops.warp(x, flow, padding=padding), reference.warp(x, flow, padding=padding))


@pytest.mark.parametrize("padding", PADDINGS)
def test_gradients_match_grid_sample_composition(padding):
    x, flow = random_pair((2, 5, 11, 13), torch.float64, flow_scale=4.0)
    x.requires_grad_(True)
    flow.requires_grad_(True)
    weights = torch.randn(2, 5, 11, 13, dtype=torch.float64)
    ours = torch.autograd.grad((ops.warp(x, flow, padding=padding) * weights).sum(), (x, flow))
    ref = torch.autograd.grad((reference.warp(x, flow, padding=padding) * weights).sum(), (x, flow))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("padding", PADDINGS)
def test_gradcheck_both_inputs(padding):
    x, flow = random_pair((2, 3, 6, 7), torch.float64, flow_scale=2.5, seed=3)
    # Keep sample points off integer coordinates, where bilinear interpolation has a kink.
    flow = flow + 0.123
    x.requires_grad_(True)
    flow.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, f: ops.warp(a, f, padding=padding), (x, flow))


def test_gradcheck_with_flow_resize():
    x, _ = random_pair((1, 2, 8, 10), torch.float64)
    small_flow = (torch.randn(1, 2, 4, 5, dtype=torch.float64) + 0.31).requires_grad_(True)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, f: ops.warp(a, f), (x, small_flow))


def test_zero_flow_is_identity():
    x, _ = random_pair((2, 3, 9, 11), torch.float32)
    flow = torch.zeros(2, 2, 9, 11)
    for padding in PADDINGS:
        assert torch.equal(ops.warp(x, flow, padding=padding), x)


@pytest.mark.parametrize("dx,dy", [(1, 0), (0, 2), (-3, 1), (2, -2)])
def test_integer_shift_is_exact_roll_inside_the_border(dx, dy):
    x, _ = random_pair((1, 2, 10, 12), torch.float64)
    flow = torch.zeros(1, 2, 10, 12, dtype=torch.float64)
    flow[:, 0], flow[:, 1] = dx, dy
    out = ops.warp(x, flow, padding="zeros")
    rolled = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    # W(x)(p) = x(p - F): content moves by +F. Compare where the source lies inside the image.
    ys = slice(max(dy, 0), 10 + min(dy, 0))
    xs = slice(max(dx, 0), 12 + min(dx, 0))
    assert torch.equal(out[..., ys, xs], rolled[..., ys, xs])
    outside = torch.ones(10, 12, dtype=torch.bool)
    outside[ys, xs] = False
    assert torch.all(out[..., outside] == 0)


def test_flow_pointing_outside():
    x, _ = random_pair((1, 1, 6, 8), torch.float64)
    flow = torch.zeros(1, 2, 6, 8, dtype=torch.float64)
    flow[:, 0] = 1e6  # samples far to the left of every pixel
    border = ops.warp(x, flow, padding="border")
    torch.testing.assert_close(border, x[..., :1].expand_as(x), rtol=0, atol=0)
    torch.testing.assert_close(ops.warp(x, flow, padding="zeros"), torch.zeros_like(x), rtol=0, atol=0)
    # Clamped far outside, the output no longer depends on dx (it still does on dy).
    flow.requires_grad_(True)
    (g,) = torch.autograd.grad(ops.warp(x, flow, padding="border").sum(), flow)
    torch.testing.assert_close(g[:, 0], torch.zeros_like(g[:, 0]), rtol=0, atol=0)
    assert g[:, 1].abs().sum() > 0


def test_half_pixel_golden_values():
    x = torch.tensor([[[[0.0, 10.0, 20.0], [30.0, 40.0, 50.0]]]], dtype=torch.float64)
    flow = torch.zeros(1, 2, 2, 3, dtype=torch.float64)
    flow[:, 0] = -0.5  # sample half a pixel to the right
    flow[:, 1] = -0.25  # and a quarter pixel down
    out = ops.warp(x, flow, padding="border")
    # Pixel (0,0) samples (0.5, 0.25): 0.75*(0+10)/2 + 0.25*(30+40)/2 = 3.75 + 8.75
    assert out[0, 0, 0, 0].item() == pytest.approx(12.5, abs=1e-12)
    # The last column clamps x to 2 and the last row clamps y to 1 under border padding.
    assert out[0, 0, 1, 2].item() == pytest.approx(50.0, abs=1e-12)


def test_non_contiguous_and_channels_last_inputs():
    x, flow = random_pair((2, 6, 14, 15), torch.float64)
    expected = reference.warp(x, flow)
    torch.testing.assert_close(ops.warp(x.to(memory_format=torch.channels_last), flow), expected, rtol=0, atol=1e-12)
    x_t = x.transpose(2, 3).contiguous().transpose(2, 3)
    flow_t = flow.transpose(2, 3).contiguous().transpose(2, 3)
    assert not x_t.is_contiguous() and not flow_t.is_contiguous()
    torch.testing.assert_close(ops.warp(x_t, flow_t), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(ops.warp(x[:, ::2], flow), reference.warp(x[:, ::2], flow), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(0, 3, 5, 5), (2, 0, 5, 5)])
def test_zero_batch_or_channels(shape):
    x = torch.randn(shape, requires_grad=True)
    flow = torch.randn(shape[0], 2, 5, 5, requires_grad=True)
    out = ops.warp(x, flow)
    assert out.shape == shape
    out.sum().backward()
    assert x.grad.shape == x.shape and flow.grad.shape == flow.shape


def test_resized_flow_matches_reference_and_rescales():
    x, _ = random_pair((2, 3, 16, 20), torch.float64)
    small = torch.randn(2, 2, 4, 5, dtype=torch.float64)
    for align_corners in (True, False):
        for rescale in (True, False):
            ours = ops.warp(x, small, align_corners=align_corners, rescale=rescale)
            ref = reference.warp(x, small, align_corners=align_corners, rescale=rescale)
            torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    # A constant 1-pixel flow on the small grid is a 4-pixel flow on the large one.
    resized = ops.resize_flow(torch.ones(1, 2, 4, 5, dtype=torch.float64), (16, 20), align_corners=False)
    torch.testing.assert_close(resized[0, 0], torch.full((16, 20), 4.0, dtype=torch.float64))
    torch.testing.assert_close(resized[0, 1], torch.full((16, 20), 4.0, dtype=torch.float64))


def test_nan_flow_gives_nan_only_at_that_pixel():
    x, flow = random_pair((1, 3, 5, 6), torch.float64)
    flow[0, 0, 2, 3] = float("nan")
    flow[0, 1, 4, 1] = float("inf")
    x.requires_grad_(True)
    flow.requires_grad_(True)
    out = ops.warp(x, flow)
    bad = torch.zeros(5, 6, dtype=torch.bool)
    bad[2, 3] = bad[4, 1] = True
    assert torch.isnan(out[..., bad]).all()
    assert torch.isfinite(out[..., ~bad]).all()
    gx, gf = torch.autograd.grad(out[..., ~bad].sum(), (x, flow))
    assert torch.isfinite(gx).all() and torch.isfinite(gf).all()
    assert torch.equal(gf[..., bad], torch.zeros_like(gf[..., bad]))


def test_cpu_results_are_deterministic():
    x, flow = random_pair((2, 8, 20, 24), torch.float32, flow_scale=6)
    x.requires_grad_(True)
    flow.requires_grad_(True)
    runs = [torch.autograd.grad(ops.warp(x, flow).square().sum(), (x, flow)) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_opcheck():
    for padding in PADDINGS:
        x, flow = random_pair((2, 3, 8, 9), torch.float32)
        torch.library.opcheck(torch.ops.dtc.warp.default, (x.requires_grad_(), flow.requires_grad_(), padding))
        x, flow = random_pair((2, 3, 8, 9), torch.float32)
        torch.library.opcheck(torch.ops.dtc.warp_backward.default, (torch.randn_like(x), x, flow, padding, [True, True]))
    torch.library.opcheck(torch.ops.dtc.resize_flow.default, (torch.randn(1, 2, 3, 4), [6, 8], True, True))


def test_torch_compile_fullgraph():
    def step(x, flow):
        return (ops.warp(x, flow * 0.5) - x).abs().mean()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    x, flow = random_pair((2, 3, 12, 14), torch.float32)
    x.requires_grad_(True)
    expected = step(x, flow)
    got = compiled(x, flow)
    torch.testing.assert_close(got, expected)
    (g_eager,) = torch.autograd.grad(expected, x)
    (g_compiled,) = torch.autograd.grad(got, x)
    torch.testing.assert_close(g_compiled, g_eager)


@pytest.mark.slow
def test_torch_compile_inductor():
    compiled = torch.compile(lambda x, f: ops.warp(x, f).sigmoid(), fullgraph=True)
    x, flow = random_pair((1, 2, 8, 8), torch.float32)
    torch.testing.assert_close(compiled(x, flow), ops.warp(x, flow).sigmoid())


def test_autocast_promotes_to_the_common_dtype():
    x, flow = random_pair((1, 2, 8, 9), torch.float32, dyadic=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.warp(x.bfloat16(), flow)
    assert out.dtype == torch.float32
    expected = reference.warp(x.bfloat16().double(), flow.double()).float()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_module_twin():
    x, flow = random_pair((1, 2, 8, 9), torch.float64)
    module = Warp(padding="zeros")
    torch.testing.assert_close(module(x, flow), ops.warp(x, flow, padding="zeros"), rtol=0, atol=0)
    assert "zeros" in repr(module)
    with pytest.raises(ValueError, match="padding"):
        Warp(padding="reflection")


BAD_INPUTS = [
    (lambda: (torch.randn(3, 4, 5), torch.zeros(1, 2, 4, 5)), ValueError, r"x must be a 4-D tensor \[N, C, H, W\]"),
    (lambda: (torch.randn(1, 3, 4, 5), torch.zeros(1, 3, 4, 5)), ValueError, r"flow must have shape \[N, 2, H, W\]"),
    (lambda: (torch.randn(1, 3, 4, 5), torch.zeros(2, 4, 5)), ValueError, r"flow must have shape"),
    (lambda: (torch.randn(2, 3, 4, 5), torch.zeros(3, 2, 4, 5)), ValueError, r"flow's batch size 3 must match x's 2"),
    (lambda: (torch.randn(1, 3, 0, 5), torch.zeros(1, 2, 0, 5)), ValueError, r"non-zero height and width"),
    (lambda: (torch.randn(1, 3, 4, 5), torch.zeros(1, 2, 4, 5, dtype=torch.float64)), TypeError, r"same dtype"),
    (lambda: (torch.ones(1, 3, 4, 5, dtype=torch.int32), torch.zeros(1, 2, 4, 5, dtype=torch.int32)), TypeError,
     r"x must be a floating-point tensor"),
    (lambda: (torch.randn(1, 3, 4, 5).half(), torch.zeros(1, 2, 4, 5).half()), TypeError, r"float32 or float64"),
]


@pytest.mark.parametrize("make,error,pattern", BAD_INPUTS)
def test_bad_input_raises_a_clear_error(make, error, pattern):
    x, flow = make()
    with pytest.raises(error, match=pattern):
        ops.warp(x, flow)
    with pytest.raises(error, match=pattern):  # the raw op gives the same message as the wrapper
        torch.ops.dtc.warp(x, flow, "border")


def test_bad_padding_and_raw_op_size_mismatch():
    x, flow = random_pair((1, 1, 4, 5), torch.float32)
    with pytest.raises(ValueError, match=r"padding must be 'border' or 'zeros', got 'reflection'"):
        ops.warp(x, flow, padding="reflection")
    with pytest.raises(ValueError, match=r"flow's spatial size \[2, 3\] must match x's \[4, 5\]"):
        torch.ops.dtc.warp(x, torch.zeros(1, 2, 2, 3), "border")
    with pytest.raises(ValueError, match=r"size must be two positive integers"):
        ops.resize_flow(flow, (0, 3))
    with pytest.raises(ValueError, match=r"grad_out must have shape"):
        torch.ops.dtc.warp_backward(torch.zeros(1, 1, 2, 2), x, flow, "border", [True, True])


# ---------------------------------------------------------------- CUDA: same oracle, same cases
@pytest.mark.cuda
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_matches_reference_fp32_fp64(shape, padding):
    for dtype in (torch.float32, torch.float64):
        x, flow = random_pair(shape, dtype, device="cuda", dyadic=dtype == torch.float32)
        expected = reference.warp(x.double(), flow.double(), padding=padding).to(dtype)
        torch.testing.assert_close(ops.warp(x, flow, padding=padding), expected, rtol=0, atol=TOL[dtype])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_accumulates_in_float(dtype):
    x, flow = random_pair((2, 8, 32, 40), torch.float32, device="cuda")
    # Eighths plus 1/16 within +-15 are exact in both half types and never put a sample point on an
    # integer, where the flow gradient jumps (bilinear interpolation has a kink there) and the oracle's
    # normalised coordinates may round to the other side of it (seen on an H200: one pixel off by 6.4).
    flow = torch.round(flow.clamp(-15, 15) * 8) / 8 + 1 / 16
    out = ops.warp(x.to(dtype), flow.to(dtype))
    assert out.dtype == dtype
    expected = reference.warp(x.to(dtype).float(), flow.to(dtype).float())
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(out.float(), expected, rtol=tol, atol=tol)
    x16, f16 = x.to(dtype).requires_grad_(), flow.to(dtype).requires_grad_()
    gx, gf = torch.autograd.grad(ops.warp(x16, f16).float().sum(), (x16, f16))
    assert torch.isfinite(gx.float()).all() and torch.isfinite(gf.float()).all()
    # Values, not just finiteness: against float32 autograd of the reference on the same rounded inputs.
    x32, f32 = x16.detach().float().requires_grad_(), f16.detach().float().requires_grad_()
    ex, ef = torch.autograd.grad(reference.warp(x32, f32).sum(), (x32, f32))
    torch.testing.assert_close(gx.float(), ex, rtol=tol, atol=tol * max(1.0, ex.abs().max().item()))
    torch.testing.assert_close(gf.float(), ef, rtol=tol, atol=tol * max(1.0, ef.abs().max().item()))


@pytest.mark.cuda
@pytest.mark.parametrize("padding", PADDINGS)
def test_cuda_gradcheck_and_cpu_parity(padding):
    x, flow = random_pair((2, 3, 6, 7), torch.float64, device="cuda", flow_scale=2.5, seed=3)
    flow = flow + 0.123
    x.requires_grad_(True)
    flow.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, f: ops.warp(a, f, padding=padding), (x, flow), nondet_tol=1e-12)
    gpu = torch.autograd.grad(ops.warp(x, flow, padding=padding).square().sum(), (x, flow))
    xc, fc = x.detach().cpu().requires_grad_(), flow.detach().cpu().requires_grad_()
    cpu = torch.autograd.grad(ops.warp(xc, fc, padding=padding).square().sum(), (xc, fc))
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=1e-12)


@pytest.mark.cuda
def test_cuda_opcheck_compile_and_mixed_devices():
    x, flow = random_pair((2, 3, 8, 9), torch.float32, device="cuda")
    torch.library.opcheck(torch.ops.dtc.warp.default, (x.requires_grad_(), flow.requires_grad_(), "border"))
    compiled = torch.compile(lambda a, f: ops.warp(a, f).sum(), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, flow), ops.warp(x, flow).sum())
    with pytest.raises(ValueError, match=r"same device"):
        torch.ops.dtc.warp(x.detach(), flow.detach().cpu(), "border")
    with pytest.raises(ValueError, match=r"same device"):
        torch.ops.dtc.warp(x.detach().cpu(), flow.detach(), "border")


def test_cpu_backward_paths_agree_bitwise():
    # The CPU backward fuses both gradients per sample when the batch covers the threads, and
    # otherwise runs one pass per gradient; both visit contributions in the same order.
    x, flow = random_pair((3, 5, 17, 19), torch.float64, flow_scale=5)
    grad_out = torch.randn_like(x)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        fused = torch.ops.dtc.warp_backward(grad_out, x, flow, "border", [True, True])
        torch.set_num_threads(8)
        split = torch.ops.dtc.warp_backward(grad_out, x, flow, "border", [True, True])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(fused, split):
        assert torch.equal(a, b)


# The CPU forward evaluates a row's taps once and then gathers eight pixels at a time (AVX2 where the
# CPU has it, a portable loop for the rest of the row and elsewhere). Widths that are not multiples of
# 8 cover both loops; flows up to 40 pixels send many taps across and far beyond the borders.
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [1, 64])
@pytest.mark.parametrize("layout", ["contiguous", "strided", "transposed"])
def test_row_gather_forward_matches_float64_oracle(padding, dtype, channels, layout):
    g = torch.Generator().manual_seed(channels)
    H, W = 13, 29
    x = torch.randn(2, 2 * channels, H, W, generator=g, dtype=torch.float64)
    scale = torch.where(torch.arange(W) % 3 == 0, 40.0, 2.0).to(torch.float64)
    flow = torch.randn(2, 2, H, W, generator=g, dtype=torch.float64) * scale
    flow = torch.round(flow * 256) / 256  # exact sample points in float32 (see random_pair)
    flow[0, 0, 3, 5] = float("nan")
    flow[1, 1, 7, 28] = float("inf")
    flow[1, 0, 0, 0] = -float("inf")
    x = x.to(dtype)[:, ::2] if layout == "strided" else x.to(dtype)[:, :channels].contiguous()
    if layout == "transposed":
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert x.is_contiguous() == (layout == "contiguous")
    flow = flow.to(dtype)
    out = ops.warp(x, flow, padding=padding)
    bad = ~torch.isfinite(flow).all(dim=1, keepdim=True).expand_as(out)
    assert torch.isnan(out[bad]).all()
    expected = reference.warp(x.double(), flow.double(), padding=padding).to(dtype)
    torch.testing.assert_close(out[~bad], expected[~bad], rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_out_of_image_taps_read_zero_even_next_to_infinite_pixels(dtype):
    # Out-of-image taps are masked, not multiplied by a zero weight: an infinite pixel in x must not
    # turn their zero into 0 * inf = NaN.
    x = torch.randn(1, 3, 6, 19, dtype=dtype)
    x[..., 0, 0] = float("inf")
    x[..., 5, 18] = -float("inf")
    flow = torch.zeros(1, 2, 6, 19, dtype=dtype)
    flow[:, 0] = 1e6
    torch.testing.assert_close(ops.warp(x, flow, padding="zeros"), torch.zeros_like(x), rtol=0, atol=0)
    flow[:, 0] = -1e6
    torch.testing.assert_close(ops.warp(x, flow, padding="zeros"), torch.zeros_like(x), rtol=0, atol=0)


def test_planes_of_2_to_the_31_pixels_are_refused_on_the_cpu():
    # Expanded (stride-0) tensors: the check comes before anything is materialised.
    x = torch.zeros(1, 1, 1, 1).expand(1, 1, 65536, 32768)
    flow = torch.zeros(1, 1, 1, 1).expand(1, 2, 65536, 32768)
    with pytest.raises(ValueError, match="2\\^31 pixels"):
        torch.ops.dtc.warp(x, flow, "border")


# Where each row of taps of an 8-pixel block lies wholly inside or wholly outside the image, the AVX2
# forward reads a pixel's left and right taps as one 64-bit pair. Sub-pixel flows keep most blocks
# paired; whole rows and blocks shifted past the borders pair with masked-out rows of taps; a few
# columns sent half a pixel past the left and right borders straddle them (the per-tap path).
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_paired_tap_forward_matches_float64_oracle_at_the_borders(padding, dtype):
    g = torch.Generator().manual_seed(3)
    N, C, H, W = 2, 5, 11, 43
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    flow = 0.7 * torch.randn(N, 2, H, W, generator=g, dtype=torch.float64)
    flow[:, 1, 0] = 0.5  # top row samples half a row above the image
    flow[:, 1, H - 1] = -0.25  # bottom row samples a quarter row below it
    flow[:, 1, 4] = 30.0  # a whole row far above
    flow[0, 0, 6, 8:16] = 60.0  # a whole block far to the left
    flow[1, 0, 7, 16:24] = -60.0  # and one far to the right
    flow[:, 0, :, 0] = 0.5  # left column half a pixel past the left border
    flow[:, 0, :, W - 1] = -0.5  # right column half a pixel past the right border
    flow[0, :, 9, 19] = float("nan")
    flow[1, 0, 2, 35] = float("inf")
    flow = torch.round(flow * 256) / 256  # exact sample points in float32 (see random_pair)
    x, flow = x.to(dtype), flow.to(dtype)
    out = ops.warp(x, flow, padding=padding)
    bad = ~torch.isfinite(flow).all(dim=1, keepdim=True).expand_as(out)
    assert torch.isnan(out[bad]).all()
    expected = reference.warp(x.double(), flow.double(), padding=padding).to(dtype)
    torch.testing.assert_close(out[~bad], expected[~bad], rtol=0, atol=TOL[dtype])


def test_paired_taps_outside_the_rows_read_zero_next_to_infinite_pixels():
    # Whole rows of taps above or below the image are masked pairs: infinite pixels in the rows next
    # to the border (which an unmasked pair read one row off would reach) must not leak.
    H, W = 6, 24
    x = torch.randn(1, 2, H, W)
    x[..., 0, :] = float("inf")
    x[..., H - 1, :] = -float("inf")
    flow = torch.zeros(1, 2, H, W)
    flow[:, 1] = 1e6
    torch.testing.assert_close(ops.warp(x, flow, padding="zeros"), torch.zeros_like(x), rtol=0, atol=0)
    flow[:, 1] = -1e6
    torch.testing.assert_close(ops.warp(x, flow, padding="zeros"), torch.zeros_like(x), rtol=0, atol=0)
    # Two rows off (y0 = -2 / y0 = H + 1 after clamping): both rows of taps masked.
    flow[:, 1] = float(H + 1)
    torch.testing.assert_close(ops.warp(x, flow, padding="zeros"), torch.zeros_like(x), rtol=0, atol=0)


# The float32 CPU backward gathers the taps eight pixels at a time (AVX2 where the CPU has it, from
# the same row tables as the forward) and scatters into grad_x pixel by pixel; the row's tail beyond
# the last multiple of 8 runs the portable loop. Held to the float64 oracle at the borders, with
# flows past them and with non-finite flow (whose pixels must contribute nothing).
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("flow_scale", [0.7, 12.0])
def test_float32_backward_matches_float64_oracle(padding, flow_scale):
    g = torch.Generator().manual_seed(5)
    N, C, H, W = 2, 3, 9, 37
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    flow = flow_scale * torch.randn(N, 2, H, W, generator=g, dtype=torch.float64)
    flow[:, 1, 0] = 0.5
    flow[:, 0, :, W - 1] = -0.5
    flow[0, 0, 6, 8:16] = 60.0
    # Exact in float32 and never an integer sample point: there bilinear interpolation has a kink, and
    # the oracle's normalised coordinates may round to its other side.
    flow = torch.round(flow * 256) / 256 + 3 / 1024
    flow[0, :, 4, 3] = float("nan")
    flow[1, 1, 8, 36] = float("inf")  # in the row's tail
    flow[1, 0, 2, 17] = -float("inf")
    grad_out = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    bad = ~torch.isfinite(flow).all(dim=1, keepdim=True)
    # The oracle: bad pixels' flow set to 0 and their incoming gradient to 0 (they contribute nothing).
    xr, fr = x.clone().requires_grad_(), torch.where(bad, 0.0, flow).requires_grad_()
    ref_x, ref_flow = torch.autograd.grad(reference.warp(xr, fr, padding=padding), (xr, fr),
                                          torch.where(bad, 0.0, grad_out))
    grad_x, grad_flow = torch.ops.dtc.warp_backward(grad_out.float(), x.float(), flow.float(), padding, [True, True])
    torch.testing.assert_close(grad_x, ref_x.float(), rtol=1e-5, atol=1e-5)
    good = ~bad.expand_as(grad_flow)
    torch.testing.assert_close(grad_flow[good], ref_flow.float()[good], rtol=1e-5, atol=1e-5)
    assert (grad_flow[~good] == 0).all()
    # Flow gradient alone and grad_x alone (the split passes) agree with the fused pass exactly.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        split = torch.ops.dtc.warp_backward(grad_out.float(), x.float(), flow.float(), padding, [True, True])
    finally:
        torch.set_num_threads(threads)
    if threads < N:
        fused = (grad_x, grad_flow)
    else:
        torch.set_num_threads(1)
        try:
            fused = torch.ops.dtc.warp_backward(grad_out.float(), x.float(), flow.float(), padding, [True, True])
        finally:
            torch.set_num_threads(threads)
    for a, b in zip(fused, split):
        assert torch.equal(a, b)


def test_cpu_forward_and_backward_refuse_planes_of_2_31_pixels():
    # Expanded (stride-0) tensors: the sizes of a 2^31-pixel plane without its memory; refused before any
    # allocation, since the CPU kernels' row tables index a plane with int32.
    x = torch.zeros(1, 1, 1, 1).expand(1, 1, 1 << 16, 1 << 15)
    flow = torch.zeros(1, 2, 1, 1).expand(1, 2, 1 << 16, 1 << 15)
    with pytest.raises(ValueError, match="fewer than 2\\^31 pixels"):
        torch.ops.dtc.warp(x, flow, "border")
    with pytest.raises(ValueError, match="fewer than 2\\^31 pixels"):
        torch.ops.dtc.warp_backward(x, x, flow, "border", [True, True])
