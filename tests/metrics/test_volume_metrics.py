"""3-D metrics of XDim-KD: the EDT they use against brute force with anisotropic spacing (oracle O-M2), Dice,
HD95 in mm, volume error and mL, and the surface mesh (volume within 2 % of voxel count x voxel volume)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from dtc.metrics.volume import edt, hd95, volume_metrics
from dtc.volume.mesh import mesh_volume, read_stl, render_mesh, surface_mesh, write_ply, write_stl


def _brute_edt(mask, spacing):
    fg = np.argwhere(mask).astype(np.float64) * np.asarray(spacing)
    out = np.empty(mask.shape)
    for idx in itertools.product(*(range(n) for n in mask.shape)):
        p = np.asarray(idx, np.float64) * np.asarray(spacing)
        out[idx] = np.sqrt(((fg - p) ** 2).sum(1)).min()
    return out


@pytest.mark.parametrize("shape, spacing", [((32, 32), (1.0, 1.0)), ((32, 32), (0.7, 1.9)),
                                            ((8, 8, 8), (1.0, 1.0, 1.0)), ((8, 8, 8), (2.5, 0.5, 0.8))])
@pytest.mark.parametrize("seed", [0, 1])
def test_edt_equals_brute_force(shape, spacing, seed):
    """O-M2: exact in 2-D and 3-D, with anisotropic spacing."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < 0.05
    mask.flat[rng.integers(mask.size)] = True
    assert np.allclose(edt(mask, spacing), _brute_edt(mask, spacing), atol=1e-12)


def test_edt_of_an_empty_mask_and_bad_spacing():
    assert np.all(np.isinf(edt(np.zeros((4, 4), bool))))
    with pytest.raises(ValueError, match="spacing"):
        edt(np.ones((4, 4), bool), (1.0, 0.0))


def test_hd95_equals_brute_force_with_anisotropic_spacing():
    rng = np.random.default_rng(3)
    spacing = (2.5, 0.5, 0.8)
    p = np.zeros((8, 9, 10), bool)
    g = np.zeros_like(p)
    p[1:6, 2:7, 1:8] = True
    g[2:8, 1:6, 3:9] = True
    p &= rng.random(p.shape) < 0.9
    from scipy import ndimage

    def surface(m):
        return m & ~ndimage.binary_erosion(m, ndimage.generate_binary_structure(3, 1), border_value=0)

    sp = np.argwhere(surface(p)) * np.asarray(spacing)
    sg = np.argwhere(surface(g)) * np.asarray(spacing)
    d = np.sqrt(((sp[:, None] - sg[None]) ** 2).sum(-1))
    want = max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))
    assert hd95(p, g, spacing) == pytest.approx(want, abs=1e-12)


def _ellipsoid(shape=(30, 40, 44), radii=(11, 13, 15), centre=None):
    centre = centre or tuple((n - 1) / 2 for n in shape)
    grid = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1


def test_volume_metrics_values():
    gt = _ellipsoid()
    spacing = (2.0, 0.5, 0.5)
    m = volume_metrics(gt.astype(np.float32), gt, spacing)
    assert m["dice"] == 1.0 and m["hd95_mm"] == 0.0 and m["volume_error"] == 0.0
    assert m["volume_ml"] == pytest.approx(gt.sum() * 0.5 / 1000)
    shifted = np.roll(gt, 2, axis=0)
    m = volume_metrics(shifted, gt, spacing)
    assert 0 < m["dice"] < 1 and m["volume_error"] == pytest.approx(0.0) and m["hd95_mm"] > 0
    # single voxels two slices apart: 4 mm along z; two columns apart: 1 mm in plane
    a, b, c = (np.zeros((5, 5, 5), bool) for _ in range(3))
    a[1, 2, 2], b[3, 2, 2], c[1, 2, 4] = True, True, True
    assert hd95(a, b, spacing) == pytest.approx(4.0) and hd95(a, c, spacing) == pytest.approx(1.0)
    half = gt.copy()
    half[: gt.shape[0] // 2] = False
    assert volume_metrics(half, gt, spacing)["volume_error"] == pytest.approx(1 - half.sum() / gt.sum())
    assert np.isnan(hd95(np.zeros_like(gt), gt, spacing)) and hd95(np.zeros_like(gt), np.zeros_like(gt), spacing) == 0
    with pytest.raises(ValueError, match="one shape"):
        volume_metrics(gt[1:], gt, spacing)
    with pytest.raises(ValueError, match="non-finite"):
        volume_metrics(np.full(gt.shape, np.nan), gt, spacing)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 0.6, 0.8)])
def test_mesh_volume_matches_voxel_volume_within_2_percent(spacing, tmp_path):
    gt = _ellipsoid()
    verts, faces = surface_mesh(gt, spacing)
    voxel_volume = gt.sum() * np.prod(spacing)
    assert mesh_volume(verts, faces) == pytest.approx(voxel_volume, rel=0.02)
    assert mesh_volume(verts, faces, signed=True) > 0  # outward-facing triangles
    write_stl(tmp_path / "m.stl", verts, faces)
    v2, f2 = read_stl(tmp_path / "m.stl")
    assert len(f2) == len(faces) and mesh_volume(v2, f2) == pytest.approx(mesh_volume(verts, faces), rel=1e-5)
    write_ply(tmp_path / "m.ply", verts, faces)
    text = (tmp_path / "m.ply").read_bytes()
    assert text.startswith(b"ply\n") and f"element face {len(faces)}".encode() in text
    assert (tmp_path / "m.ply").stat().st_size > len(verts) * 12 + len(faces) * 13


def test_mesh_with_affine_is_in_world_mm():
    gt = _ellipsoid((20, 24, 28), (7, 8, 9))
    # NIfTI voxel (row, column, slice) -> world, with a mirrored axis and a translation
    affine = np.array([[0.0, 0.0, 1.5, 10.0], [-0.5, 0.0, 0.0, 3.0], [0.0, 0.7, 0.0, -4.0], [0, 0, 0, 1.0]])
    verts, faces = surface_mesh(gt, affine=affine)
    assert mesh_volume(verts, faces, signed=True) == pytest.approx(gt.sum() * 1.5 * 0.5 * 0.7, rel=0.02)
    centre = (np.array([(24 - 1) / 2, (28 - 1) / 2, (20 - 1) / 2, 1.0]) @ affine.T)[:3]
    assert np.allclose(verts.mean(0), centre, atol=0.5)


def test_mesh_bad_input_and_render(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        surface_mesh(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="3-D"):
        surface_mesh(np.ones((4, 4)))
    verts, faces = surface_mesh(_ellipsoid((12, 12, 12), (4, 4, 4)))
    render_mesh(tmp_path / "m.png", verts, faces, title="gland")
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
