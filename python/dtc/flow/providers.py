"""Flow providers: where the training step gets the flow of each adjacent frame pair from.

Convention (every provider):
    ``provider(images, batch) -> flows``; ``images`` ``(B, T, 3, H, W)`` float RGB in [0, 1];
    ``flows`` ``(B, T, 2, H, W)`` float32 on ``images``' device, pixels, channel 0 = dx, 1 = dy;
    ``flows[:, 0] = 0`` and ``flows[:, t]`` (t >= 1) is the flow of the pair (t−1, t) that the
    losses use in the backward warp ``W(A)(p) = A(p − F(p))`` to carry frame t−1 into frame t
    (docs/method.md §2.5).

Direction. The authors computed ``calcOpticalFlowFarneback(prev=frame_{t−1}, next=frame_t)`` and
used it directly in that warp: a first-order approximation, because that flow is sampled at frame
t−1's pixels while the warp evaluates it at frame t's. ``direction="forward"`` (the default, the
spec's) reproduces it; ``direction="backward"`` computes the exact backward flow
``F = −farneback(frame_t, frame_{t−1})`` (same cost), whose convention equals the simulator's
ground truth (``frame_t(p) ≈ frame_{t−1}(p − F(p))``).
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from dtc.io import atomic_write_npy

from dtc.flow.farneback import (
    FARNEBACK_DEFAULTS,
    PRESETS,
    farneback,
    farneback_opencv,
    opencv_cpp_available,
    preprocess,
    reference_preprocess_frame,
)

__all__ = ["FlowProvider", "GroundTruthFlow", "FarnebackFlow", "OpenCVFlow", "CachedFlow", "make_flow_provider"]

DIRECTIONS = ("forward", "backward")
OPENCV_BACKENDS = ("auto", "cpp", "python")


def _check_images(images) -> tuple[int, int, int, int]:
    if not isinstance(images, torch.Tensor) or images.dim() != 5 or images.shape[2] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must have shape (B, T, 3, H, W) (RGB in [0, 1]), got {shape}")
    B, T, _, H, W = images.shape
    if T < 1:
        raise ValueError(f"images must hold at least one frame per window, got T={T}")
    return B, T, H, W


def _check_params(params: dict) -> dict:
    unknown = sorted(set(params) - set(FARNEBACK_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown Farneback parameter(s) {unknown}; expected some of {sorted(FARNEBACK_DEFAULTS)}")
    return {**FARNEBACK_DEFAULTS, **params}


def _window_pairs(grey: torch.Tensor, B: int, T: int, H: int, W: int, direction: str, flow_fn, params: dict):
    """Flows of the B·(T−1) adjacent pairs of ``grey`` ``(B·T, 1, H, W)`` in one call of ``flow_fn``."""
    grey = grey.view(B, T, 1, H, W)
    earlier = grey[:, :-1].reshape(B * (T - 1), 1, H, W)
    later = grey[:, 1:].reshape(B * (T - 1), 1, H, W)
    if direction == "forward":
        return flow_fn(earlier, later, **params)
    return -flow_fn(later, earlier, **params)


def _assemble(pair_flows: torch.Tensor, B: int, T: int, H: int, W: int, device) -> torch.Tensor:
    flows = torch.zeros(B, T, 2, H, W, dtype=torch.float32, device=device)
    if T > 1:
        flows[:, 1:] = pair_flows.view(B, T - 1, 2, H, W).to(device)
    return flows


class FlowProvider:
    """Base class: ``__call__(images (B,T,3,H,W), batch: dict) -> flows (B,T,2,H,W)``."""

    def __call__(self, images: torch.Tensor, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def backward_flows(self, images: torch.Tensor, batch: dict) -> torch.Tensor:
        """``(B, T, 2, H, W)``: index ``t`` holds the flow of the reversed pair, frame ``t`` to ``t-1`` (what the
        forward-backward occlusion test reads); index 0 is zero."""
        # The provider on the time-reversed window gives, at reversed index s, the flow from frame
        # T-s to T-1-s; reordered, index t holds the flow from frame t to t-1.
        reversed_batch = {**batch, "frame_index": batch["frame_index"].flip(1)} if "frame_index" in batch else batch
        rev = self(images.flip(1), reversed_batch)
        flows_backward = torch.zeros_like(rev)
        flows_backward[:, 1:] = rev[:, 1:].flip(1)
        return flows_backward

    def cache_key(self) -> str:
        """A string that identifies what this provider computes (used by :class:`CachedFlow`)."""
        return type(self).__name__


class GroundTruthFlow(FlowProvider):
    """The dataset's ground-truth flow ``batch["flow"]`` (the simulator's is exactly the backward flow)."""

    def __call__(self, images, batch):
        B, T, H, W = _check_images(images)
        if "flow" not in batch:
            raise KeyError("GroundTruthFlow: the batch has no 'flow' entry; this dataset has no ground-truth flow "
                           "(use flow provider 'farneback' or 'opencv')")
        flow = batch["flow"]
        if not isinstance(flow, torch.Tensor) or tuple(flow.shape) != (B, T, 2, H, W):
            shape = tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__
            raise ValueError(f"GroundTruthFlow: batch['flow'] must have shape {(B, T, 2, H, W)}, got {shape}")
        return flow.to(device=images.device, dtype=torch.float32)

    def backward_flows(self, images, batch, iterations: int = 20):
        """The reversed pairs' flows, by inverting the ground truth: ``B(q) = -F(q - B(q))`` (frame ``t-1``'s
        point ``q`` is frame ``t``'s ``q - B(q)``), solved by fixed-point iteration with bilinear sampling
        (a contraction wherever the flow's gradient is below 1, as for any motion that keeps tissue in order)."""
        from dtc.flow.occlusion import sample_flow

        flows = self(images, batch)
        B, T, _, H, W = flows.shape
        forward = flows[:, 1:].reshape(-1, 2, H, W)
        inverse = -forward
        for _ in range(iterations):
            inverse = -sample_flow(forward, -inverse)
        out = torch.zeros_like(flows)
        out[:, 1:] = inverse.view(B, T - 1, 2, H, W)
        return out


class FarnebackFlow(FlowProvider):
    """dtc's Farnebäck op on the images' device, all B·(T−1) pairs of a batch in one call.

    Args:
        preset: ``"dtc"`` (raw grey in [0, 1], stays on the device) or ``"reference"`` (the authors'
            normalise/clip/bilateral/CLAHE/blur chain, computed with OpenCV on the CPU).
        device: where the flow is computed (default: the images' device); returned on the images'.
        direction: ``"forward"`` (the authors') or ``"backward"`` (exact); see the module docstring.
        **params: Farnebäck parameters of :func:`dtc.flow.farneback` (defaults: the authors').
    """

    def __init__(self, preset: str = "dtc", device=None, direction: str = "forward", **params):
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.preset, self.direction = preset, direction
        self.device = torch.device(device) if device is not None else None
        self.params = _check_params(params)

    def cache_key(self) -> str:
        return json.dumps({"provider": "farneback", "preset": self.preset, "direction": self.direction, **self.params},
                          sort_keys=True)

    def __call__(self, images, batch=None):
        B, T, H, W = _check_images(images)
        device = self.device or images.device
        if T == 1:
            return _assemble(None, B, T, H, W, images.device)
        grey = preprocess(images.to(device).reshape(B * T, 3, H, W), self.preset)
        pair = _window_pairs(grey, B, T, H, W, self.direction, farneback, self.params)
        return _assemble(pair, B, T, H, W, images.device)


class OpenCVFlow(FlowProvider):
    """The authors' path: OpenCV's ``calcOpticalFlowFarneback`` (+ median) on the CPU.

    Args:
        preset, direction, **params: as :class:`FarnebackFlow`.
        backend: ``"cpp"``: dtc's C++ op over OpenCV C++ (:func:`dtc.flow.farneback_opencv`), all
            B·(T−1) pairs of a batch in one call, parallel over the pairs, GIL released; needs dtc
            built with OpenCV C++. ``"python"``: the ``cv2`` loop, one pair at a time in Python.
            ``"auto"`` (default): ``"cpp"`` when ``dtc.build_info()["opencv"]`` is true, else
            ``"python"`` with a warning that says so. :attr:`backend_used` tells which ran.

    Both backends compute the same flow up to float rounding (they may link different OpenCV
    versions), so they share one cache key.
    """

    def __init__(self, preset: str = "dtc", direction: str = "forward", backend: str = "auto", **params):
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if backend not in OPENCV_BACKENDS:
            raise ValueError(f"backend must be one of {OPENCV_BACKENDS}, got {backend!r}")
        self.preset, self.direction, self.backend = preset, direction, backend
        self.params = _check_params(params)
        self.backend_used: str | None = None  # resolved on the first call (needs the compiled core)

    def _resolve_backend(self) -> str:
        if self.backend_used is None:
            if self.backend == "python":
                self.backend_used = "python"
            elif self.backend == "cpp":
                if not opencv_cpp_available():
                    raise RuntimeError("OpenCVFlow(backend='cpp') needs dtc built with OpenCV C++ "
                                       "(dtc.build_info()['opencv'] is False); install libopencv-dev and rebuild "
                                       "dtc, or use backend='python'")
                self.backend_used = "cpp"
            else:
                self.backend_used = "cpp" if opencv_cpp_available() else "python"
                if self.backend_used == "python":
                    warnings.warn("OpenCVFlow: dtc was built without OpenCV C++ (dtc.build_info()['opencv'] is "
                                  "False), so flow is computed by the Python cv2 loop, one pair at a time (slower); "
                                  "install libopencv-dev and rebuild dtc for the batched C++ path", stacklevel=3)
        return self.backend_used

    def cache_key(self) -> str:
        return json.dumps({"provider": "opencv", "preset": self.preset, "direction": self.direction, **self.params},
                          sort_keys=True)

    def _frame(self, rgb: np.ndarray) -> np.ndarray:
        if self.preset == "reference":
            return reference_preprocess_frame(rgb)
        import cv2

        # Same input as the op's dtc preset: grey [0, 1] on the 0..255 scale, not quantised.
        return cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2GRAY) * np.float32(255)

    def pair(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Flow ``(2, H, W)`` of one pair of preprocessed frames, OpenCV convention ``a(p) ≈ b(p + F)``."""
        import cv2

        p = self.params
        flags = cv2.OPTFLOW_FARNEBACK_GAUSSIAN if p["gaussian_window"] else 0
        f = cv2.calcOpticalFlowFarneback(a, b, None, p["pyr_scale"], p["levels"], p["winsize"], p["iterations"],
                                         p["poly_n"], p["poly_sigma"], flags)
        if p["median"] in (3, 5):
            f = np.stack([cv2.medianBlur(np.ascontiguousarray(f[..., c]), p["median"]) for c in range(2)], -1)
        return np.ascontiguousarray(f.transpose(2, 0, 1))

    def __call__(self, images, batch=None):
        B, T, H, W = _check_images(images)
        if self._resolve_backend() == "cpp":
            if T == 1:
                return _assemble(None, B, T, H, W, images.device)
            grey = preprocess(images.detach().to("cpu").reshape(B * T, 3, H, W), self.preset)
            pair = _window_pairs(grey, B, T, H, W, self.direction, farneback_opencv, self.params)
            return _assemble(pair, B, T, H, W, images.device)
        frames = images.detach().to("cpu", torch.float32).permute(0, 1, 3, 4, 2).numpy()
        out = np.zeros((B, T, 2, H, W), np.float32)
        for b in range(B):
            pre = [self._frame(frames[b, t]) for t in range(T)]
            for t in range(1, T):
                if self.direction == "forward":
                    out[b, t] = self.pair(pre[t - 1], pre[t])
                else:
                    out[b, t] = -self.pair(pre[t], pre[t - 1])
        return torch.from_numpy(out).to(images.device)


class CachedFlow(FlowProvider):
    """Computes flow once per (video, frame pair) with ``inner`` and reuses it on later epochs.

    Files: ``root/<inner settings hash>/<video_id>/<frame_a>_<frame_b>_<H>x<W>.npy`` (float32
    ``(2, H, W)``), written atomically. Needs ``batch["video_id"]`` (str or list of B str) and
    ``batch["frame_index"]`` ``(B, T)``. A window with any pair missing is computed with ``inner``
    (only those windows) and its pairs stored. Cached flows are only valid for unaugmented frames:
    do not cache when the frames are augmented per epoch.
    """

    def __init__(self, root, inner: FlowProvider):
        if not isinstance(inner, FlowProvider):
            raise TypeError(f"inner must be a FlowProvider, got {type(inner).__name__}")
        self.inner = inner
        digest = hashlib.sha1(inner.cache_key().encode()).hexdigest()[:12]
        self.root = Path(root) / digest
        self.hits = 0
        self.misses = 0

    def cache_key(self) -> str:
        return self.inner.cache_key()

    def _paths(self, video_id: str, frames, H: int, W: int) -> list[Path]:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(video_id)) or "_"
        return [self.root / safe / f"{int(frames[t - 1])}_{int(frames[t])}_{H}x{W}.npy" for t in range(1, len(frames))]

    def __call__(self, images, batch):
        B, T, H, W = _check_images(images)
        for key in ("video_id", "frame_index"):
            if key not in batch:
                raise KeyError(f"CachedFlow: the batch has no {key!r} entry; caching needs video ids and frame indices")
        ids = batch["video_id"]
        ids = [ids] * B if isinstance(ids, str) else list(ids)
        frame_index = torch.as_tensor(batch["frame_index"]).reshape(B, T).tolist()
        if len(ids) != B:
            raise ValueError(f"CachedFlow: batch['video_id'] has {len(ids)} entries for a batch of {B}")
        out = np.zeros((B, T, 2, H, W), np.float32)
        missing = []
        for b in range(B):
            try:
                for t, path in enumerate(self._paths(ids[b], frame_index[b], H, W), start=1):
                    arr = np.load(path)
                    if arr.shape != (2, H, W):
                        raise FileNotFoundError(path)
                    out[b, t] = arr
                self.hits += 1
            except (FileNotFoundError, ValueError, OSError):
                missing.append(b)
        if missing:
            self.misses += len(missing)
            sub_batch = {k: v for k, v in batch.items() if k != "flow"}
            if "flow" in batch:
                sub_batch["flow"] = batch["flow"][missing]
            computed = self.inner(images[missing], sub_batch).detach().to("cpu", torch.float32).numpy()
            for j, b in enumerate(missing):
                out[b] = computed[j]
                for t, path in enumerate(self._paths(ids[b], frame_index[b], H, W), start=1):
                    atomic_write_npy(path, np.ascontiguousarray(computed[j, t]))
        return torch.from_numpy(out).to(images.device)


def make_flow_provider(name: str, **kw) -> FlowProvider:
    """A flow provider by name; ``kw`` go to the class.

    Names: ``"gt"`` (:class:`GroundTruthFlow`), ``"farneback"`` (:class:`FarnebackFlow`, dtc's op on
    the images' device), ``"opencv"`` (:class:`OpenCVFlow`: OpenCV's Farnebäck on the CPU, through
    the batched C++ op when dtc was built with OpenCV C++, else the Python cv2 loop; ``backend=``
    forces one), ``"cached:<inner>"`` (:class:`CachedFlow` around ``<inner>``; needs ``root=``).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name.startswith("cached:"):
        if "root" not in kw:
            raise ValueError("make_flow_provider('cached:...') needs root=<cache folder>")
        root = kw.pop("root")
        return CachedFlow(root, make_flow_provider(name[len("cached:"):], **kw))
    if name == "gt":
        if kw:
            raise TypeError(f"flow provider 'gt' takes no options, got {sorted(kw)}")
        return GroundTruthFlow()
    if name == "farneback":
        return FarnebackFlow(**kw)
    if name == "opencv":
        return OpenCVFlow(**kw)
    raise ValueError(f"unknown flow provider {name!r}; expected 'gt', 'farneback', 'opencv' or 'cached:<inner>'")
