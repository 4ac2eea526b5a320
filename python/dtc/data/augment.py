"""Sequence-consistent augmentation of a window dictionary (see `dtc.data.dataset`).

One geometric transform (flips, rotation, scale, shift) is drawn per window and applied to every
frame; photometric changes (brightness, contrast, gamma, blur, noise) are drawn once per window
("shared") or per frame ("per_frame"). A ground-truth flow is transformed consistently.

Convention: the geometric transform is an affine map A of pixel coordinates (align_corners=True
pixel centres), output(p') = input(A^-1 p'). For backward flows frame_t(p) = frame_{t-1}(p - F(p)),
the transformed flow is F'(p') = L F(A^-1 p'), L the linear part of A (so a horizontal flip negates
dx). Pixels that come from outside the input are 0 in images and masks; flows use border padding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class SequenceAugment:
    """Callable on a window dict; returns a new dict. Deterministic given `generator`.

    hflip, vflip: probabilities; rotate: max degrees; scale: max relative change; shift: max
    fraction of the size; brightness, contrast: max additive / relative change; gamma: max
    log-gamma; blur_sigma: max Gaussian sigma (pixels; drawn with probability 0.5); noise: max std;
    photometric: "shared" (one draw per window) or "per_frame".
    """

    def __init__(self, hflip: float = 0.5, vflip: float = 0.0, rotate: float = 10.0, scale: float = 0.1,
                 shift: float = 0.05, brightness: float = 0.1, contrast: float = 0.1, gamma: float = 0.0,
                 blur_sigma: float = 0.0, noise: float = 0.0, photometric: str = "shared",
                 generator: torch.Generator | None = None):
        if photometric not in ("shared", "per_frame"):
            raise ValueError(f"photometric must be 'shared' or 'per_frame', got {photometric!r}")
        for name, p in (("hflip", hflip), ("vflip", vflip)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        self.__dict__.update(hflip=hflip, vflip=vflip, rotate=rotate, scale=scale, shift=shift,
                             brightness=brightness, contrast=contrast, gamma=gamma, blur_sigma=blur_sigma,
                             noise=noise, photometric=photometric)
        self.generator = generator

    def _u(self, lo=-1.0, hi=1.0, n=()):
        return lo + (hi - lo) * torch.rand(n, generator=self.generator, dtype=torch.float64)

    def draw_affine(self, H: int, W: int) -> torch.Tensor:
        """A 3x3 affine of pixel coordinates (output = A @ input)."""
        cx, cy = (W - 1) / 2, (H - 1) / 2
        ang = math.radians(float(self._u()) * self.rotate)
        s = 1.0 + float(self._u()) * self.scale
        tx, ty = float(self._u()) * self.shift * W, float(self._u()) * self.shift * H
        fx = -1.0 if float(self._u(0, 1)) < self.hflip else 1.0
        fy = -1.0 if float(self._u(0, 1)) < self.vflip else 1.0
        c, si = math.cos(ang) * s, math.sin(ang) * s
        L = torch.tensor([[c, -si], [si, c]], dtype=torch.float64) @ torch.diag(torch.tensor([fx, fy], dtype=torch.float64))
        A = torch.eye(3, dtype=torch.float64)
        A[:2, :2] = L
        centre = torch.tensor([cx, cy], dtype=torch.float64)
        A[:2, 2] = centre - L @ centre + torch.tensor([tx, ty], dtype=torch.float64)
        return A

    @staticmethod
    def _grid(A: torch.Tensor, H: int, W: int) -> torch.Tensor:
        Ainv = torch.linalg.inv(A)
        ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
        sx = Ainv[0, 0] * xs + Ainv[0, 1] * ys + Ainv[0, 2]
        sy = Ainv[1, 0] * xs + Ainv[1, 1] * ys + Ainv[1, 2]
        return torch.stack([2 * sx / (W - 1) - 1, 2 * sy / (H - 1) - 1], -1).float()[None]

    def apply_geometry(self, item: dict, A: torch.Tensor) -> dict:
        img = item["image"]
        T, _, H, W = img.shape
        grid = self._grid(A, H, W).expand(T, -1, -1, -1)
        out = dict(item)
        out["image"] = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out["mask"] = F.grid_sample(item["mask"], grid, mode="nearest", padding_mode="zeros", align_corners=True)
        if "flow" in item:
            fl = F.grid_sample(item["flow"], grid, mode="bilinear", padding_mode="border", align_corners=True)
            L = A[:2, :2].float()
            out["flow"] = torch.einsum("ij,tjhw->tihw", L, fl).contiguous()
        if "spacing" in item:  # isotropic scaling changes the physical size of a pixel
            s = float(torch.sqrt(torch.abs(torch.det(A[:2, :2]))))
            out["spacing"] = item["spacing"] / s
        return out

    def apply_photometric(self, img: torch.Tensor) -> torch.Tensor:
        T = img.shape[0]
        n = 1 if self.photometric == "shared" else T
        b = (self._u(n=(n,)) * self.brightness).float().view(n, 1, 1, 1)
        c = (1 + self._u(n=(n,)) * self.contrast).float().view(n, 1, 1, 1)
        g = torch.exp(self._u(n=(n,)) * self.gamma).float().view(n, 1, 1, 1)
        mean = img.mean(dim=(1, 2, 3), keepdim=True)
        out = ((img - mean) * c + mean + b).clamp(0, 1) ** g
        if self.blur_sigma > 0:
            sig = self._u(0, self.blur_sigma, (n,))
            use = self._u(0, 1, (n,)) < 0.5
            frames = []
            for t in range(T):
                k = t if n > 1 else 0
                frames.append(gaussian_blur(out[t], float(sig[k])) if use[k] and sig[k] > 0.3 else out[t])
            out = torch.stack(frames)
        if self.noise > 0:
            std = (self._u(0, self.noise, (n,))).float().view(n, 1, 1, 1)
            out = out + std * torch.randn(out.shape, generator=self.generator)
        return out.clamp(0, 1)

    def __call__(self, item: dict) -> dict:
        _, _, H, W = item["image"].shape
        out = self.apply_geometry(item, self.draw_affine(H, W))
        out["image"] = self.apply_photometric(out["image"])
        return out


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of each channel of ``x (C, H, W)``, radius ``ceil(3 sigma)``, replicated
    borders (an image border must not read as an edge)."""
    r = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    C = x.shape[0]
    y = F.conv2d(F.pad(x[None], (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)
    return y[0]
