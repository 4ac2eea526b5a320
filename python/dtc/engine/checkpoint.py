"""Reading and writing dtc checkpoints: a checkpoint is data, never code.

Two formats share one reader, :func:`read_checkpoint`:

* the *run* checkpoint (``format == "dtc-run-checkpoint"``) the trainer writes each epoch
  (``last.pt``, ``best.pt``): ``model`` (``name``, ``kwargs``, ``state_dict``), optimiser, scheduler and
  scaler state, ``epoch``, ``step``, ``best``, ``history``, ``config``;
* the *model* checkpoint (``format == "dtc-model-checkpoint/1"``) of :func:`dtc.models.save_checkpoint`:
  ``name``, ``kwargs``, ``state_dict``, ``extra``.

Every file is read with ``torch.load(weights_only=True)``: the unpickler only rebuilds tensors and
plain Python values (dict, list, tuple, str, int, float, bool, None), so a crafted file cannot run
code while it is being read. The reader then checks the format, the version and that every weight
is finite (a diverged run's NaN weights would otherwise predict empty masks without a word).

Adding a field (for example the model factory and its kwargs for a user network, or the
preprocessing a deployment needs): put it in the dict the saver writes (``Trainer._state`` for run
checkpoints, ``extra=`` of :func:`dtc.models.save_checkpoint`) as plain JSON-able values (or
tensors), and read it back with ``ckpt.get("your_field", default)`` so older checkpoints still load.
:func:`save_checkpoint_file` refuses anything else at save time (:func:`check_plain`), naming the
key, so a checkpoint is never written that the reader would refuse. No allow-list entry is needed.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT", "VERSION", "MODEL_FORMAT", "CheckpointError", "read_checkpoint", "load_run_checkpoint",
           "model_from_checkpoint", "save_checkpoint_file", "check_plain", "describe_architecture",
           "check_architecture"]

FORMAT = "dtc-run-checkpoint"
VERSION = 1
from dtc.models import CHECKPOINT_FORMAT as MODEL_FORMAT  # noqa: E402  (written by dtc.models.save_checkpoint)

_PLAIN_SCALARS = (str, int, float, bool, type(None))


class CheckpointError(ValueError):
    """A checkpoint file is missing pieces, of another format, unsafe or holds non-finite weights."""


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` naming the first value the safe reader could not rebuild.

    Allowed: tensors, ``torch.Size``, dict/list/tuple of allowed values and str/int/float/bool/None.
    """
    if isinstance(obj, torch.Tensor) or isinstance(obj, torch.Size) or type(obj) in _PLAIN_SCALARS:
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if type(key) not in _PLAIN_SCALARS:
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; checkpoint keys must be str or int")
            check_plain(value, f"{where}[{key!r}]")
        return
    if type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a checkpoint holds only "
                    "tensors and plain values (dict, list, tuple, str, int, float, bool, None): convert it "
                    "(e.g. float(x), str(x), x.tolist()) before saving")


def save_checkpoint_file(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` atomically after checking that :func:`read_checkpoint` can read it back."""
    from dtc.io import atomic_torch_save

    check_plain(state)
    return atomic_torch_save(state, path)


def _safe_globals():
    # Checkpoints written before dtc stored torch.__version__ as a plain str hold a TorchVersion
    # (a str subclass without behaviour of its own); allowing it keeps them readable.
    from torch.torch_version import TorchVersion

    return [TorchVersion]


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a run or model checkpoint without running code from it; return its dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: unreadable, unsafe (it asks to run code), foreign, too new, or non-finite weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, foreign or malicious files raise many different errors
        text = str(exc)
        # Only a GLOBAL the allow-list refuses means the file asks to import and call something;
        # other unpickler complaints (bad opcodes) are damaged or foreign files.
        if "Unsupported global" in text:
            detail = next(line.strip() for line in text.splitlines() if "Unsupported global" in line)
            detail = detail.split(" was not an allowed global")[0].replace("WeightsUnpickler error: ", "")
            raise CheckpointError(f"checkpoint {path} was refused: it holds Python objects that would run code when "
                                  f"loaded ({detail[:200]}); dtc checkpoints hold only tensors and plain values. "
                                  "Use a checkpoint that dtc wrote, from a source you trust") from None
        first = next((line.strip() for line in text.splitlines() if "WeightsUnpickler error" in line),
                     text.splitlines()[0] if text else "").replace("WeightsUnpickler error: ", "")
        raise CheckpointError(f"checkpoint {path} could not be read ({type(exc).__name__}: {first[:200]})") from None
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt == MODEL_FORMAT:
        if not all(k in ckpt for k in ("name", "state_dict")):
            raise CheckpointError(f"checkpoint {path} is a damaged dtc model checkpoint (no name or state_dict)")
    elif fmt == FORMAT:
        if not isinstance(ckpt.get("model"), dict) or not all(k in ckpt["model"] for k in ("name", "state_dict")):
            raise CheckpointError(f"checkpoint {path} is a damaged dtc run checkpoint (no model name or weights)")
        if ckpt.get("version", 0) > VERSION:
            raise CheckpointError(f"checkpoint {path} has format version {ckpt['version']}; this dtc reads up to {VERSION}")
    else:
        found = fmt if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"checkpoint {path} is not a dtc checkpoint (format {found!r}, expected {FORMAT!r} "
                              f"or {MODEL_FORMAT!r}); a bare state_dict loads with dtc.models.create(...)"
                              ".load_state_dict(...)")
    _check_finite(_model_spec(ckpt)["state_dict"], path)
    return ckpt


def _model_spec(ckpt: dict) -> dict:
    if ckpt["format"] == FORMAT:
        spec = ckpt["model"]
    else:
        spec = ckpt
    return {"name": spec["name"], "kwargs": dict(spec.get("kwargs") or {}), "taps": dict(spec.get("taps") or {}),
            "state_dict": spec["state_dict"]}


def _check_finite(state_dict: dict, path: Path) -> None:
    bad = [name for name, t in state_dict.items()
           if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"checkpoint {path} has non-finite weights (NaN or inf) in {len(bad)} tensor(s), "
                              f"first {bad[0]!r}: the run diverged before it was saved; use an earlier checkpoint "
                              "or retrain with a lower optim.lr")


def load_run_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a run checkpoint (``last.pt`` / ``best.pt``); the error names the file and what is wrong."""
    ckpt = read_checkpoint(path, map_location)
    if ckpt["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {path} is a dtc model checkpoint (format {ckpt['format']!r}), not a run "
                              "checkpoint: it holds weights but no training state to resume or inspect")
    return ckpt


def describe_architecture(name: str, kwargs: dict) -> str:
    """``"unet (base 64)"``: how messages name a network."""
    if not kwargs:
        return f"{name} (default settings)"
    return f"{name} (" + ", ".join(f"{k} {v}" for k, v in kwargs.items()) + ")"


def check_architecture(ckpt: dict, name: str, kwargs: dict, path, *, taps: dict | None = None, context: str = "",
                       error: type[Exception] = CheckpointError) -> None:
    """Raise ``error`` when the checkpoint's network is not ``name(**kwargs)`` with ``taps``, in one line."""
    spec = _model_spec(ckpt)
    if (spec["name"], spec["kwargs"], spec["taps"]) != (name, dict(kwargs or {}), dict(taps or {})):
        held, asked = describe_architecture(spec["name"], spec["kwargs"]), describe_architecture(name, dict(kwargs or {}))
        if held == asked:  # only the feature taps differ
            held, asked = f"{held} tapping {spec['taps']}", f"{asked} tapping {dict(taps or {})}"
        raise error(f"{context}this checkpoint ({path}) holds a {held}; the config asks for {asked}")


def load_weights(model: torch.nn.Module, state_dict: dict, path, name: str, kwargs: dict) -> None:
    """``model.load_state_dict`` with a one-line error instead of the list of every mismatched key."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        text = str(exc)
        missing, unexpected, shapes = text.count("Missing key"), text.count("Unexpected key"), text.count("size mismatch")
        raise CheckpointError(f"checkpoint {path}: its weights do not fit {describe_architecture(name, kwargs)} "
                              f"({'missing keys, ' if missing else ''}{'unexpected keys, ' if unexpected else ''}"
                              f"{shapes} shape mismatch(es)): it was not written for this network") from None


def model_from_checkpoint(path: str | os.PathLike, map_location="cpu"):
    """(model in eval mode, checkpoint dict) from either format; the network is rebuilt through the factory its
    stored name resolves to (built-in, registered or import path), with its kwargs and feature taps. A model checkpoint is returned in the run layout (``model``, ``stage``,
    ``epoch``, ``best``, ``config`` from its ``extra``), so callers read one shape."""
    from dtc.models import build

    ckpt = read_checkpoint(path, map_location)
    spec = _model_spec(ckpt)
    if ckpt["format"] == MODEL_FORMAT:
        extra = dict(ckpt.get("extra") or {})
        ckpt = {"format": MODEL_FORMAT, "model": spec, "stage": extra.get("stage", "model"),
                "epoch": extra.get("epoch", 0), "best": extra.get("best", math.nan),
                "config": extra.get("config", {}), "extra": extra}
    try:
        model = build(spec["name"], spec["kwargs"], spec["taps"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} names a network that cannot be built: {exc}") from None
    load_weights(model, spec["state_dict"], path, spec["name"], spec["kwargs"])
    model.eval()
    return model, ckpt
