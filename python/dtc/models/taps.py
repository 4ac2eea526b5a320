"""Feature taps for any ``nn.Module``: expose two named layers' outputs as the ``local``/``global`` maps.

:class:`FeatureTaps` (also ``dtc.nn.FeatureTaps``) turns a model that returns only logits into one
that returns dtc's triple ``(logits, local, global)`` by recording the outputs of two submodules with
forward hooks, so any architecture can serve as teacher or student with prototype alignment.
"""
from __future__ import annotations

import functools
from typing import Optional

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

    def __init__(self, model: nn.Module, local: Optional[str] = None, global_: Optional[str] = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"FeatureTaps: model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.local_name, self.global_name = local, global_
        self._handles = []
        modules = dict(model.named_modules())
        for role, name in (("local", local), ("global_", global_)):
            if name is None:
                continue
            if not isinstance(name, str) or name not in modules or name == "":
                names = [n for n in modules if n]
                preview = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
                raise ValueError(f"FeatureTaps: {role}={name!r} is not a submodule name of the model; "
                                 f"available: {preview}")
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

    def remove(self) -> nn.Module:
        """Remove the hooks and return the unwrapped model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return self.model

    def extra_repr(self) -> str:
        return f"local={self.local_name!r}, global_={self.global_name!r}"
