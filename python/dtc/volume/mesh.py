"""Surface meshes of 3-D segmentations (docs/xdim.md, "3-D reconstruction"): marching cubes
(scikit-image), the enclosed volume, STL / PLY files and a rendered picture."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def surface_mesh(mask, spacing=(1.0, 1.0, 1.0), affine=None, level: float = 0.5):
    """(vertices [n, 3] float64, faces [m, 3] int64) of a (D, H, W) mask's surface by marching cubes at
    `level`, outward-facing triangles. Vertices are in mm along (slice, row, column) scaled by `spacing`,
    or, with a NIfTI `affine` (voxel (row, column, slice) -> world), in world mm (then `spacing` is unused).
    The mask is padded by one empty voxel so the surface is closed at the volume's border."""
    try:
        from skimage.measure import marching_cubes
    except ImportError as exc:  # optional dependency
        raise ImportError("surface meshes need scikit-image: pip install scikit-image (or dtc[mesh])") from exc
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ValueError(f"mask must be a 3-D (D, H, W) array, got shape {m.shape}")
    if not (m > level).any():
        raise ValueError("mask is empty: there is no surface to mesh")
    padded = np.pad(m.astype(np.float32), 1)
    verts, faces, _, _ = marching_cubes(padded, level=level, allow_degenerate=False)
    verts = verts.astype(np.float64) - 1.0  # undo the padding: voxel indices (slice, row, column)
    if affine is not None:
        a = np.asarray(affine, np.float64)
        if a.shape != (4, 4) or not np.all(np.isfinite(a)):
            raise ValueError(f"affine must be a finite 4x4 matrix, got shape {a.shape}")
        ijk = np.stack([verts[:, 1], verts[:, 2], verts[:, 0], np.ones(len(verts))], 1)
        verts = (ijk @ a.T)[:, :3]
    else:
        s = np.asarray(spacing, np.float64)
        if s.shape != (3,) or not np.all(s > 0):
            raise ValueError(f"spacing must be three positive voxel sizes, got {spacing!r}")
        verts = verts * s
    faces = faces.astype(np.int64)
    # a mirroring affine (or marching cubes' own winding) can turn the triangles inward: orient them outward
    if mesh_volume(verts, faces, signed=True) < 0:
        faces = faces[:, ::-1].copy()
    return verts, faces


def mesh_volume(verts, faces, signed: bool = False) -> float:
    """Enclosed volume of a closed triangle mesh (divergence theorem), in the vertices' units cubed."""
    v = np.asarray(verts, np.float64)
    f = np.asarray(faces, np.int64)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    vol = float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)
    return vol if signed else abs(vol)


def _normals(verts, faces):
    v = np.asarray(verts, np.float64)
    n = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return n / np.maximum(length, 1e-12)


def write_stl(path, verts, faces) -> Path:
    """Binary STL, atomically."""
    from dtc.io import atomic_write_bytes

    v = np.asarray(verts, np.float32)
    f = np.asarray(faces, np.int64)
    records = np.zeros(len(f), dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    records["n"] = _normals(verts, f)
    records["v"] = v[f]
    header = b"dtc XDim-KD surface mesh".ljust(80, b" ")
    return atomic_write_bytes(path, header + struct.pack("<I", len(f)) + records.tobytes())


def write_ply(path, verts, faces) -> Path:
    """Binary little-endian PLY (float vertices, int triangle lists), atomically."""
    from dtc.io import atomic_write_bytes

    v = np.asarray(verts, "<f4")
    f = np.asarray(faces, np.int64)
    header = ("ply\nformat binary_little_endian 1.0\ncomment dtc XDim-KD surface mesh\n"
              f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
              f"element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n").encode()
    tri = np.zeros(len(f), dtype=[("k", "u1"), ("i", "<i4", 3)])
    tri["k"] = 3
    tri["i"] = f
    return atomic_write_bytes(path, header + v.tobytes() + tri.tobytes())


def read_stl(path):
    """(vertices, faces) of a binary STL written by write_stl (vertices shared by position)."""
    data = Path(path).read_bytes()
    (count,) = struct.unpack("<I", data[80:84])
    rec = np.frombuffer(data[84:84 + 50 * count], dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    corners = rec["v"].reshape(-1, 3).astype(np.float64)
    verts, inverse = np.unique(corners, axis=0, return_inverse=True)
    return verts, inverse.reshape(-1, 3)


def render_mesh(path, verts, faces, title: str | None = None) -> Path:
    """A shaded picture of the mesh (matplotlib), written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    from dtc.io import atomic_write_figure

    v = np.asarray(verts, np.float64)
    f = np.asarray(faces, np.int64)
    shade = 0.35 + 0.65 * np.abs(_normals(v, f) @ np.array([0.3, 0.5, 0.8]) / np.linalg.norm([0.3, 0.5, 0.8]))
    fig = plt.figure(figsize=(5, 5))
    ax = fig.add_subplot(projection="3d")
    ax.add_collection3d(Poly3DCollection(v[f], facecolors=plt.cm.copper(shade), edgecolor="none"))
    lo, hi = v.min(0), v.max(0)
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2
    for set_lim, c in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), centre):
        set_lim(c - half, c + half)
    ax.set_xlabel("mm")
    if title:
        ax.set_title(title)
    try:
        return atomic_write_figure(path, fig)
    finally:
        plt.close(fig)
