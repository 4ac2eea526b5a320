"""Embedded synthetic TRUS-like video simulator: the package's default dataset.

Each video is one probe sweep of a prostate-like gland. The scene is built once per video in a
*tissue frame* (pixel coordinates of the image at rest) and every frame is rendered by mapping the
image back into that frame, so masks and ground-truth flow follow from one known, invertible map.

Physics, in the order a frame is rendered:

1. Tissue tables (per video): echogenicity ``A`` (scattering amplitude: hypo-echoic textured gland
   with a bright capsule and a darker transition zone, background with fascia layers, a fluid-filled
   bladder-like region, a layered rectal wall at the probe, bright calcifications), attenuation ``alpha``
   (Np per pixel; fluid barely attenuates, calcifications almost block) and two independent complex
   white scatterer fields (lightly band-limited so interpolation does not modulate their variance).
2. Motion ``Phi_t`` (tissue -> image): a deformation ``u + sum_k c_k(t) D_k(u)`` (breathing-like
   background fields and probe pressure, both damped inside the gland, which is therefore
   geometrically steadier than its surroundings) followed by a rigid probe motion (rotation about the
   probe plus translation). The deformation is a contraction-bounded displacement (Lipschitz < 0.9,
   checked), so it is invertible; the inverse is found by fixed-point iteration to 2e-4 px.
3. Beam domain (rows = depth samples, columns = scan lines; a sector for axial views, a linear array
   for sagittal views): the tissue tables are sampled at ``Phi_t^-1`` of each beam sample; the complex
   field ``A * (cos th_t S_a + sin th_t S_b)`` (``th_t`` drifts: out-of-plane speckle decorrelation)
   is convolved with a separable Gaussian point-spread function (axial along depth, lateral across
   lines); round-trip attenuation ``exp(-2 * cumsum(alpha) dr)`` along each beam casts shadows behind
   calcifications and enhances behind fluid; complex electronic noise is added; time-gain compensation
   undoes the nominal attenuation; the envelope (Rayleigh in homogeneous tissue) is log-compressed to
   the display dynamic range and scan-converted to the Cartesian image.

4. Transient events (off by default; ``SynthConfig.*_rate`` knobs, drawn from their own random stream
   so that switching them on leaves the scene, its masks and its flow untouched): what makes a
   per-frame network fail for a few frames while the anatomy does not change.
   - ``gas_shadow``: bowel gas or a calcified fragment drifting through the beam: a bright specular
     interface with a near-total acoustic shadow behind it, sliding across the scan lines.
   - ``contact``: partial loss of probe contact (air under part of the probe face): a dark sector of
     scan lines, transmission down to a few per cent from the probe face on.
   - ``gain``: the operator moves the overall gain or one TGC slider: a depth band brightens or darkens
     by up to ~8 dB for several frames.
   - ``interference``: electronic interference burst: bright streaks along random scan lines for one
     or two frames.
   - ``reverberation``: multiple reflections between the probe face and a strong near-field reflector
     (the rectal wall under pressure): fading ghost copies of the near field at multiples of its depth.
   - ``jerk``: sudden probe motion: a quick in-plane jump of the probe (which moves the anatomy, so
     masks and flow follow it exactly) and an out-of-plane jump (speckle decorrelates at once).
   Every event records the frames and the pixels it touched (``SynthVideo.events``, bit ``k`` of
   ``EVENT_KINDS[k]``), so metrics can score event frames and calm frames apart.

Motion: the defaults move the gland ~0.1-0.2 px per frame (a probe held still). Freehand TRUS at
25 frames/s sweeps the probe at a few pixels per frame at 256x448; ``sweep_speed`` (px per frame at
448 px width, scaled with the width) adds that slow back-and-forth sweep as a rigid probe motion.

Convention:
    image coordinates are pixels, x to the right (columns), y down (rows); the probe is at the
    bottom of the image, depth increases upwards.
    frames  (T, H, W) float32 in [0, 1], 0 outside the field of view.
    masks   (T, H, W) uint8 {0, 1}: the gland, inside the field of view only.
    flows   (T, 2, H, W) float32, pixels, channel 0 = dx, channel 1 = dy. ``flows[t]`` is the BACKWARD
            flow of the pair (t-1, t): ``frame_t(p) ~ frame_{t-1}(p - flows[t](p))`` and exactly
            ``gland_t(p) = gland_{t-1}(p - flows[t](p))``; ``flows[0] = 0``. Defined everywhere
            (also outside the field of view).
    spacing (2,) mm per pixel, (row, column).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclasses_fields

import cv2
import numpy as np

VIEWS = ("axial", "sagittal")
_COARSE = 4  # motion fields are smooth: evaluated every 4 px and linearly upsampled
# Transient event kinds; bit k of an event map / record is EVENT_KINDS[k].
EVENT_KINDS = ("gas_shadow", "contact", "gain", "interference", "reverberation", "jerk")
# Frames an event lasts: (min, max), drawn uniformly per event.
_EVENT_DURATION = {"gas_shadow": (4, 10), "contact": (3, 8), "gain": (5, 12), "interference": (1, 2),
                   "reverberation": (3, 8), "jerk": (1, 1)}


@dataclass(frozen=True)
class SynthConfig:
    """Controls of the simulator. All lengths scale with the image size.

    height, width: image size in pixels (default 256x448, the method's H x W).
    frames: frames per video.
    views: views cycled over videos: "axial" (sector field of view) and/or "sagittal" (linear).
    motion: scales probe motion, probe pressure and breathing (0 = static; above ~2 the
        deformation may stop being invertible, which raises).
    shadow_rate: mean number of calcifications per video (each casts an acoustic shadow).
    noise: electronic noise level relative to the default.
    decorrelation: speckle decorrelation rate relative to the default (0 = speckle frozen to tissue).
    dynamic_range_db: display dynamic range of the log compression.
    attenuation_db: nominal round-trip attenuation of soft tissue over the full depth.
    depth_mm: imaging depth; sets the pixel spacing (depth_mm / height mm per pixel).
    gland_steadiness: fraction of the tissue deformation the gland is spared (0..1).
    phantom: homogeneous scattering medium (no structures, uniform attenuation); masks and flow
        are still those of the gland, for checking speckle statistics and motion.
    keep_envelope: also return the beam-domain envelope before log compression.
    sweep_speed: peak speed of a freehand back-and-forth probe sweep, px per frame at 448 px width
        (0 = the probe is held still; ~2-3 is freehand TRUS at 25 frames/s).
    <kind>_rate, <kind>_strength for kind in EVENT_KINDS: transient events (module docstring, step 4).
        The rate is the expected number of events starting per 100 frames (0 = never); the strength
        scales the event's effect (1 = the default magnitude).
    """

    height: int = 256
    width: int = 448
    frames: int = 48
    views: tuple[str, ...] = VIEWS
    motion: float = 1.0
    shadow_rate: float = 1.0
    noise: float = 1.0
    decorrelation: float = 1.0
    dynamic_range_db: float = 50.0
    attenuation_db: float = 30.0
    depth_mm: float = 60.0
    gland_steadiness: float = 0.8
    phantom: bool = False
    keep_envelope: bool = False
    sweep_speed: float = 0.0
    gas_shadow_rate: float = 0.0
    gas_shadow_strength: float = 1.0
    contact_rate: float = 0.0
    contact_strength: float = 1.0
    gain_rate: float = 0.0
    gain_strength: float = 1.0
    interference_rate: float = 0.0
    interference_strength: float = 1.0
    reverberation_rate: float = 0.0
    reverberation_strength: float = 1.0
    jerk_rate: float = 0.0
    jerk_strength: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.height, (int, np.integer)) and isinstance(self.width, (int, np.integer))):
            raise TypeError(f"height and width must be ints, got {self.height!r}, {self.width!r}")
        if self.height < 32 or self.width < 32:
            raise ValueError(f"image size must be at least 32x32, got {self.height}x{self.width}")
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        views = tuple(self.views) if not isinstance(self.views, str) else (self.views,)
        object.__setattr__(self, "views", views)
        if not views or any(v not in VIEWS for v in views):
            raise ValueError(f"views must be a non-empty subset of {VIEWS}, got {self.views!r}")
        event_knobs = [f"{kind}_{what}" for kind in EVENT_KINDS for what in ("rate", "strength")]
        for name in ("motion", "shadow_rate", "noise", "decorrelation", "sweep_speed", *event_knobs):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not 0.0 <= self.gland_steadiness <= 1.0:
            raise ValueError(f"gland_steadiness must be in [0, 1], got {self.gland_steadiness}")
        if self.dynamic_range_db <= 0 or self.depth_mm <= 0:
            raise ValueError("dynamic_range_db and depth_mm must be positive")

    @property
    def spacing(self) -> tuple[float, float]:
        s = self.depth_mm / self.height
        return (s, s)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["views"] = list(self.views)
        return d


# Named simulator settings (SynthConfig keyword arguments) for benchmarks. "events" is the temporal
# benchmark: a freehand sweep (~2 px/frame at 256x448, 25 frames/s) and transient events on roughly
# 40 % of the frames, so that a per-frame network fails for a few frames while the anatomy does not
# change. "calm" is the simulator's default: a probe held still, nothing transient.
BENCHMARKS = {
    "calm": {},
    "events": dict(sweep_speed=2.0, gas_shadow_rate=2.0, contact_rate=1.5, gain_rate=1.5, interference_rate=3.0,
                   reverberation_rate=1.5, jerk_rate=2.0),
}
# Settings the dataset takes from its own arguments (size, length) rather than from a benchmark.
_DATASET_OWNED = ("height", "width", "frames", "keep_envelope")


def synth_config(benchmark: str = "calm", overrides: dict | None = None, *, events: bool = True) -> "SynthConfig":
    """SynthConfig of a named benchmark with ``overrides`` on top; ``events=False`` switches every transient
    event off (curated still images for a stage-1 teacher) while keeping the rest, motion included."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {sorted(BENCHMARKS)}, got {benchmark!r}")
    overrides = dict(overrides or {})
    owned = sorted(set(overrides) & set(_DATASET_OWNED))
    if owned:
        raise ValueError(f"{owned} are set by the dataset (data.height, data.width, data.frames), not by the simulator")
    known = {f.name for f in dataclasses_fields(SynthConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown simulator setting(s) {unknown}; known: {sorted(known - set(_DATASET_OWNED))}")
    kwargs = {**BENCHMARKS[benchmark], **overrides}
    if not events:
        kwargs.update({f"{kind}_rate": 0.0 for kind in EVENT_KINDS})
    return SynthConfig(**kwargs)


@dataclass
class SynthVideo:
    """One simulated video. See the module docstring for the conventions of every array."""

    frames: np.ndarray
    masks: np.ndarray
    flows: np.ndarray
    fov: np.ndarray
    view: str
    spacing: tuple[float, float]
    seed: int
    envelope: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    events: np.ndarray | None = None  # (T, H, W) uint8: bit k set where EVENT_KINDS[k] touched the pixel

    @property
    def event_frames(self) -> np.ndarray:
        """(T,) bool: frames that any transient event touched."""
        if self.events is None:
            return np.zeros(len(self.frames), bool)
        return self.events.reshape(len(self.events), -1).any(axis=1)


# ----------------------------------------------------------------------------------------------
# helpers

def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std random field with correlation length ~scale pixels (cheap: cubic upsampling)."""
    h, w = shape
    lh, lw = max(2, int(math.ceil(h / scale)) + 3), max(2, int(math.ceil(w / scale)) + 3)
    low = rng.standard_normal((lh, lw)).astype(np.float32)
    up = cv2.resize(low, (int(lw * scale), int(lh * scale)), interpolation=cv2.INTER_CUBIC)
    up = up[:h, :w]
    return ((up - up.mean()) / (up.std() + 1e-8)).astype(np.float32)


def _coarse_nodes(n: int) -> np.ndarray:
    """Positions (in fine pixels) of the coarse nodes that `_upsample` interpolates from."""
    nc = -(-n // _COARSE) + 2
    return _COARSE * (np.arange(nc, dtype=np.float64) - 1) + (_COARSE - 1) / 2


def _upsample(coarse: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a field sampled at `_coarse_nodes`; exact for fields linear in x, y.

    The coarse grid carries one extra node on each side so that no output pixel is extrapolated
    (cv2.resize clamps at borders); the resized array is then cropped.
    """
    hc, wc = coarse.shape[:2]
    up = cv2.resize(coarse, (wc * _COARSE, hc * _COARSE), interpolation=cv2.INTER_LINEAR)
    return up[_COARSE:_COARSE + shape[0], _COARSE:_COARSE + shape[1]]


def _bilinear_taps(x: np.ndarray, y: np.ndarray, shape: tuple[int, int]):
    """Flat indices and weights of the bilinear interpolation of a `shape` grid at fractional indices
    (x: column, y: row); outside the grid the border cell is extended linearly (not clamped).

    The weights are complex64 with zero imaginary part, to be applied by `_interpolate_pairs` to
    (x, y) pairs viewed as complex numbers: one gather then serves both coordinates, and a product
    with a zero imaginary part rounds exactly like the real one.
    """
    h, w = shape
    x = np.ravel(x)
    y = np.ravel(y)
    x0 = np.clip(np.floor(x), 0, w - 2)
    y0 = np.clip(np.floor(y), 0, h - 2)
    fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    i = y0.astype(np.intp) * w + x0.astype(np.intp)
    weights = ((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy)
    return [i, i + 1, i + w, i + w + 1], [wt.astype(np.complex64) for wt in weights]


def _interpolate_pairs(pairs: np.ndarray, taps) -> np.ndarray:
    """Apply `_bilinear_taps` to a complex64 array of (x, y) pairs."""
    idx, wts = taps
    out = pairs.take(idx[0]) * wts[0]
    for i, wt in zip(idx[1:], wts[1:]):
        out += pairs.take(i) * wt
    return out


def _smooth_periodic(rng: np.random.Generator, n_terms: int = 2, period=(25.0, 90.0)):
    """A smooth random function of time in [-1, 1]: a sum of sinusoids with random periods/phases."""
    periods = rng.uniform(*period, size=n_terms)
    phases = rng.uniform(0, 2 * math.pi, size=n_terms)
    weights = rng.uniform(0.5, 1.0, size=n_terms)
    weights /= weights.sum()

    def f(t):
        t = np.asarray(t, dtype=np.float64)
        return sum(w * np.sin(2 * math.pi * t / p + ph) for w, p, ph in zip(weights, periods, phases))

    return f


# ----------------------------------------------------------------------------------------------
# the scene

class TRUSScene:
    """A simulated TRUS video scene; frames are rendered independently (any order, any pair).

    Build with ``TRUSScene(config, seed, view)``; ``render(t, flow_from=t-1)`` returns one frame.
    """

    def __init__(self, config: SynthConfig, seed: int, view: str = "axial"):
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        self.config, self.seed, self.view = config, int(seed), view
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), VIEWS.index(view), 0x7275]))
        self._build_geometry()
        self._build_tissue(rng)
        self._build_motion(rng)
        # Events and the sweep draw from their own stream: switching them on or off leaves the scene.
        self._build_events(np.random.default_rng(np.random.SeedSequence([int(seed), VIEWS.index(view), 0x6576])))

    # -- geometry ------------------------------------------------------------------------------
    def _build_geometry(self):
        cfg = self.config
        H, W = cfg.height, cfg.width
        self.margin = m = int(round(0.18 * max(H, W))) + 8
        self.tissue_shape = (H + 2 * m, W + 2 * m)
        ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
        if self.view == "axial":
            self.cx = (W - 1) / 2.0
            self.apex_y = (H - 1) + 0.10 * H
            self.r0 = 0.15 * H  # probe face radius: the fan starts 0.05 H above the bottom edge
            self.r1 = self.apex_y
            self.half_angle = math.radians(58.0)
            self.nd, self.nl = H, max(32, int(round(0.45 * W)))
            rr = np.hypot(xs - self.cx, self.apex_y - ys)
            th = np.arctan2(xs - self.cx, self.apex_y - ys)
            self.scan_map_i = ((rr - self.r0) / (self.r1 - self.r0) * (self.nd - 1)).astype(np.float32)
            self.scan_map_j = ((th + self.half_angle) / (2 * self.half_angle) * (self.nl - 1)).astype(np.float32)
            self.fov = (rr >= self.r0) & (rr <= self.r1) & (np.abs(th) <= self.half_angle)
            self.dr = (self.r1 - self.r0) / (self.nd - 1)
        else:
            self.y_probe = (H - 1) - 0.04 * H
            self.nd, self.nl = H, max(32, W // 2)
            self.scan_map_i = ((self.y_probe - ys) / self.y_probe * (self.nd - 1)).astype(np.float32)
            self.scan_map_j = (xs * (self.nl - 1) / (W - 1)).astype(np.float32)
            self.fov = ys <= self.y_probe
            self.dr = self.y_probe / (self.nd - 1)
        # coarse node sets on which the motion is solved: image pixels, and beam samples
        cy, cx_ = _coarse_nodes(H), _coarse_nodes(W)
        self.cart_nodes = np.stack(np.meshgrid(cx_, cy), axis=-1).astype(np.float32)  # (hc, wc, 2) x,y
        bi, bj = _coarse_nodes(self.nd), _coarse_nodes(self.nl)
        BJ, BI = np.meshgrid(bj, bi)
        bx, by = self._beam_to_image(BI, BJ)
        # beam nodes as fractional indices into the image coarse grid (tissue coordinates of beam
        # samples are interpolated from the image grid's exact inverse: rendering only)
        off = (_COARSE - 1) / 2 - _COARSE
        self.beam_in_cart = ((bx - off) / _COARSE, (by - off) / _COARSE)
        self._beam_taps = _bilinear_taps(*self.beam_in_cart, self.cart_nodes.shape[:2])
        self._node_x = np.ascontiguousarray(self.cart_nodes[..., 0]).ravel()
        self._node_y = np.ascontiguousarray(self.cart_nodes[..., 1]).ravel()
        # outside the field of view the scan conversion samples far outside the beam grid -> 0
        self.scan_map_i[~self.fov] = -1e4
        self.scan_map_j[~self.fov] = -1e4
        self.depth_of_sample = (np.arange(self.nd) * self.dr).astype(np.float32)

    def _beam_to_image(self, i, j):
        if self.view == "axial":
            r = self.r0 + (self.r1 - self.r0) * i / (self.nd - 1)
            th = -self.half_angle + 2 * self.half_angle * j / (self.nl - 1)
            return self.cx + r * np.sin(th), self.apex_y - r * np.cos(th)
        return (self.config.width - 1) * j / (self.nl - 1), self.y_probe - self.y_probe * i / (self.nd - 1)

    def _depth(self, x, y):
        """Distance from the probe face at rest (pixels); negative inside the probe."""
        if self.view == "axial":
            return np.hypot(x - self.cx, self.apex_y - y) - self.r0
        return self.y_probe - y

    # -- tissue --------------------------------------------------------------------------------
    def _build_tissue(self, rng: np.random.Generator):
        cfg, m = self.config, self.margin
        H, W = cfg.height, cfg.width
        Ht, Wt = self.tissue_shape
        ty, tx = np.mgrid[0:Ht, 0:Wt].astype(np.float32)
        tx -= m
        ty -= m
        depth = self._depth(tx, ty)

        # gland: smooth irregular walnut outline; level < 0 inside, ~ signed distance in px
        if self.view == "axial":
            gx = (W - 1) / 2 + rng.uniform(-0.05, 0.05) * W
            ax, ay = 0.30 * H * rng.uniform(0.9, 1.15), 0.21 * H * rng.uniform(0.9, 1.1)
        else:
            gx = (W - 1) / 2 + rng.uniform(-0.1, 0.1) * W
            ax, ay = 0.38 * H * rng.uniform(0.9, 1.15), 0.19 * H * rng.uniform(0.9, 1.1)
        gy = (H - 1) - 0.05 * H - 0.26 * H - ay * rng.uniform(0.95, 1.1)
        dx, dy = (tx - gx) / ax, (ty - gy) / ay
        rho, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
        boundary = np.ones_like(rho)
        for k in range(2, 6):
            boundary += rng.uniform(0.01, 0.035) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
        posterior = np.remainder(theta + math.pi / 2, 2 * math.pi) - math.pi  # angle from the probe direction, wrapped to [-pi, pi)
        boundary -= 0.10 * np.exp(-posterior**2 / (2 * 0.3**2))  # the walnut's concave back
        if self.view == "sagittal":
            boundary *= 1 + 0.15 * np.cos(theta) * int(rng.choice([-1, 1]))  # tear-drop towards the apex
        level = ((rho - boundary) * min(ax, ay)).astype(np.float32)
        self.gland_level = level
        self.gland_centre = (gx, gy)
        gland = 1.0 / (1.0 + np.exp(np.clip(level / 1.2, -30, 30)))  # soft inside-ness
        tz = 1.0 / (1.0 + np.exp(np.clip((np.hypot(dx, (ty - gy + 0.15 * ay) / ay) - 0.55) * 12, -30, 30)))

        # attenuation in Np per pixel, calibrated so that soft tissue loses attenuation_db round trip
        self.alpha0 = cfg.attenuation_db / 8.686 / (2 * (self.nd - 1) * self.dr)
        # time-gain compensation: undoes the nominal soft-tissue attenuation at each depth
        self.tgc = np.exp(2.0 * self.alpha0 * self.depth_of_sample)[:, None].astype(np.float32)
        if cfg.phantom:
            amp = np.ones((Ht, Wt), np.float32)
            alpha = np.full((Ht, Wt), self.alpha0, np.float32)
            self.calcifications = []
        else:
            bg = np.exp(0.25 * _smooth_noise(rng, (Ht, Wt), 10.0)) * (1 + 0.25 * _smooth_noise(rng, (Ht, Wt), 60.0))
            for _ in range(3):  # fascia layers roughly parallel to the probe face
                d0 = rng.uniform(0.1, 0.95) * H
                wobble = 4.0 * _smooth_noise(rng, (Ht, Wt), 80.0)
                bg += rng.uniform(0.4, 1.0) * np.exp(-((depth - d0 + wobble) / 1.5) ** 2)
            gl = 0.45 * np.exp(0.35 * _smooth_noise(rng, (Ht, Wt), 5.0)) * (1 - 0.35 * tz)
            amp = bg * (1 - gland) + gl * gland
            amp += 1.6 * np.exp(-(level / 1.6) ** 2) * (1 + 0.3 * _smooth_noise(rng, (Ht, Wt), 30.0))
            # bladder-like fluid region, deeper than the gland
            bx = gx + rng.uniform(-0.1, 0.1) * W
            by = gy - ay - 0.17 * H
            bl_level = (np.hypot((tx - bx) / (0.55 * ax * rng.uniform(1.3, 1.8)), (ty - by) / (0.13 * H)) - 1) * 0.13 * H
            bladder = 1.0 / (1.0 + np.exp(np.clip(bl_level / 1.5, -30, 30)))
            amp = amp * (1 - bladder) + 0.03 * bladder
            # rectal wall at the probe: bright mucosa, dark muscularis, bright serosa
            amp *= 1 - 0.5 * np.exp(-((depth - 0.035 * H) / (0.012 * H)) ** 2)
            amp += 1.8 * np.exp(-((depth - 0.01 * H) / 1.3) ** 2) + 1.2 * np.exp(-((depth - 0.06 * H) / 1.6) ** 2)
            amp = np.where(depth < 0, 0.02, amp)
            alpha = self.alpha0 * ((1 - bladder) * (1 + 0.15 * gland) + 0.05 * bladder)
            # calcifications inside the gland: bright specular spots that nearly block the beam
            n_calc = min(int(rng.poisson(cfg.shadow_rate)), 6)
            inside = np.argwhere(level[m:m + H, m:m + W] < -0.25 * min(ax, ay))
            self.calcifications = []
            for _ in range(n_calc if len(inside) else 0):
                cy_, cx_ = inside[rng.integers(len(inside))]
                rad = rng.uniform(1.5, 3.0) * H / 256
                spot = np.exp(-((tx - cx_) ** 2 + (ty - cy_) ** 2) / (2 * rad**2))
                amp = np.maximum(amp, 7.0 * spot)
                alpha = alpha + 0.35 * spot
                self.calcifications.append((float(cx_), float(cy_), float(rad)))
        scat = rng.standard_normal((Ht, Wt, 4)).astype(np.float32)
        scat = cv2.GaussianBlur(scat, (0, 0), 0.7)  # band-limit: bilinear sampling keeps its variance
        scat /= scat.reshape(-1, 4).std(axis=0)
        # two complex scatterer realisations, already weighted by the echogenicity
        self.scatter_table = np.ascontiguousarray(scat * amp[..., None].astype(np.float32))
        self.alpha_table = np.ascontiguousarray(alpha.astype(np.float32))
        self.log_trans_table = np.ascontiguousarray((-2.0 * self.dr * alpha).astype(np.float32))
        self.level_table = level
        # PSF in beam samples (axial along depth, lateral across lines)
        self.psf_sigma = (0.9 * H / 256 * 256 / self.nd, 1.3)
        # envelope reference: RMS of unit-amplitude speckle after the PSF (measured, cheap)
        probe = cv2.GaussianBlur(scat[:96, :96, :2], (0, 0), sigmaX=self.psf_sigma[1], sigmaY=self.psf_sigma[0])
        self.ref_rms = float(np.sqrt((probe**2).sum(-1).mean()))
        self.noise_pool = rng.standard_normal((self.nd + 32, self.nl + 32, 2)).astype(np.float32)
        self.noise_pool *= np.float32(0.002 * cfg.noise * self.ref_rms)  # complex electronic noise, ready to add
        # a wider transition for motion damping keeps the deformation gradient (and so its
        # invertibility bound) moderate at the gland boundary
        self.gland_weight = (1.0 / (1.0 + np.exp(np.clip(level / (0.04 * H), -30, 30)))).astype(np.float32)
        self._depth_table = depth

    # -- motion --------------------------------------------------------------------------------
    def _build_motion(self, rng: np.random.Generator):
        cfg = self.config
        H, W = cfg.height, cfg.width
        n = cfg.frames
        Ht, Wt = self.tissue_shape
        damp = 1.0 - cfg.gland_steadiness * self.gland_weight
        depth = np.clip(self._depth_table, 0, None) / H
        # breathing-like fields: smooth, larger deep (bladder side), mostly along the depth axis
        fields = []
        for _ in range(2):
            fx = _smooth_noise(rng, (Ht, Wt), 0.45 * H)
            fy = _smooth_noise(rng, (Ht, Wt), 0.45 * H) + 1.5 * int(rng.choice([-1, 1]))
            fields.append((fx * 0.5, fy))
        # probe pressure: tissue pushed away from the probe, decaying with depth
        if self.view == "axial":
            # radial from a point well below the apex: smooth (no singularity inside the table)
            ux = (self._tx() - self.cx)
            uy = (self._ty() - self.apex_y - 2.0 * H)
            nrm = np.hypot(ux, uy) + 1e-6
            px_, py_ = ux / nrm, uy / nrm
        else:
            px_, py_ = np.zeros((Ht, Wt), np.float32), -np.ones((Ht, Wt), np.float32)
        press = np.exp(-depth / 0.35)
        fields.append((px_ * press, py_ * press))
        amps = np.array([0.035, 0.02, 0.045]) * H * cfg.motion  # max displacement of each field (px)
        tab = []
        lips = 0.0
        for (fx, fy), a, w in zip(fields, amps, (1 + depth, 1 + depth, 1.0)):
            fx = (fx * w * damp).astype(np.float32)
            fy = (fy * w * damp).astype(np.float32)
            peak = float(np.sqrt(fx**2 + fy**2).max()) + 1e-12
            # the deformation is the bilinear interpolant of these fields on a 4-px grid; its
            # Lipschitz constant is bounded by the grid's finite differences
            fx, fy = fx[::_COARSE, ::_COARSE] * float(a / peak), fy[::_COARSE, ::_COARSE] * float(a / peak)
            g = [np.abs(np.diff(f, axis=a)).max() / _COARSE for f in (fx, fy) for a in (0, 1)]
            lips += float(math.sqrt(sum(v * v for v in g)))
            tab += [fx, fy]
        if lips >= 0.9:
            raise ValueError(f"motion={cfg.motion} is too strong: the deformation's Lipschitz bound {lips:.2f} "
                             "must stay below 0.9 for it to be invertible; lower motion")
        self.lipschitz_bound = lips
        self.deform_table = np.ascontiguousarray(np.stack(tab, axis=0), dtype=np.float32)  # (6, Hd, Wd), 4-px nodes
        self._cell_cache: dict[int, np.ndarray] = {}
        # time coefficients: breathing (quasi-periodic), pressure (slow push in [0, 1])
        breath_period = rng.uniform(40, 80)
        ph = rng.uniform(0, 2 * math.pi)
        push = _smooth_periodic(rng, 2, (80.0, 200.0))
        self._coef = lambda t: (np.sin(2 * math.pi * t / breath_period + ph),
                                0.6 * np.sin(4 * math.pi * t / breath_period + 2 * ph),
                                0.5 * (1 + push(t)))
        # rigid probe motion about the probe face centre
        self.pivot = (((W - 1) / 2, self.apex_y) if self.view == "axial" else ((W - 1) / 2, self.y_probe))
        rot, trx, try_ = _smooth_periodic(rng), _smooth_periodic(rng), _smooth_periodic(rng)
        max_rot = math.radians(2.0 if self.view == "axial" else 0.8) * cfg.motion
        self._rigid = lambda t: (max_rot * rot(t), 0.012 * W * cfg.motion * trx(t), 0.01 * H * cfg.motion * try_(t))
        # speckle decorrelation: the mixing angle drifts by ~0.15 rad per frame
        steps = cfg.decorrelation * 0.15 * (1 + 0.5 * np.sin(np.arange(n) * 0.21 + rng.uniform(0, 6.3)))
        self.mix_angle = np.concatenate([[0.0], np.cumsum(steps[1:])]) + rng.uniform(0, 2 * math.pi)
        self.noise_offsets = rng.integers(0, 33, size=(n, 2))

    # -- transient events and the freehand sweep -----------------------------------------------
    def _build_events(self, rng: np.random.Generator):
        cfg = self.config
        n, nl, nd = cfg.frames, self.nl, self.nd
        scale = cfg.width / 448.0
        # freehand sweep: a lateral back-and-forth probe translation with peak speed sweep_speed px/frame
        period = rng.uniform(60.0, 120.0)
        phase = rng.uniform(0, 2 * math.pi)
        sweep_amp = cfg.sweep_speed * scale * period / (2 * math.pi)
        self.events = []
        for kind in EVENT_KINDS:
            rate, strength = getattr(cfg, f"{kind}_rate"), getattr(cfg, f"{kind}_strength")
            count = int(rng.poisson(rate * n / 100.0)) if rate > 0 else 0
            for _ in range(count):
                lo, hi = _EVENT_DURATION[kind]
                start = int(rng.integers(0, n))
                ev = {"kind": kind, "start": start, "stop": min(n, start + int(rng.integers(lo, hi + 1))),
                      "strength": float(strength)}
                if kind == "gas_shadow":
                    ev.update(line_from=rng.uniform(0.1, 0.9) * nl, line_to=rng.uniform(0.1, 0.9) * nl,
                              half_width=rng.uniform(0.04, 0.10) * nl, row=int(rng.uniform(0.15, 0.6) * nd))
                elif kind == "contact":
                    width = rng.uniform(0.15, 0.4) * nl
                    lo_line = 0.0 if rng.random() < 0.5 else nl - width
                    ev.update(lines=(lo_line, lo_line + width), db=rng.uniform(15.0, 30.0))
                elif kind == "gain":
                    whole = rng.random() < 0.5  # the overall gain, or one TGC slider
                    ev.update(db=float(rng.choice([-1, 1])) * rng.uniform(4.0, 8.0),
                              row_centre=rng.uniform(0.2, 0.8) * nd, row_width=(np.inf if whole else rng.uniform(0.1, 0.25) * nd))
                elif kind == "interference":
                    ev.update(lines=np.sort(rng.choice(nl, size=int(rng.integers(3, 11)), replace=False)),
                              amplitude=rng.uniform(20.0, 60.0))
                elif kind == "reverberation":
                    centre, half = rng.uniform(0.3, 0.7) * nl, rng.uniform(0.15, 0.3) * nl
                    ev.update(lines=(centre - half, centre + half), spacing=int(rng.uniform(0.06, 0.12) * nd),
                              gain=rng.uniform(0.3, 0.5))
                else:  # jerk: the probe jumps in plane (rotation, translation) and out of plane
                    ev.update(rotation=math.radians(rng.uniform(0.5, 1.5)) * float(rng.choice([-1, 1])),
                              shift=(rng.uniform(3.0, 8.0) * scale * float(rng.choice([-1, 1])),
                                     rng.uniform(1.0, 4.0) * scale * float(rng.choice([-1, 1]))),
                              decorrelation=rng.uniform(0.8, 1.5))
                self.events.append(ev)
        jerks = [ev for ev in self.events if ev["kind"] == "jerk"]
        base_rigid = self._rigid

        def rigid(t):
            ang, tx, ty = base_rigid(t)
            tx = tx + sweep_amp * math.sin(2 * math.pi * t / period + phase) if sweep_amp else tx
            for ev in jerks:
                if t >= ev["start"]:  # the probe stays where the jump left it
                    s = ev["strength"]
                    ang, tx, ty = ang + s * ev["rotation"], tx + s * ev["shift"][0], ty + s * ev["shift"][1]
            return ang, tx, ty

        self._rigid = rigid
        for ev in jerks:
            self.mix_angle[ev["start"]:] += ev["strength"] * ev["decorrelation"]

    def active_events(self, t: int) -> list[dict]:
        """The transient events that touch frame t (each a dict with its kind and parameters)."""
        return [ev for ev in self.events if ev["start"] <= t < ev["stop"]]

    def _line_weights(self, lo: float, hi: float) -> np.ndarray:
        """(nl,) weights in [0, 1] of scan lines inside [lo, hi], with one-line soft edges."""
        j = np.arange(self.nl, dtype=np.float32)
        return np.clip(np.minimum(j - lo, hi - j) + 0.5, 0.0, 1.0).astype(np.float32)

    def _event_beam_weights(self, ev: dict, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Where event ev acts in the beam domain at frame t: (rows (nd,), lines (nl,)) weights in [0, 1]."""
        nd, nl = self.nd, self.nl
        rows, lines = np.ones(nd, np.float32), np.ones(nl, np.float32)
        kind = ev["kind"]
        if kind == "gas_shadow":
            u = (t - ev["start"]) / max(1, ev["stop"] - ev["start"] - 1)
            centre = ev["line_from"] + u * (ev["line_to"] - ev["line_from"])
            lines = self._line_weights(centre - ev["half_width"], centre + ev["half_width"])
            rows = (np.arange(nd) >= ev["row"] - 1).astype(np.float32)
        elif kind in ("contact", "reverberation"):
            lines = self._line_weights(*ev["lines"])
            if kind == "reverberation":
                i = np.arange(nd)
                rows = ((i >= ev["spacing"]) & (i < 5 * ev["spacing"])).astype(np.float32)
        elif kind == "gain":
            i = np.arange(nd, dtype=np.float32)
            if np.isfinite(ev["row_width"]):
                rows = np.exp(-0.5 * ((i - ev["row_centre"]) / ev["row_width"]) ** 2).astype(np.float32)
        elif kind == "interference":
            lines = np.zeros(nl, np.float32)
            lines[ev["lines"]] = 1.0
        return rows, lines

    def event_map(self, t: int) -> np.ndarray:
        """(H, W) uint8: bit k set at the pixels EVENT_KINDS[k] touches at frame t (0 outside the field of view)."""
        H, W = self.config.height, self.config.width
        beam = np.zeros((self.nd, self.nl), np.uint8)
        for ev in self.active_events(t):
            rows, lines = self._event_beam_weights(ev, t)
            beam |= (np.outer(rows, lines) > 0.05).astype(np.uint8) << EVENT_KINDS.index(ev["kind"])
        if not beam.any():
            return np.zeros((H, W), np.uint8)
        out = cv2.remap(beam, self.scan_map_j, self.scan_map_i, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=0)
        return out * self.fov

    def _tx(self):
        return np.arange(self.tissue_shape[1], dtype=np.float32)[None, :] - self.margin + np.zeros(self.tissue_shape, np.float32)

    def _ty(self):
        return np.arange(self.tissue_shape[0], dtype=np.float32)[:, None] - self.margin + np.zeros(self.tissue_shape, np.float32)

    def _cells(self, t: int) -> np.ndarray:
        """Per-cell polynomial coefficients of the displacement at frame t, (8, cells) float32.

        Within a 4-px cell the bilinear displacement is ``a + b fx + (c + d fx) fy`` (fx, fy: cell
        fractions); rows are (a, b, c, d) of dx then of dy, so one gather per point serves the value
        and the Jacobian. Rendering frame t also needs frame t-1's map (for the flow), so the last few
        frames are kept.
        """
        rec = self._cell_cache.get(t)
        if rec is None:
            c = [np.float32(v) for v in self._coef(t)]
            tab = self.deform_table
            planes = []
            for ch in (0, 1):
                f = c[0] * tab[ch] + c[1] * tab[2 + ch] + c[2] * tab[4 + ch]
                f00, f01, f10, f11 = f[:-1, :-1], f[:-1, 1:], f[1:, :-1], f[1:, 1:]
                planes += [f00, f01 - f00, f10 - f00, (f11 - f10) - (f01 - f00)]
            rec = np.stack(planes).reshape(8, -1)
            if len(self._cell_cache) >= 4:
                self._cell_cache.pop(next(iter(self._cell_cache)))
            self._cell_cache[t] = rec
        return rec

    def _eval_displacement(self, ux: np.ndarray, uy: np.ndarray, t: int, jacobian: bool = False):
        """Displacement (dx, dy) at tissue points given as flat float32 arrays, and with `jacobian`
        also its derivatives (ddx/dx, ddx/dy, ddy/dx, ddy/dy).

        Float arithmetic throughout: cv2.remap rounds positions to 1/32 px, which would make the
        displacement piecewise constant and stall the inverse.
        """
        rec = self._cells(t)
        Hd, Wd = self.deform_table.shape[1:]
        q = np.float32(1.0 / _COARSE)
        m = np.float32(self.margin)
        # clamped to the table (the margin keeps visible tissue well inside it)
        x = np.clip((ux + m) * q, 0, np.float32(Wd - 1.001))
        y = np.clip((uy + m) * q, 0, np.float32(Hd - 1.001))
        x0, y0 = x.astype(np.intp), y.astype(np.intp)  # truncation == floor: x, y >= 0
        fx, fy = x - x0, y - y0
        a, b, c, d, a2, b2, c2, d2 = rec.take(y0 * (Wd - 1) + x0, axis=1)
        cx_ = c + d * fx
        cy_ = c2 + d2 * fx
        dx = a + b * fx + cx_ * fy
        dy = a2 + b2 * fx + cy_ * fy
        if not jacobian:
            return dx, dy
        return dx, dy, q * (b + d * fy), q * cx_, q * (b2 + d2 * fy), q * cy_

    def _displacement(self, u: np.ndarray, t: int) -> np.ndarray:
        dx, dy = self._eval_displacement(np.ravel(u[..., 0]).astype(np.float32), np.ravel(u[..., 1]).astype(np.float32), t)
        return np.stack([dx, dy], axis=-1).reshape(u.shape)

    def _forward_xy(self, ux: np.ndarray, uy: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = self._eval_displacement(ux, uy, t)
        ang, tx, ty = self._rigid(t)
        ca, sa = math.cos(ang), math.sin(ang)
        ox, oy = self.pivot
        x = ux + dx - np.float32(ox)
        y = uy + dy - np.float32(oy)
        return (ca * x - sa * y + (ox + tx)).astype(np.float32), (sa * x + ca * y + (oy + ty)).astype(np.float32)

    def _inverse_xy(self, px: np.ndarray, py: np.ndarray, t: int, tol: float = 2e-4, max_iter: int = 30):
        """Phi_t^-1 of flat float32 image coordinates, by Newton's method on u + D(u) = v.

        The deformation's Lipschitz bound (< 0.9) keeps I + J(u) invertible everywhere, and D is
        bilinear within a cell, so Newton converges in 3-4 steps where plain fixed-point iteration
        needed 5-7. Stops when the largest step is below `tol` px.
        """
        ang, tx, ty = self._rigid(t)
        ca, sa = math.cos(ang), math.sin(ang)
        ox, oy = self.pivot
        x = px - np.float32(ox + tx)
        y = py - np.float32(oy + ty)
        vx = (ca * x + sa * y + ox).astype(np.float32)
        vy = (-sa * x + ca * y + oy).astype(np.float32)
        ux, uy = vx.copy(), vy.copy()
        for _ in range(max_iter):
            dx, dy, jxx, jxy, jyx, jyy = self._eval_displacement(ux, uy, t, jacobian=True)
            rx = ux + dx - vx
            ry = uy + dy - vy
            jxx += 1
            jyy += 1
            det = jxx * jyy - jxy * jyx
            sx = (jyy * rx - jxy * ry) / det
            sy = (jxx * ry - jyx * rx) / det
            ux -= sx
            uy -= sy
            step = max(float(np.abs(sx).max()), float(np.abs(sy).max()))
            if step < tol:
                return ux, uy
        raise RuntimeError(f"deformation inverse did not converge at frame {t} (last step {step:.2e} px)")

    def forward_map(self, u: np.ndarray, t: int) -> np.ndarray:
        """Phi_t: tissue coordinates (..., 2) -> image coordinates at frame t."""
        u = np.asarray(u, dtype=np.float32)
        x, y = self._forward_xy(np.ravel(u[..., 0]), np.ravel(u[..., 1]), t)
        return np.stack([x, y], axis=-1).reshape(u.shape)

    def inverse_map(self, p: np.ndarray, t: int, tol: float = 2e-4, max_iter: int = 30) -> np.ndarray:
        """Phi_t^-1: image coordinates (..., 2) -> tissue coordinates (Newton's method, to `tol` px)."""
        p = np.asarray(p, dtype=np.float32)
        x, y = self._inverse_xy(np.ravel(p[..., 0]), np.ravel(p[..., 1]), t, tol, max_iter)
        return np.stack([x, y], axis=-1).reshape(p.shape)

    # -- rendering -----------------------------------------------------------------------------
    def render(self, t: int, flow_from: int | None = -1):
        """Render frame t. Returns (frame, mask, flow, envelope).

        flow is the backward flow from frame `flow_from` to t (default t-1; zeros for t=0, None when
        flow_from is None); envelope is the beam-domain envelope before log compression.
        """
        cfg = self.config
        H, W = cfg.height, cfg.width
        if not 0 <= t < cfg.frames:
            raise ValueError(f"frame index must be in [0, {cfg.frames}), got {t}")
        m = self.margin
        # exact tissue coordinates of the image nodes, as (x, y) indices into the tissue tables
        ux, uy = self._inverse_xy(self._node_x, self._node_y, t)
        hc, wc = self.cart_nodes.shape[:2]
        uc = np.empty((hc, wc, 2), np.float32)
        uc[..., 0] = (ux + np.float32(m)).reshape(hc, wc)
        uc[..., 1] = (uy + np.float32(m)).reshape(hc, wc)
        # beam domain: sample the tissue tables where each beam sample sits in the tissue
        hb, wb = self.beam_in_cart[0].shape
        ubn = _interpolate_pairs(uc.reshape(-1).view(np.complex64), self._beam_taps)
        ub = _upsample(ubn.view(np.float32).reshape(hb, wb, 2), (self.nd, self.nl))
        s = cv2.remap(self.scatter_table, ub, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        # the attenuation table is stored as -2 dr alpha: its column sums are log round-trip transmissions
        log_trans = cv2.remap(self.log_trans_table, ub, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        events = [(ev, *self._event_beam_weights(ev, t)) for ev in self.active_events(t)]
        for ev, rows, lines in events:
            if ev["kind"] == "gas_shadow":
                # gas reflects almost everything: -6 Np (~ -52 dB round trip) just below the interface
                log_trans[min(ev["row"] + 1, self.nd - 1)] -= np.float32(6.0 * ev["strength"]) * lines
        ca, sa = math.cos(self.mix_angle[t]), math.sin(self.mix_angle[t])
        # out-of-plane decorrelation: rotate between the two realisations (keeps the variance).
        # Written out rather than as a BLAS matmul, whose rounding can depend on threads and alignment.
        # The (re, im) pairs are viewed as complex64: products with a real factor (zero imaginary
        # part) round exactly like the real products, and numpy then loops over whole pixels.
        pairs = s.view(np.complex64)  # (nd, nl, 2): realisation a, realisation b
        iq = pairs[..., 0] * np.float32(ca)
        iq += pairs[..., 1] * np.float32(sa)
        iq = cv2.GaussianBlur(iq.view(np.float32).reshape(self.nd, self.nl, 2), (0, 0), sigmaX=self.psf_sigma[1], sigmaY=self.psf_sigma[0])
        # round trip attenuation along each beam, then electronic noise, then TGC
        iqc = iq.view(np.complex64)[..., 0]
        iqc *= np.exp(np.cumsum(log_trans, axis=0))
        for ev, rows, lines in events:
            s = np.float32(ev["strength"])
            if ev["kind"] == "gas_shadow":  # the bright specular interface itself
                r = ev["row"]
                iqc[max(r - 1, 0):r + 1] *= 1 + 4 * s * lines
            elif ev["kind"] == "contact":  # air under the probe face: little energy gets in or back
                iqc *= np.exp(np.float32(-ev["db"] / 8.686) * s * lines)[None, :]
        oy, ox = self.noise_offsets[t]
        iq += self.noise_pool[oy:oy + self.nd, ox:ox + self.nl]
        for ev, rows, lines in events:
            if ev["kind"] == "interference":
                # its own generator per (video, frame, event): frames render identically in any order
                burst = np.random.default_rng([self.seed, t, ev["start"], 0x696E]).standard_normal(
                    (self.nd, len(ev["lines"]), 2)).astype(np.float32)
                iq[:, ev["lines"]] += burst * np.float32(ev["amplitude"] * ev["strength"] * 0.002 * self.ref_rms)
        # Not cv2.magnitude: its SIMD path rounds differently with the buffer's alignment, and the
        # simulator must be bitwise reproducible (an exact resume relies on it). sqrt is correctly rounded.
        sq = iq * iq
        env = np.sqrt(sq[..., 0] + sq[..., 1])
        for ev, rows, lines in events:
            if ev["kind"] == "reverberation":
                # echoes bouncing between the probe face and the near field arrive at multiples of its depth
                L = ev["spacing"]
                near = env[:L].copy()
                for k in range(1, 5):
                    lo, hi = k * L, min((k + 1) * L, self.nd)
                    if lo >= hi:
                        break
                    env[lo:hi] += np.float32((ev["gain"] * min(ev["strength"], 2.0)) ** k) * near[:hi - lo] * lines
        env *= self.tgc
        for ev, rows, lines in events:
            if ev["kind"] == "gain":
                env *= (10.0 ** (ev["db"] * ev["strength"] * rows / 20.0)).astype(np.float32)[:, None]
        # log compression to the display range; tissue of unit echogenicity sits ~20 dB below white
        disp = env * np.float32(0.1 / self.ref_rms)
        disp += np.float32(1e-12)
        np.log(disp, out=disp)
        disp *= np.float32(20.0 / math.log(10.0) / cfg.dynamic_range_db)
        disp += 1.0
        np.clip(disp, 0.0, 1.0, out=disp)
        frame = cv2.remap(disp, self.scan_map_j, self.scan_map_i, cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        # image domain: exact mask and flow from the same maps
        level = cv2.remap(self.level_table, _upsample(uc, (H, W)), None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mask = ((level < 0) & self.fov).astype(np.uint8)
        flow = None
        if flow_from is not None:
            src = t - 1 if flow_from == -1 else flow_from
            if t == 0 and flow_from == -1:
                flow = np.zeros((2, H, W), np.float32)
            else:
                if not 0 <= src < cfg.frames:
                    raise ValueError(f"flow_from must be a frame index in [0, {cfg.frames}), got {src}")
                fx, fy = self._forward_xy(ux, uy, src)
                flow = np.empty((2, H, W), np.float32)
                flow[0] = _upsample((self._node_x - fx).reshape(hc, wc), (H, W))
                flow[1] = _upsample((self._node_y - fy).reshape(hc, wc), (H, W))
        return frame, mask, flow, env


def simulate_video(config: SynthConfig | None = None, seed: int = 0, view: str | None = None) -> SynthVideo:
    """Simulate one video (all `config.frames` frames). Deterministic in (config, seed, view)."""
    config = config or SynthConfig()
    view = view or config.views[0]
    scene = TRUSScene(config, seed, view)
    T, H, W = config.frames, config.height, config.width
    frames = np.empty((T, H, W), np.float32)
    masks = np.empty((T, H, W), np.uint8)
    flows = np.empty((T, 2, H, W), np.float32)
    env = np.empty((T, scene.nd, scene.nl), np.float32) if config.keep_envelope else None
    events = np.zeros((T, H, W), np.uint8)
    for t in range(T):
        f, mk, fl, e = scene.render(t)
        frames[t], masks[t], flows[t] = f, mk, fl
        events[t] = scene.event_map(t)
        if env is not None:
            env[t] = e
    return SynthVideo(frames=frames, masks=masks, flows=flows, fov=scene.fov.copy(), view=view,
                      spacing=config.spacing, seed=int(seed), envelope=env, events=events,
                      meta={"calcifications": scene.calcifications, "lipschitz_bound": scene.lipschitz_bound,
                            "events": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in ev.items()}
                                       for ev in scene.events]})
