"""The model protocol: what dtc accepts as a teacher or student.

A model maps ``x (N, C, H, W)`` to either

* ``logits`` — a tensor ``(N, 1, H, W)``: usable, but without feature taps the prototype terms
  (docs/method.md §2.5) are skipped;
* the triple ``(logits, local, global)`` — dtc's own nets (:mod:`dtc.models`) and any model wrapped in
  :class:`dtc.nn.FeatureTaps`; ``local``/``global`` may be ``None``.

:func:`as_triple` adapts any such model to always return the triple; :func:`normalize_output` does the
same for one output.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["as_triple", "normalize_output", "TripleOutput"]


def normalize_output(output, x: torch.Tensor | None = None):
    """Return ``(logits, local, global)`` from a model output (a tensor, a 1- or 3-sequence).

    With ``x``, checks that the logits are ``(N, 1, H, W)`` for ``x (N, C, H, W)``.
    """
    if isinstance(output, torch.Tensor):
        triple = (output, None, None)
    elif isinstance(output, (tuple, list)) and len(output) in (1, 3):
        triple = tuple(output) + (None, None) if len(output) == 1 else tuple(output)
    else:
        kind = f"a {type(output).__name__} of length {len(output)}" if isinstance(output, (tuple, list)) \
            else type(output).__name__
        raise TypeError(f"a dtc model must return logits or (logits, local, global), got {kind}")
    logits, local, global_ = triple
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model's logits must be a tensor, got {type(logits).__name__}")
    for role, tap in (("local", local), ("global", global_)):
        if tap is not None and (not isinstance(tap, torch.Tensor) or tap.dim() != 4):
            raise TypeError(f"the model's {role} tap must be None or a 4-D tensor (N, C, h, w), got "
                            f"{tuple(tap.shape) if isinstance(tap, torch.Tensor) else type(tap).__name__}")
    if x is not None:
        expected = (x.shape[0], 1, x.shape[-2], x.shape[-1])
        if tuple(logits.shape) != expected:
            raise ValueError(f"the model's logits must have shape (N, 1, H, W) = {expected} for input "
                             f"{tuple(x.shape)}, got {tuple(logits.shape)}")
    return logits, local, global_


class TripleOutput(nn.Module):
    """Wraps a model so ``forward(x)`` always returns ``(logits, local, global)`` (checked)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return normalize_output(self.model(x), x)


def as_triple(model: nn.Module) -> nn.Module:
    """``model`` itself if it already returns the triple (dtc's nets, ``FeatureTaps``), else a
    :class:`TripleOutput` wrapper around it."""
    from dtc.models.cpp_net import CppNet
    from dtc.models.taps import FeatureTaps

    if not isinstance(model, nn.Module):
        raise TypeError(f"as_triple: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, (CppNet, FeatureTaps, TripleOutput)):
        return model
    return TripleOutput(model)
