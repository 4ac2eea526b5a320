"""Flow providers, presets, the occlusion helper and the pictures."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dtc.flow import (
    CachedFlow,
    FarnebackFlow,
    FlowProvider,
    GroundTruthFlow,
    OpenCVFlow,
    colour_wheel,
    farneback,
    flow_to_rgb,
    forward_backward_consistency,
    make_flow_provider,
    plot_flow_arrows,
    preprocess,
)


def window_batch(video, T=3, B=2):
    """A (B, T) batch of windows like the datasets return (frames repeated as RGB)."""
    frames = torch.from_numpy(video.frames)  # (F, H, W)
    starts = list(range(B))
    images = torch.stack([frames[s:s + T] for s in starts])[:, :, None].expand(-1, -1, 3, -1, -1).contiguous()
    flows = torch.stack([torch.from_numpy(video.flows[s:s + T]).clone() for s in starts])
    flows[:, 0] = 0
    batch = {"image": images, "flow": flows, "video_id": [f"vid{s}" for s in starts],
             "frame_index": torch.tensor([[s + t for t in range(T)] for s in starts])}
    return images, batch


def test_farneback_provider_layout_and_pairs(synth_videos):
    images, batch = window_batch(synth_videos[0])
    flows = FarnebackFlow()(images, batch)
    B, T, _, H, W = images.shape
    assert flows.shape == (B, T, 2, H, W) and flows.dtype == torch.float32
    assert torch.count_nonzero(flows[:, 0]) == 0
    for b in range(B):
        for t in range(1, T):
            expected = farneback(images[b, t - 1:t], images[b, t:t + 1])
            assert torch.equal(flows[b, t:t + 1], expected)


def test_backward_direction_is_closer_to_ground_truth(synth_videos):
    images, batch = window_batch(synth_videos[1])
    fov = torch.from_numpy(synth_videos[1].fov)
    gt = batch["flow"][:, 1:]

    def epe(flows):
        return (flows[:, 1:] - gt).norm(dim=2)[..., fov].mean().item()

    forward = epe(FarnebackFlow(direction="forward")(images, batch))
    backward = epe(FarnebackFlow(direction="backward")(images, batch))
    zero = gt.norm(dim=2)[..., fov].mean().item()
    assert backward < forward < zero


@pytest.mark.parametrize("preset", ["dtc", "reference"])
def test_opencv_provider_matches_the_op(synth_videos, preset):
    images, batch = window_batch(synth_videos[0], B=1)
    ours = FarnebackFlow(preset=preset)(images, batch)
    theirs = OpenCVFlow(preset=preset)(images, batch)
    assert (ours - theirs).norm(dim=2).mean() < 1e-4


def test_reference_preset_narrows_the_grey_levels(synth_videos):
    images, _ = window_batch(synth_videos[0], B=1)
    x = images[0]
    dtc_grey = preprocess(x, "dtc")
    ref = preprocess(x, "reference")
    assert ref.dtype == torch.uint8 and ref.shape == dtc_grey.shape
    torch.testing.assert_close(dtc_grey, x[:, :1])
    with pytest.raises(ValueError, match="preset must be one of"):
        preprocess(x, "fast")


def test_ground_truth_provider(synth_videos):
    images, batch = window_batch(synth_videos[0])
    assert torch.equal(GroundTruthFlow()(images, batch), batch["flow"])
    with pytest.raises(KeyError, match="no ground-truth flow"):
        GroundTruthFlow()(images, {k: v for k, v in batch.items() if k != "flow"})
    with pytest.raises(ValueError, match=r"batch\['flow'\] must have shape"):
        GroundTruthFlow()(images, {**batch, "flow": batch["flow"][:, :2]})


def test_ground_truth_backward_flow_inverts_a_rigid_motion_exactly():
    # frame t is frame t-1 rotated by 2 degrees about c and shifted by s: p = R (q - c) + c + s
    H, W, angle = 48, 64, np.deg2rad(2.0)
    c, shift = np.array([31.5, 23.5]), np.array([2.5, -1.5])
    R = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    p = np.stack([xs, ys], -1)
    earlier_point = (p - c - shift) @ np.linalg.inv(R).T + c          # q for each p of frame t
    forward = np.moveaxis(p - earlier_point, -1, 0)                   # F(p) = p - q
    later_point = (p - c) @ R.T + c + shift                           # p for each q of frame t-1
    expected = np.moveaxis(p - later_point, -1, 0)                    # B(q) = q - p
    flows = torch.zeros(1, 2, 2, H, W)
    flows[0, 1] = torch.from_numpy(forward).float()
    images = torch.rand(1, 2, 3, H, W)
    backward = GroundTruthFlow().backward_flows(images, {"flow": flows})
    assert torch.equal(backward[:, 0], torch.zeros_like(backward[:, 0]))
    # exact where frame t-1's point stays inside frame t (outside, the flow is read at the clamped border)
    inside = torch.from_numpy((later_point[..., 0] >= 1) & (later_point[..., 0] <= W - 2)
                              & (later_point[..., 1] >= 1) & (later_point[..., 1] <= H - 2))
    assert inside.float().mean() > 0.8
    error = (backward[0, 1].double() - torch.from_numpy(expected)).abs().amax(0)
    assert float(error[inside].max()) < 2e-3


def test_ground_truth_backward_flow_round_trips_on_simulated_video(synth_videos):
    from dtc.flow import sample_flow

    images, batch = window_batch(synth_videos[0])
    backward = GroundTruthFlow().backward_flows(images, batch)
    F = batch["flow"][:, 1:].flatten(0, 1)
    # following F back to frame t-1 and the inverse forward again returns to the start: F(p) + B(p - F(p)) = 0
    round_trip = F + sample_flow(backward[:, 1:].flatten(0, 1), -F)
    inner = round_trip[..., 4:-4, 4:-4]
    assert float(inner.abs().max()) < 0.02


class CountingProvider(FlowProvider):
    def __init__(self, inner):
        self.inner, self.calls, self.windows = inner, 0, 0

    def cache_key(self):
        return self.inner.cache_key()

    def __call__(self, images, batch):
        self.calls += 1
        self.windows += images.shape[0]
        return self.inner(images, batch)


def test_cached_flow_computes_once_and_reuses(synth_videos, tmp_path):
    images, batch = window_batch(synth_videos[0])
    counting = CountingProvider(FarnebackFlow())
    cached = CachedFlow(tmp_path, counting)
    first = cached(images, batch)
    second = cached(images, batch)
    assert counting.calls == 1 and counting.windows == 2
    assert torch.equal(first, second)
    assert torch.equal(first, FarnebackFlow()(images, batch))
    files = sorted(str(p.relative_to(p.parents[2])) for p in tmp_path.rglob("*") if p.is_file())
    # One file per (video, pair); no temporary files left behind.
    assert [f.split("/", 1)[1] for f in files] == ["vid0/0_1_256x448.npy", "vid0/1_2_256x448.npy",
                                                   "vid1/1_2_256x448.npy", "vid1/2_3_256x448.npy"]
    # A new window with one cached pair and one new pair is computed; cached windows are not.
    images2, batch2 = window_batch(synth_videos[0], B=2)
    batch2["video_id"] = ["vid0", "other"]
    cached(images2, batch2)
    assert counting.calls == 2 and counting.windows == 3


def test_cached_flow_separates_settings(synth_videos, tmp_path):
    images, batch = window_batch(synth_videos[0], B=1)
    a = CachedFlow(tmp_path, FarnebackFlow(winsize=15))(images, batch)
    b = CachedFlow(tmp_path, FarnebackFlow(winsize=9))(images, batch)
    assert not torch.equal(a, b)


def test_cached_flow_needs_ids(synth_videos, tmp_path):
    images, batch = window_batch(synth_videos[0], B=1)
    with pytest.raises(KeyError, match="video_id"):
        CachedFlow(tmp_path, FarnebackFlow())(images, {"frame_index": batch["frame_index"]})


def test_make_flow_provider(tmp_path):
    assert isinstance(make_flow_provider("gt"), GroundTruthFlow)
    fb = make_flow_provider("farneback", preset="reference", winsize=9)
    assert isinstance(fb, FarnebackFlow) and fb.preset == "reference" and fb.params["winsize"] == 9
    assert isinstance(make_flow_provider("opencv"), OpenCVFlow)
    cached = make_flow_provider("cached:farneback", root=tmp_path, direction="backward")
    assert isinstance(cached, CachedFlow) and cached.inner.direction == "backward"
    with pytest.raises(ValueError, match="unknown flow provider"):
        make_flow_provider("raft")
    with pytest.raises(ValueError, match="root="):
        make_flow_provider("cached:farneback")
    with pytest.raises(TypeError, match="unknown Farneback parameter"):
        make_flow_provider("farneback", window=15)
    with pytest.raises(ValueError, match="direction must be"):
        FarnebackFlow(direction="sideways")


def test_provider_rejects_bad_images():
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        FarnebackFlow()(torch.rand(2, 3, 64, 64), {})


def test_forward_backward_consistency():
    H, W = 40, 50
    fw = torch.zeros(1, 2, H, W)
    fw[:, 0] = 3.0
    bw = -fw
    mask, err = forward_backward_consistency(fw, bw, return_error=True)
    assert mask.shape == (1, 1, H, W) and mask.dtype == torch.bool
    assert torch.all(err < 1e-10)
    # Consistent everywhere except where p + F(p) leaves the image (the last 3 columns).
    assert mask[..., :W - 3].all() and not mask[..., W - 3:].any()
    # Following the same flow back doubles the displacement: |2F|² = 36 > 0.01·18 + 0.5.
    assert not forward_backward_consistency(fw, fw).any()
    # An occluding patch: the backward flow disagrees only there.
    bw_occ = bw.clone()
    bw_occ[..., 10:20, 20:30] = 0
    m = forward_backward_consistency(fw, bw_occ)[0, 0]
    assert not m[10:20, 17:27].any() and m[25:35, 5:15].all()
    with pytest.raises(ValueError, match="flow_bw must have shape"):
        forward_backward_consistency(fw, torch.zeros(1, 3, H, W))


def test_forward_backward_consistency_with_farneback(synth_videos):
    v = synth_videos[0]
    a, b = (torch.from_numpy(v.frames[i])[None, None] for i in (1, 2))
    mask = forward_backward_consistency(farneback(a, b), farneback(b, a))
    fov = torch.from_numpy(v.fov)
    assert mask[0, 0][fov].float().mean() > 0.9


def test_flow_to_rgb():
    flow = torch.zeros(2, 8, 8)
    assert (flow_to_rgb(flow) == 255).all()  # no motion is white
    flow[0] = 1.0  # +x is red at full saturation
    rgb = flow_to_rgb(flow)
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (255, 0, 0)
    flow[0], flow[1] = 0.0, -1.0  # up (−y) is three quarters round the wheel: blue-magenta
    assert rgb[0, 0].tolist() != flow_to_rgb(flow)[0, 0].tolist()
    half = torch.zeros(2, 1, 1)
    half[0] = 0.5
    assert tuple(flow_to_rgb(half, max_magnitude=1.0)[0, 0]) == (255, 128, 128)
    nan = torch.full((2, 1, 1), float("nan"))
    assert tuple(flow_to_rgb(nan)[0, 0]) == (0, 0, 0)
    assert colour_wheel().shape == (55, 3)
    with pytest.raises(ValueError, match=r"\(2, H, W\)"):
        flow_to_rgb(torch.zeros(3, 4, 4))


def test_plot_flow_arrows():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flow = torch.zeros(2, 32, 48)
    flow[0] = 2.0
    fig, ax = plt.subplots()
    q = plot_flow_arrows(ax, flow, torch.rand(1, 32, 48), step=8)
    assert q.U.shape == (24,) and np.allclose(q.U, 2.0) and np.allclose(q.V, 0.0)
    plt.close(fig)
