"""Feature taps for any ``nn.Module``: expose two named layers' outputs as the ``local``/``global`` maps.

:class:`FeatureTaps` (also ``dtc.nn.FeatureTaps``) turns a model that returns only logits into one
that returns dtc's triple ``(logits, local, global)`` by recording the outputs of two submodules with
forward hooks, so any architecture can serve as teacher or student with prototype alignment. Naming
encoder layers as ``features=[...]`` also gives it dtc's feature-pyramid protocol
(:meth:`FeatureTaps.features`, :meth:`FeatureTaps.decode`), which the clip teacher of docs/v2i.md reads.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch
from torch import nn

__all__ = ["FeatureTaps"]


# Where a tapped submodule's hook leaves its output. Kept on the submodule itself (not in a closure over
# the wrapper) so deep copies and pickles of the wrapper tap their own copy of the model.
_SLOT = "_dtc_feature_tap"


def _record_output(name, module, inputs, output):
    tensor = _first_tensor(output)
    if tensor is None:
        raise TypeError(f"FeatureTaps: the output of {name!r} ({type(output).__name__}) holds no tensor to tap")
    module.__dict__[_SLOT] = tensor


# Flags on a feature layer: record its output (features) or replace it (decode).
_RECORD = "_dtc_feature_record"
_REPLACE = "_dtc_feature_replace"


def _feature_hook(name, module, inputs, output):
    replacement = module.__dict__.get(_REPLACE)
    if replacement is not None:
        _, tensor = replacement
        produced = _first_tensor(output)
        if produced is not None and tuple(tensor.shape) != tuple(produced.shape):
            raise ValueError(f"FeatureTaps.decode: the replacement for {name!r} has shape {tuple(tensor.shape)}, the "
                             f"layer produces {tuple(produced.shape)}")
        return tensor if isinstance(output, torch.Tensor) else _with_first(output, tensor)
    if module.__dict__.get(_RECORD):
        tensor = _first_tensor(output)
        if tensor is None:
            raise TypeError(f"FeatureTaps: the output of {name!r} ({type(output).__name__}) holds no tensor to tap")
        module.__dict__[_SLOT] = tensor
    return None


def _with_first(output, tensor):
    if isinstance(output, tuple):
        return (tensor,) + output[1:]
    if isinstance(output, list):
        return [tensor] + output[1:]
    raise TypeError(f"FeatureTaps.decode: cannot replace a layer output of type {type(output).__name__}")


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, dict):
        for value in output.values():
            if isinstance(value, torch.Tensor):
                return value
    return None


class FeatureTaps(nn.Module):
    """Wrap ``model`` so that ``forward(x)`` returns ``(logits, local, global)``.

    Args:
        model: any ``nn.Module``. Its output is the logits: a tensor, or a tuple/list whose first item
            is the logits tensor.
        local: dotted name of the submodule whose output is the ``local`` tap (a late, high-resolution
            decoder map), e.g. ``"decoder.blocks.3"``; ``None`` for no local tap.
        global_: dotted name of the submodule whose output is the ``global`` tap (the bottleneck);
            ``None`` for none.

    Convention:
        Names are those of ``model.named_modules()``. A tapped submodule returning a tuple contributes
        its first tensor. A tap whose submodule did not run during ``forward`` raises ``RuntimeError``
        (a silently stale feature map would corrupt the prototype losses). Missing taps come back as
        ``None`` and the losses then skip the matching prototype term. The wrapped model is the
        submodule ``model``, so ``state_dict`` keys gain the prefix ``model.``; checkpoint
        ``wrapper.model`` to keep the original keys.
    """

    def __init__(self, model: nn.Module, local: Optional[str] = None, global_: Optional[str] = None,
                 features: Optional[Sequence[str]] = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"FeatureTaps: model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.local_name, self.global_name = local, global_
        self._handles = []
        modules = dict(model.named_modules())

        def check(role, name):
            if not isinstance(name, str) or name not in modules or name == "":
                names = [n for n in modules if n]
                preview = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
                raise ValueError(f"FeatureTaps: {role}={name!r} is not a submodule name of the model; "
                                 f"available: {preview}")

        # Feature hooks first: a tap on the same layer then records decode's replacement.
        if features is not None and (isinstance(features, str) or not isinstance(features, Sequence)):
            raise TypeError(f"FeatureTaps: features must be a list of submodule names, got {features!r}")
        self.feature_names = list(features or [])
        for k, name in enumerate(self.feature_names):
            check(f"features[{k}]", name)
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ValueError(f"FeatureTaps: features names a layer twice: {self.feature_names}")
        for name in self.feature_names:
            self._handles.append(modules[name].register_forward_hook(functools.partial(_feature_hook, name)))
        for role, name in (("local", local), ("global_", global_)):
            if name is None:
                continue
            check(role, name)
            self._handles.append(modules[name].register_forward_hook(functools.partial(_record_output, name)))

    def forward(self, x: torch.Tensor):
        tapped = [(name, self.model.get_submodule(name) if name is not None else None)
                  for name in (self.local_name, self.global_name)]
        for _, module in tapped:
            if module is not None:
                module.__dict__.pop(_SLOT, None)
        logits = _first_tensor(self.model(x))
        if logits is None:
            raise TypeError("FeatureTaps: the model's output holds no logits tensor")
        taps = []
        for name, module in tapped:
            if module is None:
                taps.append(None)
                continue
            if _SLOT not in module.__dict__:
                raise RuntimeError(f"FeatureTaps: the tapped submodule {name!r} did not run during forward")
            taps.append(module.__dict__[_SLOT])
        # Taken out, not left behind: the modules must not keep the activations (and graph) alive.
        for _, module in tapped:
            if module is not None:
                module.__dict__.pop(_SLOT, None)
        return logits, taps[0], taps[1]

    # ------------------------------------------------------------------ the feature pyramid
    def _feature_modules(self, caller: str):
        if not self.feature_names:
            raise ValueError(f"FeatureTaps.{caller}: no encoder levels were named; build the wrapper with "
                             "features=['layer.name', ...] (shallow to deep)")
        return [self.model.get_submodule(name) for name in self.feature_names]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of the ``features`` layers for ``x``, in the order they were named.

        The whole model runs (a hook cannot stop it after the deepest level), so this costs one forward.
        """
        modules = self._feature_modules("features")
        for module in modules:
            module.__dict__.pop(_SLOT, None)
            module.__dict__[_RECORD] = True
        try:
            self.model(x)
            missing = [n for n, m in zip(self.feature_names, modules) if _SLOT not in m.__dict__]
            if missing:
                raise RuntimeError(f"FeatureTaps.features: the layers {missing} did not run during forward")
            return [m.__dict__[_SLOT] for m in modules]
        finally:
            for module in modules:
                module.__dict__.pop(_SLOT, None)
                module.__dict__.pop(_RECORD, None)

    def decode(self, x: torch.Tensor, features) -> tuple:
        """``(logits, local, global)`` of the model on ``x`` with each ``features`` layer's output replaced
        by the given tensor (same shape). Layers after a replaced one see the replacement, so a list
        that :meth:`features` returned unchanged gives exactly ``forward(x)``.
        """
        modules = self._feature_modules("decode")
        features = list(features)
        if len(features) != len(modules):
            raise ValueError(f"FeatureTaps.decode: features must hold {len(modules)} tensors (one per named layer "
                             f"{self.feature_names}), got {len(features)}")
        for module, name, tensor in zip(modules, self.feature_names, features):
            module.__dict__[_REPLACE] = (name, tensor)
        try:
            return self.forward(x)
        finally:
            for module in modules:
                module.__dict__.pop(_REPLACE, None)

    def remove(self) -> nn.Module:
        """Remove the hooks and return the unwrapped model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return self.model

    def extra_repr(self) -> str:
        extra = f", features={self.feature_names!r}" if self.feature_names else ""
        return f"local={self.local_name!r}, global_={self.global_name!r}{extra}"
