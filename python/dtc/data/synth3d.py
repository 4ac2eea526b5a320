"""A 3-D prostate phantom imaged plane by plane: simulated TRUS volumes with exact 3-D masks.

The phantom lives in a world frame in millimetres, (x, y, z) = (R, A, S): x to the patient's right,
y anterior (away from the probe, towards the gland and bladder), z superior along the probe's long
axis. The probe is a cylinder of radius `probe_radius_mm` around the z axis. In it sit

- the gland: a walnut-shaped body (an ellipsoid with a few angular harmonics on its outline, a concave
  posterior face towards the probe and a tear-drop taper towards the apex) with a bright capsule, a
  hypo-echoic textured interior and a darker transition zone;
- the bladder: an anechoic fluid ellipsoid anterior and superior to the gland;
- the rectal wall: layers at fixed distances from the probe surface (bright mucosa, dark muscularis,
  bright serosa);
- calcifications: small bright spheres inside the gland that nearly block the beam.

Every imaging plane is rendered by the 2-D simulator (`dtc.data.synth.TRUSScene`, static: no motion)
after its tissue tables (echogenicity, attenuation, gland level) have been replaced by the phantom
sampled on that plane, so the ultrasound physics (speckle, PSF, attenuation and shadows, noise, TGC,
log compression, scan conversion) is the 2-D simulator's own. Speckle is drawn independently per
plane: the planes are further apart than the elevational width of the beam.

Sweeps:

- ``"linear"``: axial (sector) planes stepped along z by `plane_spacing_mm` (a stepper). The stack of
  planes is the volume; voxel (row, col, plane) sits on the plane pixel.
- ``"rotational"``: sagittal (linear-array) planes rotated about the probe axis, evenly over
  ±`sweep_angle_deg`. The planes are scan-converted (trilinear) onto a Cartesian grid of `voxel_mm`
  voxels; the mask is the phantom's at each voxel centre, inside the swept field of view.

Volumes are (D, H, W) arrays indexed (slice, row, column); `affine` maps NIfTI voxel indices
(row, column, slice) to world millimetres, which is how `write_volume_nifti` stores them: a NIfTI
reader that slices the last axis gets the planes the right way up.
"""
from __future__ import annotations

import gzip
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from dtc.data.synth import SynthConfig, TRUSScene

SWEEPS = ("linear", "rotational")


@dataclass(frozen=True)
class Synth3DConfig:
    """Controls of the 3-D phantom and its sweep.

    height, width: size of each imaged plane in pixels.
    planes: number of planes in the sweep.
    sweep: "linear" (axial planes stepped along the probe) or "rotational" (sagittal planes rotated
        about the probe axis).
    plane_spacing_mm: distance between planes of a linear sweep.
    sweep_angle_deg: half-angle of a rotational sweep.
    voxel_mm: Cartesian voxel size of a rotational sweep's volume (default: the plane pixel size).
    depth_mm: imaging depth (sets the plane pixel size depth_mm / height).
    shadow_rate: mean number of calcifications per volume.
    noise, dynamic_range_db, attenuation_db: as in `SynthConfig`.
    """

    height: int = 128
    width: int = 128
    planes: int = 48
    sweep: str = "linear"
    plane_spacing_mm: float = 1.0
    sweep_angle_deg: float = 60.0
    voxel_mm: float | None = None
    depth_mm: float = 60.0
    shadow_rate: float = 2.0
    noise: float = 1.0
    dynamic_range_db: float = 50.0
    attenuation_db: float = 30.0

    def __post_init__(self):
        if self.sweep not in SWEEPS:
            raise ValueError(f"sweep must be one of {SWEEPS}, got {self.sweep!r}")
        if not isinstance(self.planes, (int, np.integer)) or self.planes < 2:
            raise ValueError(f"planes must be an int >= 2, got {self.planes!r}")
        if self.plane_spacing_mm <= 0:
            raise ValueError(f"plane_spacing_mm must be positive, got {self.plane_spacing_mm}")
        if not 0 < self.sweep_angle_deg < 90:
            raise ValueError(f"sweep_angle_deg must be in (0, 90), got {self.sweep_angle_deg}")
        if self.voxel_mm is not None and self.voxel_mm <= 0:
            raise ValueError(f"voxel_mm must be positive, got {self.voxel_mm}")
        if self.shadow_rate < 0:
            raise ValueError(f"shadow_rate must be >= 0, got {self.shadow_rate}")
        self.plane_config()  # the 2-D checks (size, depth, dynamic range)

    @property
    def pixel_mm(self) -> float:
        return self.depth_mm / self.height

    def plane_config(self) -> SynthConfig:
        # static scene, speckle drawn per plane: the 2-D decorrelation and motion do not apply
        return SynthConfig(height=self.height, width=self.width, frames=self.planes,
                           views=("axial" if self.sweep == "linear" else "sagittal",), motion=0.0,
                           decorrelation=0.0, noise=self.noise, dynamic_range_db=self.dynamic_range_db,
                           attenuation_db=self.attenuation_db, depth_mm=self.depth_mm, phantom=True)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SynthVolume:
    """One simulated volume.

    image (D, H, W) float32 in [0, 1]; mask (D, H, W) uint8 {0, 1}; spacing (slice, row, column) mm;
    affine (4, 4): NIfTI voxel (row, column, slice) -> world mm. planes / plane_masks (P, h, w) are the
    rendered planes of the sweep (for a linear sweep the same arrays as image / mask).
    """

    image: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    planes: np.ndarray
    plane_masks: np.ndarray
    sweep: str
    seed: int
    meta: dict = field(default_factory=dict)


class _Waves:
    """A smooth, unit-variance random field in 3-D: a sum of random plane waves (cheap anywhere)."""

    def __init__(self, rng: np.random.Generator, wavelength_mm: float, n: int = 16):
        d = rng.standard_normal((n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        self.k = (d * (2 * math.pi / wavelength_mm) * rng.uniform(0.7, 1.3, (n, 1))).astype(np.float32)
        self.phase = rng.uniform(0, 2 * math.pi, n).astype(np.float32)
        self.gain = np.float32(math.sqrt(2.0 / n))

    def __call__(self, p: np.ndarray) -> np.ndarray:
        out = np.zeros(p.shape[:-1], np.float32)
        for k, ph in zip(self.k, self.phase):
            out += np.cos(p @ k + ph)
        return out * self.gain


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(np.clip(x, -30, 30)))


class ProstatePhantom3D:
    """The analytic 3-D scene (see the module docstring). Deterministic in `seed`.

    Sizes follow an adult gland: about 36 x 25 x 44 mm (R x A x S), centred ~37 mm from the probe axis.
    """

    def __init__(self, seed: int, probe_radius_mm: float = 9.0, shadow_rate: float = 2.0):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x3D, 0x7275]))
        self.probe_radius = float(probe_radius_mm)
        self.semi_axes = np.array([18.0 * rng.uniform(0.9, 1.15), 12.6 * rng.uniform(0.9, 1.1),
                                   22.0 * rng.uniform(0.9, 1.15)])
        self.centre = np.array([rng.uniform(-2, 2), self.probe_radius + 16.0 + self.semi_axes[1] * rng.uniform(0.95, 1.1),
                                rng.uniform(-2, 2)])
        self.harmonics = [(k, rng.uniform(0.01, 0.035), rng.uniform(0, 2 * math.pi)) for k in range(2, 6)]
        self.taper = 0.15 * float(rng.choice([-1, 1]))
        ax = self.semi_axes
        self.bladder_centre = self.centre + np.array([rng.uniform(-3, 3), ax[1] + 10.0, 0.45 * ax[2]])
        self.bladder_axes = np.array([0.55 * ax[0] * rng.uniform(1.3, 1.8), 7.8, 0.6 * ax[2] * rng.uniform(0.9, 1.2)])
        self.bg_fine, self.bg_coarse = _Waves(rng, 4.0), _Waves(rng, 25.0)
        self.gland_texture, self.capsule_texture = _Waves(rng, 2.0), _Waves(rng, 12.0)
        self.fascia = [(rng.uniform(3.0, 55.0), rng.uniform(0.4, 1.0), _Waves(rng, 30.0, 6)) for _ in range(3)]
        self.calcifications = []
        for _ in range(min(int(rng.poisson(shadow_rate)), 6)):
            for _attempt in range(200):  # rejection-sample a centre well inside the gland
                c = self.centre + rng.uniform(-1, 1, 3) * self.semi_axes
                if self.level(c[None])[0] < -0.25 * self.semi_axes.min():
                    self.calcifications.append((c, rng.uniform(0.35, 0.7)))
                    break

    def level(self, p: np.ndarray) -> np.ndarray:
        """Gland level in mm at world points p (..., 3): < 0 inside, ~ signed distance near the capsule."""
        u = (np.asarray(p, np.float64) - self.centre) / self.semi_axes
        rho = np.sqrt((u**2).sum(-1)) + 1e-12
        theta = np.arctan2(u[..., 1], u[..., 0])  # around the probe axis, in the axial plane
        boundary = np.ones_like(rho)
        for k, amp, ph in self.harmonics:
            boundary += amp * np.cos(k * theta + ph)
        posterior = np.remainder(theta + math.pi / 2, 2 * math.pi) - math.pi  # angle from the probe direction
        boundary -= 0.10 * np.exp(-posterior**2 / (2 * 0.3**2))  # the walnut's concave back
        boundary *= 1 + self.taper * u[..., 2] / rho  # tear-drop towards the apex
        return ((rho - boundary) * self.semi_axes.min()).astype(np.float32)

    def tissue(self, p: np.ndarray, alpha0: float, pixel_mm: float):
        """Echogenicity, attenuation (Np per pixel, `alpha0` for soft tissue) and gland level at p (..., 3)."""
        p = np.asarray(p, np.float32)
        level = self.level(p)
        gland = _sigmoid(level / (1.2 * pixel_mm))
        u = (p - self.centre.astype(np.float32)) / self.semi_axes.astype(np.float32)
        tz = _sigmoid((np.sqrt(u[..., 0] ** 2 + (u[..., 1] + 0.15) ** 2 + u[..., 2] ** 2) - 0.55) * 12)
        depth = np.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2) - self.probe_radius  # from the probe surface, mm
        bg = np.exp(0.25 * self.bg_fine(p)) * (1 + 0.25 * self.bg_coarse(p))
        for d0, strength, wobble in self.fascia:
            bg += strength * np.exp(-((depth - d0 + 2.0 * wobble(p)) / 0.7) ** 2)
        amp = bg * (1 - gland) + 0.45 * np.exp(0.35 * self.gland_texture(p)) * (1 - 0.35 * tz) * gland
        amp += 1.6 * np.exp(-(level / (1.6 * pixel_mm)) ** 2) * (1 + 0.3 * self.capsule_texture(p))
        ub = (p - self.bladder_centre.astype(np.float32)) / self.bladder_axes.astype(np.float32)
        bladder = _sigmoid((np.sqrt((ub**2).sum(-1)) - 1) * 7.8 / (1.5 * pixel_mm))
        amp = amp * (1 - bladder) + 0.03 * bladder
        amp *= 1 - 0.5 * np.exp(-((depth - 2.1) / 0.7) ** 2)  # rectal wall: dark muscularis
        amp += 1.8 * np.exp(-((depth - 0.6) / 0.6) ** 2) + 1.2 * np.exp(-((depth - 3.6) / 0.75) ** 2)
        amp = np.where(depth < 0, np.float32(0.02), amp)
        alpha = alpha0 * ((1 - bladder) * (1 + 0.15 * gland) + 0.05 * bladder)
        for c, rad in self.calcifications:
            spot = np.exp(-((p - c.astype(np.float32)) ** 2).sum(-1) / (2 * rad**2))
            amp = np.maximum(amp, 7.0 * spot)
            alpha = alpha + 0.35 * spot
        return amp.astype(np.float32), alpha.astype(np.float32), level


class _PlaneScene(TRUSScene):
    """The 2-D scene, static, whose tissue tables are replaced plane by plane from the phantom."""

    def set_tables(self, amp: np.ndarray, alpha: np.ndarray, level_px: np.ndarray, rng: np.random.Generator):
        Ht, Wt = self.tissue_shape
        scat = rng.standard_normal((Ht, Wt, 4)).astype(np.float32)
        scat = cv2.GaussianBlur(scat, (0, 0), 0.7)  # band-limited as in the 2-D scene
        scat /= scat.reshape(-1, 4).std(axis=0)
        self.scatter_table = np.ascontiguousarray(scat * amp[..., None])
        self.alpha_table = np.ascontiguousarray(alpha)
        self.log_trans_table = np.ascontiguousarray((-2.0 * self.dr * alpha).astype(np.float32))
        self.level_table = np.ascontiguousarray(level_px)


class SweepGeometry:
    """Where each pixel of each plane of a sweep sits in the world (mm). Pixels are (x=col, y=row)."""

    def __init__(self, config: Synth3DConfig, scene: TRUSScene):
        self.config, s = config, config.pixel_mm
        self.pixel_mm = s
        H, W, P = config.height, config.width, config.planes
        if config.sweep == "linear":
            self.cx, self.apex_y = scene.cx, scene.apex_y
            self.probe_radius = scene.r0 * s
            self.z = (np.arange(P) - (P - 1) / 2) * config.plane_spacing_mm
        else:
            self.y_probe = scene.y_probe
            self.probe_radius = 0.15 * H * s
            self.angles = np.radians(np.linspace(-config.sweep_angle_deg, config.sweep_angle_deg, P))
            self.cl = (W - 1) / 2

    def plane_points(self, k: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """World points (..., 3) of plane k at pixel coordinates (xs, ys)."""
        s = self.pixel_mm
        if self.config.sweep == "linear":
            return np.stack([(xs - self.cx) * s, (self.apex_y - ys) * s, np.full_like(xs, self.z[k])], -1)
        rho = self.probe_radius + (self.y_probe - ys) * s
        th = self.angles[k]
        return np.stack([rho * math.sin(th), rho * math.cos(th), (xs - self.cl) * s], -1)

    def world_to_plane(self, p: np.ndarray):
        """Fractional (plane, row, col) of world points p (..., 3), for a rotational sweep."""
        s, c = self.pixel_mm, self.config
        rho = np.hypot(p[..., 0], p[..., 1])
        th = np.arctan2(p[..., 0], p[..., 1])
        a0, a1 = self.angles[0], self.angles[-1]
        plane = (th - a0) / (a1 - a0) * (c.planes - 1)
        row = self.y_probe - (rho - self.probe_radius) / s
        col = p[..., 2] / s + self.cl
        return plane, row, col


def simulate_volume(config: Synth3DConfig | None = None, seed: int = 0) -> SynthVolume:
    """Simulate one swept volume. Deterministic in (config, seed)."""
    config = config or Synth3DConfig()
    pc = config.plane_config()
    scene = _PlaneScene(pc, seed, pc.views[0])
    geom = SweepGeometry(config, scene)
    phantom = ProstatePhantom3D(seed, probe_radius_mm=geom.probe_radius, shadow_rate=config.shadow_rate)
    s = config.pixel_mm
    H, W, P = config.height, config.width, config.planes
    m = scene.margin
    Ht, Wt = scene.tissue_shape
    ty, tx = np.mgrid[0:Ht, 0:Wt].astype(np.float32)
    tx -= m
    ty -= m
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x3D, 0x5C]))
    planes = np.empty((P, H, W), np.float32)
    plane_masks = np.empty((P, H, W), np.uint8)
    for k in range(P):
        amp, alpha, level = phantom.tissue(geom.plane_points(k, tx, ty), scene.alpha0, s)
        scene.set_tables(amp, alpha, level / np.float32(s), rng)
        planes[k], plane_masks[k], _, _ = scene.render(k, flow_from=None)
    meta = {"calcifications": [(c.tolist(), float(r)) for c, r in phantom.calcifications],
            "gland_centre_mm": phantom.centre.tolist(), "gland_semi_axes_mm": phantom.semi_axes.tolist(),
            "probe_radius_mm": geom.probe_radius}
    if config.sweep == "linear":
        dz = config.plane_spacing_mm
        # NIfTI voxel (row, col, plane) -> world: col along +x, row against +y (depth grows upwards), plane along z
        affine = np.array([[0.0, s, 0.0, -geom.cx * s],
                           [-s, 0.0, 0.0, geom.apex_y * s],
                           [0.0, 0.0, dz, geom.z[0]],
                           [0.0, 0.0, 0.0, 1.0]])
        return SynthVolume(image=planes, mask=plane_masks, spacing=(dz, s, s), affine=affine, planes=planes,
                           plane_masks=plane_masks, sweep=config.sweep, seed=int(seed), meta=meta)
    image, mask, spacing, affine = _scan_convert(config, scene, geom, phantom, planes)
    return SynthVolume(image=image, mask=mask, spacing=spacing, affine=affine, planes=planes,
                       plane_masks=plane_masks, sweep=config.sweep, seed=int(seed), meta=meta)


def _scan_convert(config, scene, geom, phantom, planes):
    """Rotational planes onto a Cartesian grid whose slices are sagittal: (x slice, -y row, z column)."""
    from scipy.ndimage import map_coordinates

    v = config.voxel_mm or config.pixel_mm
    H, W = config.height, config.width
    rho_max = geom.probe_radius + geom.y_probe * config.pixel_mm
    half_l = (W - 1) / 2 * config.pixel_mm
    x_max = rho_max * math.sin(geom.angles[-1])
    nx, ny, nz = (int(math.floor(2 * x_max / v)) + 1, int(math.floor(rho_max / v)) + 1, int(math.floor(2 * half_l / v)) + 1)
    xs = -x_max + v * np.arange(nx)
    ys = rho_max - v * np.arange(ny)  # row 0 is the deepest
    zs = -half_l + v * np.arange(nz)
    X, Y, Z = np.meshgrid(xs, ys, zs, indexing="ij")  # (slice, row, col)
    p = np.stack([X, Y, Z], -1).astype(np.float32)
    plane, row, col = geom.world_to_plane(p)
    fov = ((plane >= 0) & (plane <= config.planes - 1) & (row >= 0) & (row <= geom.y_probe)
           & (col >= 0) & (col <= W - 1))
    image = map_coordinates(planes, np.stack([plane, row, col]), order=1, mode="constant", cval=0.0)
    image = np.where(fov, image, 0).astype(np.float32)
    mask = ((phantom.level(p) < 0) & fov).astype(np.uint8)
    # NIfTI voxel (row, col, slice) -> world
    affine = np.array([[0.0, 0.0, v, xs[0]],
                       [-v, 0.0, 0.0, ys[0]],
                       [0.0, v, 0.0, zs[0]],
                       [0.0, 0.0, 0.0, 1.0]])
    return image, mask, (v, v, v), affine


# ----------------------------------------------------------------------------------------------
# NIfTI volumes: writing, and reading with checks

@dataclass
class Volume:
    """A volume read back: image (D, H, W) float32, mask (D, H, W) uint8 or None, spacing (slice, row,
    column) mm, affine (NIfTI voxel (row, column, slice) -> world mm), source path."""

    image: np.ndarray
    mask: np.ndarray | None
    spacing: tuple[float, float, float]
    affine: np.ndarray
    source: str


def _nifti(array_dhw: np.ndarray, affine: np.ndarray, spacing, dtype):
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(np.transpose(array_dhw, (1, 2, 0))).astype(dtype), affine)
    img.header.set_zooms((spacing[1], spacing[2], spacing[0]))
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def write_volume_nifti(path: str | os.PathLike, array_dhw: np.ndarray, affine: np.ndarray,
                       spacing: tuple[float, float, float], label: bool = False) -> Path:
    """Write a (D, H, W) volume as NIfTI (.nii or .nii.gz), atomically. Images are stored as uint8
    (intensities x 255); labels as uint8 {0, 1}."""
    from dtc.io import atomic_write_bytes

    arr = np.asarray(array_dhw)
    if arr.ndim != 3:
        raise ValueError(f"array_dhw must be 3-D (D, H, W), got shape {arr.shape}")
    data = arr.astype(np.uint8) if label else np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)
    raw = _nifti(data, np.asarray(affine, np.float64), spacing, np.uint8).to_bytes()
    path = Path(path)
    return atomic_write_bytes(path, gzip.compress(raw, mtime=0) if path.name.endswith(".gz") else raw)


def read_volume(image: str | os.PathLike, label: str | os.PathLike | None = None,
                expected_spacing: tuple[float, float, float] | None = None, spacing_tol: float = 1e-3) -> Volume:
    """Read a NIfTI image (and label) as (D, H, W) arrays sliced along the last NIfTI axis.

    Checked: 3-D data (a 4-D file with one volume is accepted), a finite invertible affine whose
    column norms equal the header's voxel sizes, positive voxel sizes, label shape and affine equal to
    the image's, labels binary, and the spacing against `expected_spacing` (slice, row, column) mm when
    given. Each failure raises ValueError naming the file and what was expected. Intensities are
    returned /255 for uint8 images, else min-max scaled to [0, 1].
    """
    try:
        import nibabel as nib
    except ImportError as exc:  # optional dependency
        raise ImportError("reading NIfTI needs nibabel: pip install nibabel") from exc
    from dtc.data.index import _require

    def load(path, what):
        path = _require(path, what)
        img = nib.load(path)
        shape = img.shape
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise ValueError(f"{path}: expected a 3-D {what} (rows, columns, slices), got shape {img.shape}")
        affine = np.asarray(img.affine, np.float64)
        if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError(f"{path}: the affine must be finite and invertible, got\n{affine}")
        zooms = np.asarray(img.header.get_zooms()[:3], np.float64)
        if np.any(zooms <= 0) or not np.all(np.isfinite(zooms)):
            raise ValueError(f"{path}: voxel sizes must be positive, got {tuple(zooms)}")
        col_norms = np.linalg.norm(affine[:3, :3], axis=0)
        if not np.allclose(col_norms, zooms, rtol=1e-3, atol=1e-6):
            raise ValueError(f"{path}: the affine's voxel sizes {tuple(np.round(col_norms, 6))} disagree with "
                             f"the header's {tuple(zooms)}")
        data = np.asarray(img.dataobj).reshape(shape)
        return path, np.transpose(data, (2, 0, 1)), affine, (float(zooms[2]), float(zooms[0]), float(zooms[1]))

    path, data, affine, spacing = load(image, "NIfTI volume")
    if expected_spacing is not None:
        exp = tuple(float(v) for v in expected_spacing)
        if len(exp) != 3 or not np.allclose(spacing, exp, rtol=spacing_tol, atol=0):
            raise ValueError(f"{path}: voxel spacing (slice, row, column) {spacing} mm, expected {exp}")
    if data.dtype == np.uint8:
        img = data.astype(np.float32) / 255.0
    else:
        img = data.astype(np.float32)
        if not np.all(np.isfinite(img)):
            raise ValueError(f"{path}: the volume has non-finite values")
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / max(hi - lo, 1e-6)
    mask = None
    if label is not None:
        lpath, ldata, laffine, _ = load(label, "NIfTI label")
        if ldata.shape != data.shape:
            raise ValueError(f"label/image size mismatch: {lpath} has shape {ldata.shape} (slices, rows, columns), "
                             f"{path} has {data.shape}")
        if not np.allclose(laffine, affine, atol=1e-4):
            raise ValueError(f"label/image affine mismatch: {lpath} and {path} must share the same affine")
        values = np.unique(ldata)
        if not np.all(np.isin(values, (0, 1))):
            raise ValueError(f"{lpath}: labels must be binary 0/1, got values {values[:8].tolist()}")
        mask = ldata.astype(np.uint8)
    return Volume(image=img, mask=mask, spacing=spacing, affine=affine, source=path)


def read_sweep_video(path: str | os.PathLike, spacing: tuple[float, float, float]) -> Volume:
    """A 2-D sweep video stacked in frame order as a (D, H, W) volume: z = frame index.

    `spacing` is (frame step, row, column) mm; the affine is diagonal (a linear sweep). Colour frames
    are converted to grey; intensities /255.
    """
    spacing = tuple(float(v) for v in spacing)
    if len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing):
        raise ValueError(f"spacing must be three positive mm values (frame step, row, column), got {spacing}")
    from dtc.data.index import decode_video_frames

    path = os.fspath(path)
    frames = decode_video_frames(path, "grey")
    if len(frames) < 2:
        raise ValueError(f"{path}: a sweep needs at least 2 frames, decoded {len(frames)}")
    image = np.stack(frames).astype(np.float32) / 255.0
    affine = np.diag([spacing[1], spacing[2], spacing[0], 1.0])
    return Volume(image=image, mask=None, spacing=spacing, affine=affine, source=path)


def write_synth3d_dataset(out: str | os.PathLike, num_volumes: int, config: Synth3DConfig, seed: int = 0,
                          progress: bool = True) -> dict:
    """Simulate `num_volumes` volumes and write images/{id}.nii.gz, labels/{id}.nii.gz and meta.json."""
    import json

    from dtc.progress import progress_bar

    from dtc.io import atomic_write_bytes

    if num_volumes < 1:
        raise ValueError(f"num_volumes must be >= 1, got {num_volumes}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    volumes = []
    for i in progress_bar(range(num_volumes), desc="simulating volumes", unit="volume", enabled=progress):
        vseed = seed * 100003 + i
        vol = simulate_volume(config, vseed)
        vid = f"vol{i:03d}"
        write_volume_nifti(out / "images" / f"{vid}.nii.gz", vol.image, vol.affine, vol.spacing)
        write_volume_nifti(out / "labels" / f"{vid}.nii.gz", vol.mask, vol.affine, vol.spacing, label=True)
        volumes.append({"id": vid, "seed": vseed, "shape": list(vol.image.shape), "spacing_mm": list(vol.spacing),
                        "gland_ml": float(vol.mask.sum() * np.prod(vol.spacing) / 1000.0), **vol.meta})
    summary = {"config": config.to_dict(), "seed": seed, "volumes": volumes}
    atomic_write_bytes(out / "meta.json", json.dumps(summary, indent=2).encode())
    return summary
