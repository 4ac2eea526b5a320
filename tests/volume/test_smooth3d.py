"""The 3-D pseudo-label smoother: the Eigen PCG solve, its Adam counterpart (oracle O-X2), bad input."""
from __future__ import annotations

import pytest
import torch

import dtc.ops  # noqa: F401  (loads torch.ops.dtc)
from dtc.volume import smooth3d, smoothing_energy


def _synthetic_pseudo(D=16, H=32, W=32, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, n, dtype=dtype) for n in (D, H, W)), indexing="ij")
    blob = torch.sigmoid(8 * (0.6 - (x**2 + (y / 0.8) ** 2 + (z / 1.2) ** 2).sqrt()))
    # TTA means are spatially correlated: smoothed noise, not white noise
    noise = torch.nn.functional.avg_pool3d(torch.randn(1, 1, D, H, W, generator=g, dtype=dtype), 3, 1, 1,
                                           count_include_pad=False)[0, 0]
    noisy = (blob + 0.3 * noise).clamp(0, 1)
    noisy = torch.where(noisy < 0.1, torch.zeros_like(noisy), noisy)  # the cleaning step
    sigma = 0.5 * torch.rand(D, H, W, generator=g, dtype=dtype)
    return noisy, sigma


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pcg_and_adam_agree_and_pcg_converges(seed):
    """O-X2: PCG vs 60 Adam steps (lr 0.01) within 1e-2; PCG residual <= 1e-6 relative; output in [0, 1]."""
    target, sigma = _synthetic_pseudo(seed=seed)
    pcg, info = smooth3d(target, sigma, solver="pcg", return_info=True)
    adam = smooth3d(target, sigma, solver="adam")
    assert info["residual"][0] <= 1e-6 and info["iterations"][0] < 200
    assert (pcg - adam).abs().max().item() <= 1e-2
    for out in (pcg, adam):
        assert out.min() >= 0 and out.max() <= 1
    # the smoother does something: it is not the identity
    assert (pcg - target).abs().max().item() > 0.05


def test_pcg_is_the_exact_minimiser_of_the_energy():
    """Against a dense solve of the energy's own Hessian (autograd), not the derived linear system."""
    target, sigma = _synthetic_pseudo(3, 4, 5, seed=3)
    weight = (1 - sigma).clamp(0, 1)
    for lam_z in (100.0, 10.0):
        energy = lambda p: smoothing_energy(p.reshape(target.shape), target, weight, 1000.0, 100.0, lam_z)
        zero = torch.zeros(target.numel(), dtype=torch.float64)
        hess = torch.autograd.functional.hessian(energy, zero)
        grad0 = torch.autograd.functional.jacobian(energy, zero)
        exact = torch.linalg.solve(hess, -grad0).reshape(target.shape)
        p, info = torch.ops.dtc.smooth3d_pcg(target, weight, lam_z / 1000.0, 0.1, 1e-12, 500)
        assert torch.allclose(p, exact, atol=1e-9), (p - exact).abs().max()
        assert info[1].item() <= 1e-10


def test_chunks_are_solved_independently_and_float32_matches():
    target, sigma = _synthetic_pseudo(8, 10, 12, seed=4)
    chunked = smooth3d(target, sigma, chunk=3)
    for z0 in (0, 3, 6):
        alone = smooth3d(target[z0:z0 + 3], sigma[z0:z0 + 3])
        assert torch.allclose(chunked[z0:z0 + 3], alone, atol=1e-12)
    whole32 = smooth3d(target.float(), sigma.float())
    assert whole32.dtype == torch.float32
    assert torch.allclose(whole32.double(), smooth3d(target, sigma), atol=1e-5)


def test_single_slice_and_flat_volumes():
    flat = torch.full((1, 6, 7), 0.4, dtype=torch.float64)
    assert torch.allclose(smooth3d(flat), flat)  # a constant volume is already the minimiser


def test_opcheck():
    target, sigma = _synthetic_pseudo(4, 5, 6, seed=5)
    torch.library.opcheck(torch.ops.dtc.smooth3d_pcg.default, (target, 1 - sigma, 0.1, 0.1, 1e-6, 200),
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_input_gets_clear_errors():
    t = torch.rand(4, 5, 6, dtype=torch.float64)
    op = torch.ops.dtc.smooth3d_pcg
    with pytest.raises(ValueError, match="target must be a 3-D volume"):
        op(t[0], t[0], 0.1, 0.1, 1e-6, 10)
    with pytest.raises(ValueError, match="weight must have the target's shape"):
        op(t, t[:2], 0.1, 0.1, 1e-6, 10)
    with pytest.raises(TypeError, match="same dtype"):
        op(t, t.float(), 0.1, 0.1, 1e-6, 10)
    with pytest.raises(ValueError, match="weight must be finite and > 0"):
        op(t, torch.zeros_like(t), 0.1, 0.1, 1e-6, 10)
    bad = t.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="target has non-finite"):
        op(bad, torch.ones_like(t), 0.1, 0.1, 1e-6, 10)
    with pytest.raises(ValueError, match="kappa_z and kappa_xy"):
        op(t, torch.ones_like(t), -0.1, 0.1, 1e-6, 10)
    with pytest.raises(ValueError, match="target must be a 3-D tensor"):
        smooth3d(t[0])
    with pytest.raises(ValueError, match="solver must be one of"):
        smooth3d(t, solver="lbfgs")
    with pytest.raises(ValueError, match="sigma must be a tensor of the target's shape"):
        smooth3d(t, t[:1])
    with pytest.raises(ValueError, match="sigma must stay below 1"):
        smooth3d(t, torch.ones_like(t))
    with pytest.raises(ValueError, match="chunk must be None or a positive int"):
        smooth3d(t, chunk=0)
