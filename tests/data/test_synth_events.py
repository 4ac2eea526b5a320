"""Transient acoustic events and the freehand sweep: each changes the rendered frames where and when it
says it does, and nothing else; masks and flow stay exact."""
from __future__ import annotations

import numpy as np
import pytest

from dtc.data.synth import EVENT_KINDS, SynthConfig, TRUSScene, simulate_video

from .test_synth import backward_warp, iou

SMALL = dict(height=128, width=224, frames=16)
APPEARANCE = [k for k in EVENT_KINDS if k != "jerk"]


def only(kind: str, rate: float = 12.0, **extra) -> SynthConfig:
    return SynthConfig(**SMALL, **{f"{kind}_rate": rate}, **extra)


@pytest.fixture(scope="module")
def calm():
    return {view: simulate_video(SynthConfig(**SMALL), seed=11, view=view) for view in ("axial", "sagittal")}


@pytest.mark.parametrize("view", ["axial", "sagittal"])
@pytest.mark.parametrize("kind", APPEARANCE)
def test_appearance_events_change_only_their_frames_and_pixels(kind, view, calm):
    video = simulate_video(only(kind), seed=11, view=view)
    base = calm[view]
    bit = 1 << EVENT_KINDS.index(kind)
    # Masks and flow are those of the calm video, bit for bit: the events only change what is seen.
    np.testing.assert_array_equal(video.masks, base.masks)
    np.testing.assert_array_equal(video.flows, base.flows)
    assert (video.events & ~np.uint8(bit)).max() == 0, "only the switched-on kind is recorded"
    touched = video.event_frames
    assert touched.any() and not touched.all(), "12 events per 100 frames leave calm frames among 16"
    # Calm frames are rendered exactly as without events.
    np.testing.assert_array_equal(video.frames[~touched], base.frames[~touched])
    diff = np.abs(video.frames - base.frames)
    footprint = video.events.astype(bool)
    for t in np.flatnonzero(touched):
        inside = diff[t][footprint[t]].mean()
        assert inside > 0.01, f"{kind} frame {t}: the recorded pixels barely changed ({inside:.4f})"
    # The PSF and scan conversion spread an event by a few pixels at most beyond its footprint.
    far = ~np.stack([_dilate(f, 6) for f in footprint])
    assert diff[far].max() == 0.0


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    import cv2

    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)).astype(bool)


@pytest.mark.parametrize("kind,sign", [("gas_shadow", -1), ("contact", -1), ("interference", 1), ("reverberation", 1)])
def test_each_event_darkens_or_brightens_as_its_physics_says(kind, sign, calm):
    video = simulate_video(only(kind, rate=40.0), seed=11, view="axial")
    base = calm["axial"]
    fp = video.events.astype(bool)
    change = float((video.frames[fp] - base.frames[fp]).mean())
    assert sign * change > 0.03, f"{kind}: mean change {change:+.3f} in its footprint"


def test_gain_events_move_brightness_by_their_decibels(calm):
    video = simulate_video(only("gain", rate=40.0), seed=11, view="axial")
    scene = TRUSScene(only("gain", rate=40.0), 11, "axial")
    base = calm["axial"]
    for ev in scene.events:
        t = ev["start"]
        if len(scene.active_events(t)) != 1:
            continue
        fp = video.events[t].astype(bool)
        change = float((video.frames[t][fp] - base.frames[t][fp]).mean())
        assert np.sign(change) == np.sign(ev["db"]) and abs(change) > 0.01, (ev, change)


def test_a_probe_jerk_moves_the_anatomy_and_the_flow_still_explains_the_masks():
    cfg = only("jerk", rate=15.0, jerk_strength=1.5)
    video = simulate_video(cfg, seed=3, view="axial")
    calm = simulate_video(SynthConfig(**SMALL), seed=3, view="axial")
    jumps = [ev["start"] for ev in video.meta["events"] if ev["kind"] == "jerk" and ev["start"] > 0]
    assert jumps, "this seed draws at least one jerk after frame 0"
    t = jumps[0]
    assert video.event_frames[t] and video.events[t].astype(bool).sum() == video.fov.sum()
    assert not np.array_equal(video.masks[t], calm.masks[t]), "the anatomy moved with the probe"
    # The jump is in the ground-truth flow: the warped previous mask matches the new one.
    region = video.fov & np.roll(video.fov, 8, 0) & np.roll(video.fov, -8, 0)
    warped = backward_warp(video.masks[t - 1].astype(np.float64), video.flows[t]) > 0.5
    assert iou(warped & region, video.masks[t].astype(bool) & region) >= 0.97
    assert iou(video.masks[t - 1] & region, video.masks[t] & region) < iou(warped & region, video.masks[t] & region)


def test_sweep_speed_sets_the_gland_speed_in_pixels_per_frame():
    def gland_speed(cfg):
        video = simulate_video(cfg, seed=5, view="axial")
        speeds = [np.hypot(*video.flows[t])[video.masks[t].astype(bool)].mean() for t in range(1, cfg.frames)]
        return float(np.median(speeds))

    size = dict(height=256, width=448, frames=24)
    held, swept = gland_speed(SynthConfig(**size)), gland_speed(SynthConfig(**size, sweep_speed=2.5))
    # A probe held still moves the gland a fraction of a pixel per frame; freehand sweeping moves it
    # by pixels per frame at 256x448.
    assert held < 0.5 and 1.0 < swept < 3.5, (held, swept)


def test_events_are_deterministic_and_order_independent():
    cfg = SynthConfig(**SMALL, **{f"{k}_rate": 10.0 for k in EVENT_KINDS})
    a, b = simulate_video(cfg, seed=2), simulate_video(cfg, seed=2)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.events, b.events)
    scene = TRUSScene(cfg, 2, "axial")
    t = int(np.flatnonzero(a.event_frames)[-1])
    scene.render(0)
    np.testing.assert_array_equal(scene.render(t)[0], a.frames[t])


@pytest.mark.parametrize("bad", [dict(gain_rate=-1.0), dict(jerk_strength=float("nan")), dict(sweep_speed="fast"),
                                 dict(contact_rate=True)])
def test_bad_event_knobs_are_refused_by_name(bad):
    name = next(iter(bad))
    with pytest.raises((TypeError, ValueError), match=name):
        SynthConfig(**bad)
