"""dtc's segmentation networks and the model protocol.

* :func:`create` builds ``"unet"`` (:class:`UNet`), ``"unetpp"`` (:class:`UNetPlusPlus`) or ``"student"``
  (:class:`RealtimeStudent`): LibTorch modules whose forward and backward run in C++, wrapped as
  complete ``nn.Module`` objects (:class:`CppNet`). Each returns ``(logits, local, global)``.
* Any ``nn.Module`` works as teacher or student: return logits, or the triple, or wrap it in
  :class:`FeatureTaps` to tap two named layers; :func:`as_triple` adapts either form.
* :func:`save_checkpoint` / :func:`load_checkpoint` store a net with what is needed to rebuild it.

Importing this package does not load the compiled core; building a net does.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from dtc.models.cpp_net import CppNet, RealtimeStudent, UNet, UNetPlusPlus
from dtc.models.protocol import TripleOutput, as_triple, normalize_output
from dtc.models.taps import FeatureTaps

__all__ = [
    "CppNet", "UNet", "UNetPlusPlus", "RealtimeStudent", "FeatureTaps", "TripleOutput",
    "create", "names", "as_triple", "normalize_output", "count_parameters",
    "save_checkpoint", "load_checkpoint", "CHECKPOINT_FORMAT",
]

_log = logging.getLogger("dtc.models")

_REGISTRY = {"unet": UNet, "unetpp": UNetPlusPlus, "student": RealtimeStudent}

#: Marks a file written by :func:`save_checkpoint` (bumped if the layout changes).
CHECKPOINT_FORMAT = "dtc-model-checkpoint/1"


def names() -> list[str]:
    """The names :func:`create` accepts."""
    return list(_REGISTRY)


def create(name: str, **kwargs) -> CppNet:
    """Build a network by name: ``"unet"``, ``"unetpp"`` or ``"student"``; ``kwargs`` go to its class.

    >>> net = create("unet", base=8)          # doctest: +SKIP
    >>> logits, local, global_ = net(torch.randn(2, 3, 64, 96))  # doctest: +SKIP
    """
    if name not in _REGISTRY:
        raise ValueError(f"dtc.models.create: unknown network {name!r}; expected one of {names()}")
    return _REGISTRY[name](**kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters())


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel / DataParallel / torch.compile wrappers keep the net in an attribute.
    for attr in ("module", "_orig_mod"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            return _unwrap(inner)
    return model


def save_checkpoint(path, model: nn.Module, name: Optional[str] = None, kwargs: Optional[dict] = None,
                    extra: Optional[dict] = None) -> Path:
    """Write ``model``'s weights with the name and constructor arguments that rebuild it, atomically.

    Args:
        path: the file to write (its folder is created). Written to a temporary file beside it, then
            renamed, so a crash never leaves a half-written checkpoint under ``path``.
        model: a dtc net (possibly wrapped in DDP or ``torch.compile``), or any module together with a
            registered ``name``/``kwargs``.
        name, kwargs: what :func:`create` needs; default to the net's own (``model.name``,
            ``model.init_kwargs``).
        extra: anything else to keep (epoch, metrics, config); plain Python values and tensors only, so
            the file loads with ``torch.load(weights_only=True)``.

    Convention:
        The file is a dict ``{"format", "name", "kwargs", "state_dict", "extra", "dtc_version"}`` with
        every tensor on the CPU; ``torch.load(path, weights_only=True)`` reads it without dtc.
    """
    net = _unwrap(model)
    if name is None:
        name = getattr(net, "name", None) if isinstance(net, CppNet) else None
    if kwargs is None and isinstance(net, CppNet):
        kwargs = net.init_kwargs
    if name not in _REGISTRY:
        raise ValueError(f"save_checkpoint: name must be one of {names()} (what load_checkpoint rebuilds), got {name!r}")
    if not isinstance(kwargs or {}, dict):
        raise TypeError(f"save_checkpoint: kwargs must be a dict, got {type(kwargs).__name__}")
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"save_checkpoint: extra must be a dict or None, got {type(extra).__name__}")
    from dtc import __version__

    payload = {
        "format": CHECKPOINT_FORMAT,
        "name": name,
        "kwargs": dict(kwargs or {}),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "extra": dict(extra or {}),
        "dtc_version": __version__,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path, map_location: Any = "cpu") -> tuple[CppNet, dict]:
    """Rebuild the net stored by :func:`save_checkpoint`; returns ``(model, meta)``.

    ``meta`` holds ``name``, ``kwargs``, ``extra``, ``dtc_version``, ``path``, ``num_parameters`` and a
    one-line ``summary`` of what was loaded (also logged at INFO on the ``dtc.models`` logger). The
    model is in training mode, on ``map_location``'s device.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable dtc checkpoint, or its weights do not fit the net.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_checkpoint: no such checkpoint file {str(path)!r}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001  (truncated, corrupt or foreign files all land here)
        raise ValueError(f"load_checkpoint: {str(path)!r} is not a readable checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"load_checkpoint: {str(path)!r} is not a dtc model checkpoint (format {found!r}, "
                         f"expected {CHECKPOINT_FORMAT!r}); it may be a bare state_dict: build the net with "
                         "dtc.models.create(...) and call load_state_dict on it")
    name, kwargs = payload.get("name"), payload.get("kwargs", {})
    try:
        model = create(name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"load_checkpoint: {str(path)!r} names a net that cannot be built: {exc}") from exc
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"load_checkpoint: the weights in {str(path)!r} do not fit {name}({kwargs}): {exc}") from exc
    device = torch.device(map_location) if isinstance(map_location, (str, torch.device)) else None
    if device is not None:
        model.to(device)
    n = count_parameters(model)
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    summary = f"loaded {name}({args}) with {n:,} parameters from {path}"
    _log.info(summary)
    meta = {"name": name, "kwargs": dict(kwargs), "extra": payload.get("extra", {}),
            "dtc_version": payload.get("dtc_version"), "path": str(path), "num_parameters": n, "summary": summary}
    return model, meta
