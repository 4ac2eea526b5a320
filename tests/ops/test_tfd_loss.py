"""torch.ops.dtc.tfd_loss: reference parity (shapes, dtypes, non-contiguous), gradcheck in float64,
opcheck, oracles O-T1 (zero at S = T, scale invariance, masked MSE) and O-T2 (no foreground, fp16),
bad input, and the CUDA twin against the same reference."""
from __future__ import annotations

import pytest
import torch

import dtc.ops
from dtc.ops import reference

NORMS = ["pixel_ln", "pearson", "none"]


def _case(B=2, C=5, H=6, W=7, seed=0, dtype=torch.float64, device="cpu", empty_fg=False):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    t = torch.randn(B, C, H, W, generator=g, dtype=torch.float64) * 2 + 0.5
    m = torch.rand(B, 1, H, W, generator=g, dtype=torch.float64)
    m = torch.where(m > 0.6, m, torch.zeros_like(m))
    if empty_fg:
        m[0] = 0
    return s.to(device, dtype), t.to(device, dtype), m.to(device, torch.float32 if dtype != torch.float64 else dtype)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("attn", [False, True])
@pytest.mark.parametrize("shape", [(2, 5, 6, 7), (1, 1, 1, 1), (3, 16, 4, 9)])
def test_matches_reference_float64(norm, attn, shape):
    s, t, m = _case(*shape, seed=sum(shape))
    got = dtc.ops.tfd_loss(s, t, m, alpha_fg=1.0, alpha_bg=0.5, norm=norm, attn_weight=attn)
    want = reference.tfd_loss(s, t, m, 1.0, 0.5, norm, attn)
    assert got.dtype == torch.float64
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12), (got, want)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("attn", [False, True])
def test_gradient_matches_reference_and_gradcheck(norm, attn):
    s, t, m = _case(seed=3)
    s1 = s.clone().requires_grad_(True)
    s2 = s.clone().requires_grad_(True)
    dtc.ops.tfd_loss(s1, t, m, alpha_fg=0.7, alpha_bg=0.3, norm=norm, attn_weight=attn).backward()
    reference.tfd_loss(s2, t, m, 0.7, 0.3, norm, attn).backward()
    assert torch.allclose(s1.grad, s2.grad, rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda x: torch.ops.dtc.tfd_loss(x, t, m, 0.7, 0.3, norm, attn), (s.clone().requires_grad_(True),))


def test_float32_and_non_contiguous_inputs():
    s, t, m = _case(B=2, C=6, H=5, W=8, seed=4, dtype=torch.float32)
    s_nc = s.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)  # same values, channels-last-like strides
    t_nc = t.contiguous(memory_format=torch.channels_last)
    assert not s_nc.is_contiguous() and not t_nc.is_contiguous()
    for norm in NORMS:
        a = dtc.ops.tfd_loss(s_nc, t_nc, m, norm=norm)
        b = reference.tfd_loss(s.double(), t.double(), m.double(), norm=norm)
        assert a.dtype == torch.float32
        assert torch.allclose(a.double(), b, rtol=1e-5, atol=1e-6)
    x = s_nc.clone().requires_grad_(True)
    dtc.ops.tfd_loss(x, t_nc, m).backward()
    y = s.double().requires_grad_(True)
    reference.tfd_loss(y, t.double(), m.double()).backward()
    assert torch.allclose(x.grad.double(), y.grad, rtol=1e-4, atol=1e-7)


def test_o_t1_zero_at_equality_and_scale_invariance_under_pixel_ln():
    s, t, m = _case(seed=5)
    assert dtc.ops.tfd_loss(t, t, m).item() == pytest.approx(0.0, abs=1e-14)
    scale = 1 + 2 * torch.rand(2, 1, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a = dtc.ops.tfd_loss(s, t, m)
    b = dtc.ops.tfd_loss(s * scale, t, m)
    # invariant but for LayerNorm's 1e-5 under the variance: a relative change below 1e-5 / var_c(S) here
    var = s.var(1, correction=0).min().item()
    assert torch.allclose(a, b, rtol=1e-5 / var, atol=0)
    exact = dtc.ops.tfd_loss(s, t, m, norm="pearson")  # standardised per channel: a per-channel scale also cancels
    assert torch.allclose(exact, dtc.ops.tfd_loss(s * 3.0, t, m, norm="pearson"), rtol=1e-5 / s.var((2, 3)).min().item())


def test_o_t1_binary_mask_alpha_bg_zero_is_masked_mse():
    s, t, _ = _case(seed=6)
    m = (torch.rand(2, 1, 6, 7, generator=torch.Generator().manual_seed(2)) > 0.5).double()
    got = dtc.ops.tfd_loss(s, t, m, alpha_bg=0.0, norm="none")
    per_pixel = ((s - t) ** 2).mean(1, keepdim=True)
    want = torch.stack([(per_pixel[b] * m[b]).sum() / m[b].sum() for b in range(2)]).mean()
    assert torch.allclose(got, want, rtol=1e-12)


def test_o_t2_no_foreground_excluded_without_nan():
    s, t, m = _case(seed=7, empty_fg=True)
    x = s.clone().requires_grad_(True)
    loss = dtc.ops.tfd_loss(x, t, m)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    only_bg = dtc.ops.tfd_loss(s[:1], t[:1], m[:1], alpha_fg=1.0, alpha_bg=0.0)
    assert only_bg.item() == 0.0
    zero = torch.zeros_like(m)
    assert torch.isfinite(dtc.ops.tfd_loss(s, t, zero))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_o_t2_half_inputs_match_float32(dtype):
    s, t, m = _case(B=2, C=8, H=6, W=6, seed=8, dtype=torch.float32)
    s_h, t_h = s.to(dtype), t.to(dtype)
    full = dtc.ops.tfd_loss(s_h.float(), t_h.float(), m)  # the same rounded values in float32
    half = dtc.ops.tfd_loss(s_h, t_h, m)
    assert half.dtype == torch.float32
    assert torch.allclose(half, full, rtol=1e-3)
    x = s_h.clone().requires_grad_(True)
    dtc.ops.tfd_loss(x, t_h, m).backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()


def test_teacher_and_mask_get_no_gradient():
    s, t, m = _case(seed=9)
    s.requires_grad_(True)
    t.requires_grad_(True)
    torch.ops.dtc.tfd_loss(s, t, m, 1.0, 0.5, "pixel_ln", False).backward()
    assert s.grad is not None and t.grad is None


def test_opcheck():
    s, t, m = _case(seed=10)
    for norm in NORMS:
        torch.library.opcheck(torch.ops.dtc.tfd_loss.default, (s.clone().requires_grad_(True), t, m, 1.0, 0.5, norm, True))


def test_bad_input():
    s, t, m = _case(seed=11)
    with pytest.raises(ValueError, match="student must be"):
        torch.ops.dtc.tfd_loss(s[0], t[0], m[0], 1.0, 0.5, "pixel_ln", False)
    with pytest.raises(ValueError, match="teacher must have the student's shape"):
        torch.ops.dtc.tfd_loss(s, t[:, :3], m, 1.0, 0.5, "pixel_ln", False)
    with pytest.raises(TypeError, match="one dtype"):
        torch.ops.dtc.tfd_loss(s, t.float(), m, 1.0, 0.5, "pixel_ln", False)
    with pytest.raises(ValueError, match=r"mask must be \[B, 1, H, W\]"):
        torch.ops.dtc.tfd_loss(s, t, m[:, :, :3], 1.0, 0.5, "pixel_ln", False)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        torch.ops.dtc.tfd_loss(s, t, m * 255, 1.0, 0.5, "pixel_ln", False)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        torch.ops.dtc.tfd_loss(s, t, torch.full_like(m, float("nan")), 1.0, 0.5, "pixel_ln", False)
    with pytest.raises(ValueError, match="norm must be"):
        torch.ops.dtc.tfd_loss(s, t, m, 1.0, 0.5, "layer", False)
    with pytest.raises(ValueError, match="alpha_fg and alpha_bg"):
        torch.ops.dtc.tfd_loss(s, t, m, -1.0, 0.5, "pixel_ln", False)
    with pytest.raises(ValueError, match="must not be empty"):
        torch.ops.dtc.tfd_loss(s[:, :0], t[:, :0], m, 1.0, 0.5, "pixel_ln", False)


@pytest.mark.cuda
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("attn", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_cuda_matches_reference(norm, attn, dtype):
    s, t, m = _case(B=3, C=24, H=9, W=11, seed=12, dtype=dtype)
    x_cpu = s.clone().requires_grad_(True)
    x_gpu = s.cuda().requires_grad_(True)
    a = dtc.ops.tfd_loss(x_cpu, t, m, norm=norm, attn_weight=attn)
    b = dtc.ops.tfd_loss(x_gpu, t.cuda(), m.cuda(), norm=norm, attn_weight=attn)
    want = reference.tfd_loss(s.double(), t.double(), m.double(), norm=norm, attn_weight=attn)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert torch.allclose(b.cpu().double(), want, rtol=tol, atol=tol)
    assert torch.allclose(b.cpu(), a, rtol=tol, atol=tol)
    a.backward()
    b.backward()
    gtol = 1e-9 if dtype == torch.float64 else 2e-3
    assert torch.allclose(x_gpu.grad.cpu().double(), x_cpu.grad.double(), rtol=gtol, atol=gtol)


def test_torch_compile_matches_eager():
    s, t, m = _case(seed=13, dtype=torch.float32)
    compiled = torch.compile(lambda x: torch.ops.dtc.tfd_loss(x, t, m, 1.0, 0.5, "pixel_ln", False),
                             backend="aot_eager", fullgraph=True)
    x1 = s.clone().requires_grad_(True)
    x2 = s.clone().requires_grad_(True)
    a = compiled(x1)
    b = torch.ops.dtc.tfd_loss(x2, t, m, 1.0, 0.5, "pixel_ln", False)
    assert torch.equal(a, b)
    a.backward()
    b.backward()
    assert torch.equal(x1.grad, x2.grad)
