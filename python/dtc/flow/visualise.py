"""Flow pictures for notebooks: the colour-wheel coding (Baker et al., Middlebury) and arrow plots."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["colour_wheel", "flow_to_rgb", "plot_flow_arrows"]

# Hue segments of the Middlebury wheel (red-yellow, yellow-green, green-cyan, cyan-blue,
# blue-magenta, magenta-red): more steps where the eye separates hues better.
_SEGMENTS = (15, 6, 4, 11, 13, 6)


def colour_wheel() -> np.ndarray:
    """``(55, 3)`` float RGB in [0, 1], evenly spaced in flow direction starting at +x (red)."""
    colours = []
    primaries = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1], [1, 0, 0]], float)
    for k, steps in enumerate(_SEGMENTS):
        t = np.arange(steps)[:, None] / steps
        colours.append((1 - t) * primaries[k] + t * primaries[k + 1])
    return np.concatenate(colours)


def flow_to_rgb(flow, max_magnitude: float | None = None) -> np.ndarray:
    """Colour-code one flow field: hue = direction, saturation = magnitude / ``max_magnitude``.

    Args:
        flow: ``(2, H, W)`` tensor or array (dx, dy in pixels).
        max_magnitude: magnitude shown fully saturated; default the field's largest finite magnitude.

    Returns:
        ``(H, W, 3)`` uint8 RGB. Non-finite vectors are drawn black; zero flow is white.
    """
    f = flow.detach().cpu().numpy() if isinstance(flow, torch.Tensor) else np.asarray(flow)
    if f.ndim != 3 or f.shape[0] != 2:
        raise ValueError(f"flow must have shape (2, H, W), got {f.shape}")
    dx, dy = f[0].astype(np.float64), f[1].astype(np.float64)
    finite = np.isfinite(dx) & np.isfinite(dy)
    dx, dy = np.where(finite, dx, 0), np.where(finite, dy, 0)
    mag = np.hypot(dx, dy)
    if max_magnitude is None:
        max_magnitude = float(mag.max()) if mag.size else 0.0
    if max_magnitude <= 0:
        max_magnitude = 1.0
    wheel = colour_wheel()
    n = len(wheel)
    # Direction angle in [0, 1) turns, 0 along +x, increasing towards +y (image down).
    turns = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
    pos = turns * n
    i0 = np.floor(pos).astype(int) % n
    i1 = (i0 + 1) % n
    t = (pos - np.floor(pos))[..., None]
    hue = (1 - t) * wheel[i0] + t * wheel[i1]
    sat = np.clip(mag / max_magnitude, 0, 1)[..., None]
    rgb = 1 - sat * (1 - hue)
    rgb[~finite] = 0
    return np.round(rgb * 255).astype(np.uint8)


def plot_flow_arrows(ax, flow, image=None, *, step: int = 16, scale: float = 1.0, colour: str = "yellow"):
    """Draw flow arrows every ``step`` pixels on a matplotlib axis, over ``image`` if given.

    Arrows point from p to p + scale·F(p) in image coordinates (y down). Returns the quiver artist.
    """
    f = flow.detach().cpu().numpy() if isinstance(flow, torch.Tensor) else np.asarray(flow)
    if f.ndim != 3 or f.shape[0] != 2:
        raise ValueError(f"flow must have shape (2, H, W), got {f.shape}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    H, W = f.shape[1:]
    if image is not None:
        img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if img.ndim == 3 and img.shape[0] in (1, 3):
            img = np.moveaxis(img, 0, -1)
        ax.imshow(img.squeeze(), cmap="gray" if img.ndim == 2 or img.shape[-1] == 1 else None)
    ys, xs = np.mgrid[step // 2:H:step, step // 2:W:step]
    u, v = f[0][ys, xs] * scale, f[1][ys, xs] * scale
    artist = ax.quiver(xs, ys, u, v, color=colour, angles="xy", scale_units="xy", scale=1.0, width=0.003)
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)
    return artist
