"""The simulator's fast paths keep its exactness and bitwise reproducibility.

The render loop multiplies interleaved (re, im) pairs by real factors through complex64 views, and
inverts the deformation by Newton's method on per-cell coefficient tables; these tests pin down
why that is safe: the complex products round exactly like the real ones whatever the buffers'
alignment, the inverse is accurate, and full-size renders are identical across fresh scenes.
"""
from __future__ import annotations

import numpy as np

from dtc.data.synth import SynthConfig, TRUSScene


def _misaligned(a: np.ndarray, offset_bytes: int) -> np.ndarray:
    """A copy of `a` whose data starts `offset_bytes` past a 64-byte boundary."""
    raw = np.empty(a.nbytes + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset_bytes
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def test_complex_view_products_round_like_real_products_at_any_alignment():
    rng = np.random.default_rng(0)
    pairs = rng.standard_normal((37, 53, 2)).astype(np.float32)  # odd sizes: SIMD bodies and tails
    factor = rng.uniform(0.1, 2.0, (37, 53)).astype(np.float32)
    expected = pairs * factor[..., None]
    for offset in (0, 4, 8, 12, 16, 24, 32, 40):
        p = _misaligned(pairs, offset - offset % 8)  # complex64 views need 8-byte alignment
        f = _misaligned(factor, offset)
        c = p.view(np.complex64)[..., 0]
        c *= f
        np.testing.assert_array_equal(p, expected, err_msg=f"offset {offset}")
        # scalar factor (the speckle mixing)
        s = np.float32(0.7316)
        q = p.view(np.complex64)[..., 0] * s
        np.testing.assert_array_equal(q.view(np.float32).reshape(p.shape), expected * s, err_msg=f"offset {offset}")


def test_newton_inverse_is_accurate_everywhere_in_view():
    cfg = SynthConfig(height=256, width=448, frames=40, motion=2.0)
    for view in ("axial", "sagittal"):
        scene = TRUSScene(cfg, 4, view)
        rng = np.random.default_rng(1)
        p = np.stack([rng.uniform(0, cfg.width - 1, 4000), rng.uniform(0, cfg.height - 1, 4000)], -1).astype(np.float32)
        for t in (0, 13, 39):
            u = scene.inverse_map(p, t)
            # float32 coordinates of a few hundred px carry ~3e-5 px rounding; 2e-4 px is the tolerance
            assert np.abs(scene.forward_map(u, t) - p).max() < 2e-4, (view, t)


def test_full_size_renders_are_bitwise_identical_across_fresh_scenes():
    cfg = SynthConfig(frames=3)  # the default 256x448: the sizes the benchmarks and training use
    for view in ("axial", "sagittal"):
        reference = TRUSScene(cfg, 2, view).render(2)
        for _ in range(3):
            again = TRUSScene(cfg, 2, view).render(2)
            for a, b in zip(reference, again):
                np.testing.assert_array_equal(a, b)
