"""dtc's segmentation networks and the model protocol.

* :func:`create` builds ``"unet"`` (:class:`UNet`), ``"unetpp"`` (:class:`UNetPlusPlus`) or ``"student"``
  (:class:`RealtimeStudent`): LibTorch modules whose forward and backward run in C++, wrapped as
  complete ``nn.Module`` objects (:class:`CppNet`). Each returns ``(logits, local, global)``.
* Your own networks: :func:`register` a factory under a name, or name it by import path
  (``"mypkg.nets:build_unet"``); :func:`create` and :func:`build` (with feature taps) accept both, and
  :func:`check_kwargs` validates keyword arguments against the factory's signature before anything runs.
* Any ``nn.Module`` works as teacher or student: return logits, or the triple, or wrap it in
  :class:`FeatureTaps` to tap two named layers; :func:`as_triple` adapts either form.
* :func:`save_checkpoint` / :func:`load_checkpoint` store a net with what is needed to rebuild it.

Importing this package does not load the compiled core; building a net does.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import os
import typing
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from dtc.models.cpp_net import CppNet, RealtimeStudent, StudentKD, UNet, UNetPlusPlus
from dtc.models.protocol import TripleOutput, as_triple, normalize_output
from dtc.models.taps import FeatureTaps

__all__ = [
    "CppNet", "UNet", "UNetPlusPlus", "RealtimeStudent", "StudentKD", "FeatureTaps", "TripleOutput",
    "create", "build", "register", "unregister", "resolve", "check_kwargs", "names", "as_triple", "normalize_output", "count_parameters",
    "save_checkpoint", "load_checkpoint", "CHECKPOINT_FORMAT",
]

_log = logging.getLogger("dtc.models")

_BUILTIN = {"unet": UNet, "unetpp": UNetPlusPlus, "student": RealtimeStudent}
_REGISTRY: dict[str, Callable[..., nn.Module]] = dict(_BUILTIN)

#: Marks a file written by :func:`save_checkpoint` (bumped if the layout changes).
CHECKPOINT_FORMAT = "dtc-model-checkpoint/1"


def names() -> list[str]:
    """The registered names :func:`create` accepts (besides ``"module:attribute"`` import paths)."""
    return list(_REGISTRY)


def register(name: str, factory: Callable[..., nn.Module], *, replace: bool = False) -> Callable[..., nn.Module]:
    """Make ``factory`` (a class or function returning an ``nn.Module``) buildable as ``create(name, ...)``
    and as ``model.name=<name>`` in configs and experiment arms. Returns ``factory`` (usable as a decorator
    through ``functools.partial``). Re-registering a name needs ``replace=True``; built-ins stay."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"dtc.models.register: name must be a non-empty string without ':' (':' marks an "
                         f"import path), got {name!r}")
    if not callable(factory):
        raise TypeError(f"dtc.models.register: factory must be callable, got {type(factory).__name__}")
    if name in _BUILTIN:
        raise ValueError(f"dtc.models.register: {name!r} is a built-in network; choose another name")
    if name in _REGISTRY and _REGISTRY[name] is not factory and not replace:
        raise ValueError(f"dtc.models.register: {name!r} is already registered; pass replace=True to replace it")
    _REGISTRY[name] = factory
    return factory


def unregister(name: str) -> None:
    """Forget a name given to :func:`register` (built-ins cannot be removed)."""
    if name in _BUILTIN:
        raise ValueError(f"dtc.models.unregister: {name!r} is a built-in network")
    _REGISTRY.pop(name, None)


def resolve(name: str) -> Callable[..., nn.Module]:
    """The factory behind ``name``: a registered name, or an import path ``"package.module:attribute"``.

    Raises:
        ValueError: the name is neither registered nor an importable path (the message says which part failed).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" not in name:
        raise ValueError(f"unknown network {name!r}; expected one of {names()}, a name given to "
                         "dtc.models.register, or an import path 'package.module:factory'")
    module_name, _, attribute = name.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"network {name!r}: cannot import module {module_name!r} ({exc}); is it installed or on "
                         "PYTHONPATH?") from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"network {name!r}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"network {name!r}: {attribute!r} is not callable (a class or a function building the net)")
    return target


def _matches(value, hint) -> bool:
    """Whether a config value (YAML scalars, lists, mappings) fits a parameter annotation; annotations this
    cannot judge count as matching, so only plain mistakes (a string for an int, ...) are refused."""
    if hint is inspect.Parameter.empty or hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in (list, tuple) or origin in (list, tuple, typing.Sequence):
        return isinstance(value, (list, tuple))
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return True


def check_kwargs(name: str, kwargs: Optional[dict] = None, *, where: str = "model.kwargs") -> Callable[..., nn.Module]:
    """Check ``kwargs`` against the signature of ``name``'s factory before anything is built; returns it.

    Raises:
        ValueError: ``name`` does not resolve (see :func:`resolve`).
        TypeError: a keyword the factory does not take, a required one missing, or a value whose type does not
            fit the parameter's annotation; the message names the keyword (as ``<where>.<key>``).
    """
    factory = resolve(name)
    kwargs = dict(kwargs or {})
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins and C extensions may have none: nothing to check against
        return factory
    params = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    keywords = [k for k, p in params.items() if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                          inspect.Parameter.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in keywords and not takes_any:
            raise TypeError(f"{where}.{key}: {name} takes no argument {key!r}; it takes {keywords}")
    try:
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:  # noqa: BLE001  (unresolvable forward references: fall back to the raw annotations)
        hints = {}
    for key, value in kwargs.items():
        if key not in params:
            continue
        hint = hints.get(key, params[key].annotation)
        if isinstance(hint, str):  # an annotation left as text: cannot judge it
            continue
        if not _matches(value, hint):
            shown = getattr(hint, "__name__", str(hint))
            raise TypeError(f"{where}.{key}: {name} expects {shown}, got {value!r} ({type(value).__name__})")
    for key, p in params.items():
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY) \
                and p.default is inspect.Parameter.empty and key not in kwargs:
            raise TypeError(f"{where}.{key}: {name} requires the argument {key!r}")
    return factory


def create(name: str, **kwargs) -> nn.Module:
    """Build a network by name: ``"unet"``, ``"unetpp"``, ``"student"``, a name given to :func:`register`, or
    an import path ``"package.module:factory"``; ``kwargs`` go to its factory (checked first).

    >>> net = create("unet", base=8)          # doctest: +SKIP
    >>> logits, local, global_ = net(torch.randn(2, 3, 64, 96))  # doctest: +SKIP
    """
    factory = check_kwargs(name, kwargs, where=f"dtc.models.create({name!r})")
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"network {name!r}: the factory returned a {type(model).__name__}, not an nn.Module")
    return model


def build(name: str, kwargs: Optional[dict] = None, taps: Optional[dict] = None) -> nn.Module:
    """:func:`create` then, when ``taps`` names layers (``{"local": "decoder.4", "global": "bottleneck",
    "features": ["enc.2", "enc.3", "enc.4"]}``), wrap the net in :class:`FeatureTaps` so it returns
    ``(logits, local, global)`` and exposes its encoder levels. The one way trainers,
    checkpoints and experiments turn a model spec into a module."""
    taps = dict(taps or {})
    unknown = sorted(set(taps) - {"local", "global", "features"})
    if unknown:
        raise ValueError(f"model.taps: unknown key(s) {unknown}; expected 'local', 'global' and/or 'features'")
    model = create(name, **dict(kwargs or {}))
    if taps.get("local") is None and taps.get("global") is None and not taps.get("features"):
        return model
    if isinstance(model, CppNet):
        raise ValueError(f"model.taps: {name!r} already returns its own (logits, local, global) and feature "
                         "pyramid; drop model.taps")
    try:
        return FeatureTaps(model, local=taps.get("local"), global_=taps.get("global"), features=taps.get("features"))
    except ValueError as exc:
        raise ValueError(f"model.taps: {exc}") from exc


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


def _import_path_of(net: nn.Module) -> Optional[str]:
    """``"module:Class"`` when ``net``'s class can be imported back by that path, else None."""
    cls = type(net)
    if "<locals>" in cls.__qualname__ or cls.__module__ in ("__main__", "builtins"):
        return None
    try:
        return f"{cls.__module__}:{cls.__qualname__}" if resolve(f"{cls.__module__}:{cls.__qualname__}") is cls else None
    except ValueError:
        return None


def save_checkpoint(path, model: nn.Module, name: Optional[str] = None, kwargs: Optional[dict] = None,
                    extra: Optional[dict] = None, taps: Optional[dict] = None) -> Path:
    """Write ``model``'s weights with the name and constructor arguments that rebuild it, atomically.

    Args:
        path: the file to write (its folder is created). Written to a temporary file beside it, then
            renamed, so a crash never leaves a half-written checkpoint under ``path``.
        model: a dtc net (possibly wrapped in DDP or ``torch.compile``), or any module (a
            :class:`FeatureTaps` wrapper included) together with the ``name``/``kwargs`` that build it.
        name, kwargs: what :func:`create` needs (a registered name or an import path); default to the
            net's own (``model.name``, ``model.init_kwargs``) for dtc's nets, and to the import path of the
            module's class with no arguments for others.
        taps: the :class:`FeatureTaps` layer names (``{"local": ..., "global": ...}``); default: those of
            ``model`` when it is a ``FeatureTaps`` wrapper.
        extra: anything else to keep (epoch, metrics, config); plain Python values and tensors only, so
            the file loads with ``torch.load(weights_only=True)``.

    Convention:
        The file is a dict ``{"format", "name", "kwargs", "taps", "state_dict", "extra", "dtc_version"}`` with
        every tensor on the CPU; ``torch.load(path, weights_only=True)`` reads it without dtc.
    """
    net = _unwrap(model)
    if taps is None and isinstance(net, FeatureTaps):
        taps = {"local": net.local_name, "global": net.global_name, "features": net.feature_names or None}
    inner = net.model if isinstance(net, FeatureTaps) else net
    if name is None:
        name = getattr(inner, "name", None) if isinstance(inner, CppNet) else _import_path_of(inner)
    if kwargs is None and isinstance(inner, CppNet):
        kwargs = inner.init_kwargs
    if not isinstance(kwargs or {}, dict):
        raise TypeError(f"save_checkpoint: kwargs must be a dict, got {type(kwargs).__name__}")
    if name is None:
        raise ValueError(f"save_checkpoint: cannot tell how to rebuild a {type(inner).__name__} (its class is not "
                         "importable by path); pass name= (a name given to dtc.models.register or "
                         "'package.module:factory') and kwargs=")
    try:
        check_kwargs(name, kwargs, where="save_checkpoint: kwargs")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"save_checkpoint: name and kwargs must be what load_checkpoint can rebuild: {exc}") from exc
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"save_checkpoint: extra must be a dict or None, got {type(extra).__name__}")
    from dtc import __version__
    from dtc.engine.checkpoint import check_plain

    check_plain(dict(extra or {}), "save_checkpoint: extra")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "name": name,
        "kwargs": dict(kwargs or {}),
        "taps": {k: v for k, v in (taps or {}).items() if v is not None},
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


def load_checkpoint(path, map_location: Any = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the net stored by :func:`save_checkpoint`; returns ``(model, meta)``.

    The net is rebuilt through the same factory (:func:`build`, taps included), so a user's network loads
    as long as its name is registered or its import path importable. ``meta`` holds ``name``, ``kwargs``,
    ``taps``, ``extra``, ``dtc_version``, ``path``, ``num_parameters`` and a
    one-line ``summary`` of what was loaded (also logged at INFO on the ``dtc.models`` logger). The
    model is in training mode, on ``map_location``'s device.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable dtc checkpoint, or its weights do not fit the net.
    """
    from dtc.engine.checkpoint import MODEL_FORMAT, CheckpointError, load_weights, read_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_checkpoint: no such checkpoint file {str(path)!r}")
    payload = read_checkpoint(path, map_location)  # weights_only: a checkpoint never runs code
    if payload["format"] != MODEL_FORMAT:
        raise CheckpointError(f"load_checkpoint: {str(path)!r} is not a dtc model checkpoint (format "
                              f"{payload['format']!r}, expected {CHECKPOINT_FORMAT!r}); a training run's checkpoint "
                              "loads with dtc.engine.model_from_checkpoint")
    name, kwargs, taps = payload.get("name"), payload.get("kwargs", {}), payload.get("taps", {})
    try:
        model = build(name, kwargs, taps)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"load_checkpoint: {str(path)!r} names a net that cannot be built: {exc}") from exc
    load_weights(model, payload["state_dict"], path, name, kwargs)
    device = torch.device(map_location) if isinstance(map_location, (str, torch.device)) else None
    if device is not None:
        model.to(device)
    n = count_parameters(model)
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    summary = f"loaded {name}({args}) with {n:,} parameters from {path}"
    _log.info(summary)
    meta = {"name": name, "kwargs": dict(kwargs), "taps": dict(taps), "extra": payload.get("extra", {}),
            "dtc_version": payload.get("dtc_version"), "path": str(path), "num_parameters": n, "summary": summary}
    return model, meta
