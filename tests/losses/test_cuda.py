"""CUDA twins: the same oracle and the CPU kernels as references (skipped without a GPU)."""
from __future__ import annotations

import pytest
import torch

from dtc import losses, ops
from . import oracle
from .cases import CASES, make_case

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("preset", ["dtc", "reference"])
@pytest.mark.parametrize("case", CASES)
def test_cuda_objective_matches_oracle(case, preset, dtype, rtol):
    d = make_case(case, dtype=dtype, seed=3, device="cuda")
    total, terms = losses.DTCObjective(preset)(d["z"], d["loc"], d["glob"], d["zt"], d["y"], d["images"], d["flows"])
    expected = oracle.total(*(d[k].double().cpu() for k in ("z", "loc", "glob", "zt", "y", "images", "flows")), preset)
    torch.testing.assert_close(total.double().cpu(), expected["total"], rtol=rtol, atol=rtol * 1e-2)
    for name in ("seg", "kd", "con", "proto", "loc", "glob"):
        torch.testing.assert_close(terms[name].double().cpu(), expected[name], rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.parametrize("soft", [False, True])
def test_cuda_gradients_match_cpu(soft):
    d = make_case("random", T=4, local_size=(6, 7), seed=4)
    objective = losses.DTCObjective("reference", warped_target="soft" if soft else "hard", occlusion_check=True)
    grads = []
    for device in ("cpu", "cuda"):
        x = {k: v.to(device) for k, v in d.items()}
        leaves = [x[k].clone().requires_grad_(True) for k in ("z", "loc", "glob")]
        total, _ = objective(leaves[0], leaves[1], leaves[2], x["zt"], x["y"], x["images"], x["flows"], x["flows_bw"])
        grads.append([g.cpu() for g in torch.autograd.grad(total, leaves)])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_cuda_gradcheck_and_opcheck():
    d = make_case("random", B=2, T=3, H=6, W=7, Cl=3, Cg=4, global_size=(2, 3), device="cuda")
    flows = d["flows"] + 0.123
    z = d["z"].requires_grad_(True)
    fn = lambda z: ops.temporal_consistency(z, d["images"], flows, None, [], 13.3, "mean_abs", True, False)[0]
    assert torch.autograd.gradcheck(fn, (z,), nondet_tol=1e-12)
    p = torch.sigmoid(d["z"].detach())
    thr = torch.tensor([0.5, 0.45], dtype=torch.float64, device="cuda")
    loc = d["loc"].requires_grad_(True)
    glob = d["glob"].requires_grad_(True)
    for hard in (False, True):
        assert torch.autograd.gradcheck(lambda f: ops.local_prototypes(p, f, flows, thr, True, hard)[:2], (loc,),
                                        nondet_tol=1e-12)
    assert torch.autograd.gradcheck(lambda f: ops.global_prototypes(p, f, thr)[:2], (glob,))
    assert torch.autograd.gradcheck(lambda z: ops.bce_dice(z, d["y"], 1e-5)[0], (z,))
    assert torch.autograd.gradcheck(lambda z: ops.kd_loss(z, d["zt"], 4.0), (z,))
    for hard in (False, True):
        torch.library.opcheck(torch.ops.dtc.local_prototypes.default,
                              (p.float(), loc.float(), flows.float(), thr.float(), True, hard))
    with pytest.raises(ValueError, match="same device|device"):
        torch.ops.dtc.kd_loss(d["z"].detach(), d["zt"].cpu(), 4.0)


@pytest.mark.parametrize("normalise", [False, True])
def test_cuda_large_frames_use_many_blocks_and_match_cpu(normalise):
    """H*W above 128 blocks of 256 threads and S above 64 blocks: the grid-stride loops and the per-block
    partial sums of the consistency and BCE-Dice reductions, the returned maps, both normalisations."""
    d = make_case("random", B=2, T=3, H=192, W=200, Cl=2, Cg=2, seed=5)
    outs = []
    for device in ("cpu", "cuda"):
        x = {k: v.to(device) for k, v in d.items()}
        z = x["z"].clone().requires_grad_(True)
        loss, mass, conf, target = ops.temporal_consistency(z, x["images"], x["flows"], x["flows_bw"], None, 13.3,
                                                            "mean_abs", True, normalise, True)
        seg = ops.bce_dice(z.flatten(0, 1), x["y"].flatten(0, 1))[0]
        (g,) = torch.autograd.grad(loss.sum() + seg, z)
        outs.append([t.detach().cpu() for t in (loss, mass, conf, target, seg, g)])
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_cuda_more_samples_and_pairs_than_a_grid_row_holds():
    """More than 65535 samples (BCE-Dice) and window pairs (consistency, prototypes): the unbounded
    index must live on grid x, whose limit is 2^31 - 1, not on y or z (65535)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(70000, 1, 2, 2, generator=g, dtype=torch.float64)
    y = torch.rand(70000, 1, 2, 2, generator=g, dtype=torch.float64)
    for a, b in zip(ops.bce_dice(z, y), ops.bce_dice(z.cuda(), y.cuda())):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-10, atol=1e-12)
    B = 33000  # B * (T - 1) = 66000 pairs
    w = torch.randn(B, 3, 1, 2, 2, generator=g, dtype=torch.float64)
    images = torch.rand(B, 3, 1, 2, 2, generator=g, dtype=torch.float64)
    flows = torch.zeros(B, 3, 2, 2, 2, dtype=torch.float64)
    for device in ("cpu", "cuda"):
        args = [t.to(device) for t in (w, images, flows)]
        out = ops.temporal_consistency(*args)[0].cpu()
        if device == "cpu":
            expected = out
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    p = torch.sigmoid(w)
    feats = torch.randn(B, 3, 2, 2, 2, generator=g, dtype=torch.float64)
    thr = torch.full((2,), 0.5, dtype=torch.float64)
    cpu = ops.local_prototypes(p, feats, flows, thr) + ops.global_prototypes(p, feats, thr)
    cuda = ops.local_prototypes(p.cuda(), feats.cuda(), flows.cuda(), thr.cuda()) + \
        ops.global_prototypes(p.cuda(), feats.cuda(), thr.cuda())
    for a, b in zip(cpu, cuda):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_cuda_reference_objective_matches_the_from_scratch_step_loss(impl):
    """The reference preset on the GPU against the independent NumPy step (order-statistic threshold,
    binarised warped target in the local mask), at a size where interpolation would differ."""
    from . import reference_step

    d = make_case("random", B=2, T=3, H=9, W=11, local_size=(5, 6), seed=21)
    x = {k: v.cuda() for k, v in d.items()}
    total, terms = losses.DTCObjective("reference", implementation=impl)(
        x["z"], x["loc"], x["glob"], x["zt"], x["y"], x["images"], x["flows"])
    expected = reference_step.step_loss(*(d[k].numpy() for k in ("z", "loc", "glob", "zt", "y", "images", "flows")))
    for name in ("seg", "kd", "con", "proto", "loc", "glob"):
        assert abs(terms[name].item() - expected[name]) < 1e-10, name
    assert abs(total.item() - expected["total"]) < 1e-10
