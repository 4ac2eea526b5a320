"""The fused loss ops: gradcheck, opcheck, torch.compile, determinism, bad input (API and raw ops)."""
from __future__ import annotations

import pytest
import torch

from dtc import losses, ops
from .cases import make_case

SCALE = [1 / 0.229, 1 / 0.224, 1 / 0.225]


def smooth_case(T=3, seed=0, local_size=None):
    d = make_case("random", B=2, T=T, H=6, W=7, Cl=3, Cg=4, global_size=(2, 3), local_size=local_size, seed=seed)
    # Keep sample points off integer coordinates, where bilinear interpolation has kinks.
    d["flows"] = d["flows"] + 0.123
    return d


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("normalise", [False, True])
@pytest.mark.parametrize("occlusion", [False, True])
def test_gradcheck_temporal_consistency(soft, normalise, occlusion):
    d = smooth_case()
    z = d["z"].requires_grad_(True)
    back = d["flows_bw"] if occlusion else None
    fn = lambda z: ops.temporal_consistency(z, d["images"], d["flows"], back, SCALE, 1.0, "abs_sum", soft, normalise)[0]
    assert torch.autograd.gradcheck(fn, (z,))


@pytest.mark.parametrize("local_size,rescale", [(None, True), ((3, 4), True), ((3, 4), False)])
def test_gradcheck_prototypes(local_size, rescale):
    d = smooth_case(local_size=local_size)
    p = torch.sigmoid(d["z"])
    thr = torch.tensor([0.5, 0.45], dtype=torch.float64)
    loc = d["loc"].requires_grad_(True)
    glob = d["glob"].requires_grad_(True)
    for hard in (False, True):
        assert torch.autograd.gradcheck(lambda f: ops.local_prototypes(p, f, d["flows"], thr, rescale, hard)[:2], (loc,))
    assert torch.autograd.gradcheck(lambda f: ops.global_prototypes(p, f, thr)[:2], (glob,))
    # One prototype of each pair alone: autograd hands the backward the other's gradient undefined.
    for k in (0, 1):
        assert torch.autograd.gradcheck(lambda f: ops.local_prototypes(p, f, d["flows"], thr, rescale, False)[k], (loc,))
        assert torch.autograd.gradcheck(lambda f: ops.global_prototypes(p, f, thr)[k], (glob,))
    # Through the whole prototype loss (cosine + cross weighting) too.
    assert torch.autograd.gradcheck(
        lambda a, b: losses.prototype_alignment(p, a, b, d["flows"], threshold="percentile70")[0], (loc, glob),
        fast_mode=True)


def test_gradcheck_seg_and_kd():
    d = smooth_case()
    z = d["z"].requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: ops.bce_dice(z, d["y"], 1e-5)[0], (z,))
    assert torch.autograd.gradcheck(lambda z: ops.kd_loss(z, d["zt"], 4.0), (z,))


def test_gradcheck_objective_both_presets():
    d = smooth_case()
    for preset in ("dtc", "reference"):
        # The logits reach L_proto only through thresholds, masks and the detached w_fg (no gradient by
        # definition), so they are checked with the proto term off and the features with it on.
        objective = losses.DTCObjective(preset, warped_target="soft", terms=("seg", "kd", "con"))
        z = d["z"].clone().requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda z: objective(z, None, None, d["zt"], d["y"], d["images"], d["flows"])[0], (z,), fast_mode=True)
        objective = losses.DTCObjective(preset)
        loc, glob = d["loc"].clone().requires_grad_(True), d["glob"].clone().requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda l, g: objective(d["z"], l, g, d["zt"], d["y"], d["images"], d["flows"])[0], (loc, glob), fast_mode=True)


def test_opcheck_every_op():
    d = make_case("random", B=2, T=3, H=6, W=7, Cl=3, Cg=4, global_size=(2, 3), dtype=torch.float32)
    z = d["z"].requires_grad_(True)
    loc = d["loc"].requires_grad_(True)
    glob = d["glob"].requires_grad_(True)
    p = torch.sigmoid(d["z"].detach())
    thr = torch.tensor([0.5, 0.4])
    oc = torch.library.opcheck
    oc(torch.ops.dtc.temporal_consistency.default,
       (z, d["images"], d["flows"], d["flows_bw"], SCALE, 1.0, "abs_sum", True, False, True))
    oc(torch.ops.dtc.temporal_consistency.default, (z, d["images"], d["flows"], None, [], 13.3, "mean_abs", False, True, False))
    loss, mass, _, _ = torch.ops.dtc.temporal_consistency(z.detach(), d["images"], d["flows"], None, [], 13.3,
                                                          "mean_abs", True, False, False)
    oc(torch.ops.dtc.temporal_consistency_backward.default,
       (torch.ones_like(loss), mass, z.detach(), d["images"], d["flows"], None, [], 13.3, "mean_abs", True, False))
    for hard in (False, True):
        oc(torch.ops.dtc.local_prototypes.default, (p, loc, d["flows"], thr, True, hard))
        v_prev, v_cur, m = torch.ops.dtc.local_prototypes(p, loc.detach(), d["flows"], thr, True, hard)
        oc(torch.ops.dtc.local_prototypes_backward.default,
           (torch.randn_like(v_prev), torch.randn_like(v_cur), m, p, loc.detach(), d["flows"], thr, True, hard))
    oc(torch.ops.dtc.global_prototypes.default, (p, glob, thr))
    u_prev, u_cur, mp, mc = torch.ops.dtc.global_prototypes(p, glob.detach(), thr)
    oc(torch.ops.dtc.global_prototypes_backward.default,
       (torch.randn_like(u_prev), torch.randn_like(u_cur), mp, mc, p, glob.detach(), thr))
    oc(torch.ops.dtc.foreground_threshold.default, (p, 0.7))
    oc(torch.ops.dtc.bce_dice.default, (z, d["y"], 1e-5))
    _, stats = torch.ops.dtc.bce_dice(z.detach(), d["y"], 1e-5)
    oc(torch.ops.dtc.bce_dice_backward.default, (torch.tensor(1.0), stats, z.detach(), d["y"], 1e-5))
    oc(torch.ops.dtc.kd_loss.default, (z, d["zt"], 4.0))
    oc(torch.ops.dtc.kd_loss_backward.default, (torch.tensor(1.0), z.detach(), d["zt"], 4.0))


def test_torch_compile_objective_fullgraph():
    d = make_case("random", B=2, T=3, H=8, W=9, dtype=torch.float32)
    objective = losses.DTCObjective("reference", check_inputs=False)

    def step(z, loc, glob):
        return objective(z, loc, glob, d["zt"], d["y"], d["images"], d["flows"])[0]

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    args = [d[k].clone().requires_grad_(True) for k in ("z", "loc", "glob")]
    expected = step(*args)
    got = compiled(*args)
    torch.testing.assert_close(got, expected)
    for a, b in zip(torch.autograd.grad(got, args), torch.autograd.grad(expected, args)):
        torch.testing.assert_close(a, b)


def test_cpu_backward_is_deterministic():
    d = make_case("random", B=2, T=4, H=16, W=18, Cl=20, dtype=torch.float32)
    objective = losses.DTCObjective("dtc", warped_target="soft")
    runs = []
    for _ in range(2):
        args = [d[k].clone().requires_grad_(True) for k in ("z", "loc", "glob")]
        total, _ = objective(args[0], args[1], args[2], d["zt"], d["y"], d["images"], d["flows"])
        runs.append(torch.autograd.grad(total, args))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_zero_weights_skip_terms():
    d = make_case("random")
    objective = losses.DTCObjective("dtc", weights=(3, 0, 0, 0))
    # Only the segmentation inputs are needed: the other terms are not computed.
    total, terms = objective(d["z"], None, None, None, d["y"], None, None)
    assert objective.active_terms == ("seg",)
    assert terms["kd"] == 0 and terms["con"] == 0 and terms["proto"] == 0
    torch.testing.assert_close(total, 3 * terms["seg"])
    single = losses.DTCObjective("dtc", ablation="single-scale-proto")
    _, terms = single(d["z"], d["loc"], None, d["zt"], d["y"], d["images"], d["flows"])
    assert terms["glob"] == 0 and terms["proto"] == terms["loc"]
    with pytest.raises(ValueError, match="teacher_logits is required"):
        losses.DTCObjective("dtc", terms=("seg", "kd"))(d["z"], None, None, None, d["y"], None, None)


def test_config_presets_and_unknown_keys():
    ref = losses.DTCLossConfig.from_preset("reference")
    assert (ref.alpha, ref.confidence, ref.fg_threshold, ref.rescale_flow, ref.normalise_images) == (
        1.0, "abs_sum", "percentile70", False, True)
    assert (ref.pseudo_source, ref.warped_target) == ("student", "hard")
    dtc = losses.DTCLossConfig.from_preset("dtc")
    assert (dtc.alpha, dtc.confidence, dtc.fg_threshold, dtc.rescale_flow) == (13.3, "mean_abs", 0.5, True)
    assert (dtc.pseudo_source, dtc.warped_target) == ("teacher", "soft")
    assert dtc.weights == (3.0, 1.0, 2.0, 0.1) and dtc.tau == 4.0
    with pytest.raises(ValueError, match=r"unknown keys \['bogus', 'wieghts'\]"):
        losses.DTCObjective("dtc", bogus=1, wieghts=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="preset must be one of"):
        losses.DTCLossConfig.from_preset("paper")
    with pytest.raises(ValueError, match="warped_target"):
        losses.DTCLossConfig.from_preset("dtc", warped_target="fuzzy")
    with pytest.raises(ValueError, match="fg_threshold"):
        losses.DTCLossConfig.from_preset("dtc", fg_threshold=1.5)


class _Net(torch.nn.Module):
    def __init__(self, tuple_out):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(1)
        self.tuple_out = tuple_out

    def forward(self, x):
        z = self.bn(self.conv(x))
        return (z, x) if self.tuple_out else z


@pytest.mark.parametrize("tuple_out", [False, True])
def test_flip_pseudo_labels(tuple_out):
    torch.manual_seed(0)
    net = _Net(tuple_out).train()
    x = torch.rand(2, 3, 8, 10)
    flip = losses.flip_pseudo_labels(net, x, "flip")
    assert net.training and not flip.requires_grad
    net.eval()
    plain = torch.sigmoid(net.conv(x))  # eval-mode BN with fresh stats is the identity
    z_flipped = net.bn(net.conv(x.flip(-1)))
    torch.testing.assert_close(flip, torch.sigmoid(z_flipped).flip(-1))
    net.train()
    mean = losses.flip_pseudo_labels(net, x, "mean")
    torch.testing.assert_close(mean, 0.5 * (flip + plain), rtol=1e-6, atol=1e-6)
    assert net.training
    with pytest.raises(ValueError, match="mode must be 'flip' or 'mean'"):
        losses.flip_pseudo_labels(net, x, "avg")


def test_pseudo_labels_restore_mode_on_error():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    net = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        losses.flip_pseudo_labels(net, torch.rand(1, 3, 4, 4))
    assert net.training


# ---------------------------------------------------------------- bad input
def _good():
    return make_case("random", B=2, T=3, H=6, W=7, dtype=torch.float32)


def test_bad_input_temporal_consistency_api_and_raw_op():
    d = _good()
    z, im, fl = d["z"], d["images"], d["flows"]
    cases = [
        ((z[:, :1], im[:, :1], fl[:, :1]), ValueError, r"T >= 2"),
        ((z, im, fl[..., :3, :]), ValueError, r"flows must have logits's spatial size"),
        ((z, im, fl.double()), TypeError, r"flows must have logits's dtype"),
        ((z, im[:1], fl), ValueError, r"images must have logits's \[B, T\]"),
        ((z.squeeze(2), im, fl), ValueError, r"logits must be a window batch"),
        ((z, im, fl[:, :, :1]), ValueError, r"flows must have 2 channel"),
    ]
    for (a, b, c), error, pattern in cases:
        with pytest.raises(error, match=pattern):
            losses.temporal_consistency(a, b, c)
        with pytest.raises(error, match=pattern):
            torch.ops.dtc.temporal_consistency(a, b, c, None, [], 1.0, "abs_sum", False, False, False)
    with pytest.raises(ValueError, match="confidence must be 'abs_sum' or 'mean_abs'"):
        torch.ops.dtc.temporal_consistency(z, im, fl, None, [], 1.0, "sum", False, False, False)
    with pytest.raises(ValueError, match="channel_scale must"):
        torch.ops.dtc.temporal_consistency(z, im, fl, None, [1.0, 2.0], 1.0, "abs_sum", False, False, False)
    with pytest.raises(TypeError, match="float32 or float64"):
        torch.ops.dtc.temporal_consistency(z.half(), im.half(), fl.half(), None, [], 1.0, "abs_sum", False, False, False)


def test_bad_input_prototypes_and_probabilities():
    d = _good()
    p = torch.sigmoid(d["z"])
    thr = torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match=r"probs must hold probabilities in \[0, 1\]"):
        losses.prototype_alignment(d["z"], d["loc"], d["glob"], d["flows"])
    with pytest.raises(ValueError, match=r"probs must hold probabilities in \[0, 1\]"):
        torch.ops.dtc.global_prototypes(d["z"], d["glob"], thr)
    with pytest.raises(ValueError, match=r"threshold must have shape \[T-1\] = \[2\]"):
        torch.ops.dtc.local_prototypes(p, d["loc"], d["flows"], torch.tensor([0.5]), True)
    with pytest.raises(ValueError, match=r"features must have probs's \[B, T\]"):
        torch.ops.dtc.local_prototypes(p, d["loc"][:, :2], d["flows"], thr, True)
    with pytest.raises(ValueError, match=r"flows must have probs's spatial size"):
        torch.ops.dtc.local_prototypes(p, d["loc"], d["flows"][..., :4], thr, True)
    with pytest.raises(ValueError, match=r"T >= 2"):
        losses.prototype_alignment(p[:, :1], d["loc"][:, :1], d["glob"][:, :1], d["flows"][:, :1])
    with pytest.raises(ValueError, match=r"target must hold probabilities in \[0, 1\]"):
        losses.bce_dice(d["z"], d["y"] * 2)
    with pytest.raises(ValueError, match=r"target must hold probabilities in \[0, 1\]"):
        torch.ops.dtc.bce_dice(d["z"], d["y"] - 1, 1e-5)
    with pytest.raises(ValueError, match=r"target must have logits's shape"):
        torch.ops.dtc.bce_dice(d["z"], d["y"][:1], 1e-5)
    with pytest.raises(TypeError, match=r"teacher_logits must have student_logits's dtype"):
        losses.kd_loss(d["z"], d["zt"].double())
    with pytest.raises(ValueError, match=r"tau must be > 0"):
        torch.ops.dtc.kd_loss(d["z"], d["zt"], 0.0)
    with pytest.raises(ValueError, match=r"pseudo_labels must have student_logits's shape"):
        losses.DTCObjective()(d["z"], d["loc"], d["glob"], d["zt"], d["y"][:, :2], d["images"], d["flows"])


def test_objective_accepts_half_precision_network_outputs():
    d = make_case("random", dtype=torch.float32)
    z = d["z"].bfloat16().requires_grad_(True)
    total, _ = losses.DTCObjective("dtc")(z, d["loc"].bfloat16(), d["glob"], d["zt"], d["y"], d["images"], d["flows"])
    assert total.dtype == torch.float32
    (g,) = torch.autograd.grad(total, z)
    assert g.dtype == torch.bfloat16 and torch.isfinite(g.float()).all()


def test_losses_import_does_not_load_the_core():
    import subprocess
    import sys

    code = "import sys, dtc.losses; print('dtc._C' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_occlusion_test_keeps_every_pixel_of_an_exact_rigid_motion(impl, dtype):
    """Frame t is frame t-1 rotated by 8 degrees and shifted by 7 px; with the exact flow and its exact
    inverse nothing is occluded where frame t's point comes from inside frame t-1 (the test used to sample
    the reversed flow at p + F(p) and flagged 86 % of those pixels)."""
    import math

    H, W, angle = 64, 96, math.radians(8.0)
    cx, cy, sx, sy = 47.5, 31.5, 6.0, -4.0
    cos, sin = math.cos(angle), math.sin(angle)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    # frame t's pixel p came from q = R^-1 (p - c - s) + c; frame t-1's pixel q goes to R (q - c) + c + s
    dx, dy = xs - cx - sx, ys - cy - sy
    qx, qy = cos * dx + sin * dy + cx, -sin * dx + cos * dy + cy
    px, py = cos * (xs - cx) - sin * (ys - cy) + cx + sx, sin * (xs - cx) + cos * (ys - cy) + cy + sy
    flows = torch.zeros(1, 2, 2, H, W, dtype=dtype)
    back = torch.zeros_like(flows)
    flows[0, 1] = torch.stack([xs - qx, ys - qy]).to(dtype)        # F(p) = p - q
    back[0, 1] = torch.stack([xs - px, ys - py]).to(dtype)         # F_bw(q) = q - p
    images = torch.full((1, 2, 3, H, W), 0.5, dtype=dtype)
    logits = torch.zeros(1, 2, 1, H, W, dtype=dtype)
    _, maps = losses.temporal_consistency(logits, images, flows, flows_backward=back, alpha=0.0, return_maps=True,
                                          impl=impl)
    inside = (qx > 0) & (qx < W - 1) & (qy > 0) & (qy < H - 1)
    assert inside.float().mean() > 0.7
    kept = maps["confidence"][0, 0, 0] > 0.5
    assert bool(kept[inside].all()), f"{float((~kept[inside]).float().mean()):.1%} of in-view pixels flagged"
    # and a flow that disagrees with its reverse by 3 px is flagged
    _, maps = losses.temporal_consistency(logits, images, flows, flows_backward=back + 3.0, alpha=0.0,
                                          return_maps=True, impl=impl)
    assert not bool((maps["confidence"][0, 0, 0] > 0.5)[inside].any())
