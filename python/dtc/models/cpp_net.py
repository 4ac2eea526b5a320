"""The C++ networks as complete ``torch.nn.Module`` objects.

LibTorch's ``torch::python::bind_module`` (``torch.nn.cpp.ModuleWrapper``) exposes a C++ module's
parameters, buffers and forward to Python, but not ``state_dict``, ``.to()``, train/eval propagation
from a parent, DDP, deep copies or pickling (measured, docs/design.md). :class:`CppNet` is the thin facade
that supplies them while the C++ module keeps computing with its own tensors:

* every C++ parameter and buffer is registered on the facade under its C++ name (``enc0.conv1.weight``)
  as the *same* tensor object, so ``state_dict``/``load_state_dict``, optimisers, DDP and hooks on
  parameters all act on the tensors the C++ forward reads;
* device/dtype/memory-format moves (``.to``, ``.cuda``, ``.double``, ...) replace each tensor's data
  in place (``t.data = fn(t.data)``) rather than the tensor, so the C++ module sees them;
* ``train()``/``eval()`` also switch the C++ module (BatchNorm batch statistics vs running ones);
* pickling and ``copy.deepcopy`` rebuild the net from its constructor arguments and copy the tensors.

``torch.compile`` cannot trace into the C++ forward: compiling a model (or a training step) that contains
a ``CppNet`` inserts a graph break around the net, which then runs eagerly (tested to give the eager
result); the Python code around it is still compiled.
"""
from __future__ import annotations

import functools
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["CppNet", "UNet", "UNetPlusPlus", "RealtimeStudent", "StudentKD"]


@functools.lru_cache(maxsize=None)
def _nets():
    from dtc._extension import load

    return load().nets


def _positive_int(name: str, value: Any, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value


class _CppPart(nn.Module):
    """A named part of a C++ net: holds that part's tensors so they appear under dotted names.

    It has no forward of its own (the C++ net runs as a whole), so forward hooks on it never fire;
    use the net's built-in ``local``/``global`` taps instead.
    """

    def forward(self, *args, **kwargs):
        raise RuntimeError("this is a part of a C++ network and cannot be called on its own; call the whole net")


class CppNet(nn.Module):
    """A LibTorch network with the full ``nn.Module`` behaviour (see the module docstring).

    ``forward(x)`` returns ``(logits, local, global)``; subclasses document the tap shapes.

    Convention:
        ``x`` is ``(N, in_channels, H, W)`` floating point with ``H`` and ``W`` multiples of
        :attr:`multiple` (a ``ValueError`` names the multiple otherwise). ``logits`` is
        ``(N, 1, H, W)``; ``local`` a full-resolution late decoder map; ``global`` the bottleneck.
        The C++ tensors are registered on this module; :meth:`cpp_module` returns the underlying bound
        C++ module for inspection.
    """

    #: Name under which :func:`dtc.models.create` builds this class.
    name: str = ""

    def __init__(self, cpp_module, init_kwargs: dict):
        super().__init__()
        self._cpp = cpp_module
        self._init_kwargs = dict(init_kwargs)
        for dotted, tensor in cpp_module.named_parameters().items():
            # A C++ parameter arrives as a plain torch.Tensor; the flag makes isinstance(t, nn.Parameter)
            # true (torch's documented hook for custom parameter types) without creating a new tensor,
            # which would cut the link to the C++ module.
            tensor._is_param = True
            owner, leaf = self._owner_of(dotted)
            owner.register_parameter(leaf, tensor)
        for dotted, tensor in cpp_module.named_buffers().items():
            owner, leaf = self._owner_of(dotted)
            owner.register_buffer(leaf, tensor)
        self._cpp.train(self.training)

    def _owner_of(self, dotted: str) -> tuple[nn.Module, str]:
        *path, leaf = dotted.split(".")
        owner: nn.Module = self
        for part in path:
            child = owner._modules.get(part)
            if child is None:
                child = _CppPart()
                owner.add_module(part, child)
            owner = child
        return owner, leaf

    # ------------------------------------------------------------------ the nn.Module contract
    def forward(self, x: torch.Tensor):
        return self._cpp.forward(x)

    def train(self, mode: bool = True):
        if not isinstance(mode, bool):
            raise ValueError(f"{type(self).__name__}.train: mode must be a bool, got {mode!r}")
        super().train(mode)
        self._cpp.train(mode)
        return self

    def _cpp_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self.named_parameters(remove_duplicate=False)
        yield from self.named_buffers(remove_duplicate=False)

    def _apply(self, fn, recurse: bool = True):
        # nn.Module._apply would swap in new buffer objects (and, with swap_tensors, new parameter
        # objects) that the C++ module never sees; assigning .data keeps every tensor object and so
        # the C++ module's view of it.
        with torch.no_grad():
            for _, tensor in self._cpp_tensors():
                tensor.data = fn(tensor.data)
                if tensor.grad is not None:
                    tensor.grad.data = fn(tensor.grad.data)
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if assign:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: assign=True would replace the tensors the C++ "
                "module computes with; use assign=False (values are copied in place, any dtype/device)"
            )
        swap = torch.__future__.get_swap_module_params_on_conversion()
        torch.__future__.set_swap_module_params_on_conversion(False)  # swapping would also cut the link
        try:
            return super().load_state_dict(state_dict, strict=strict)
        finally:
            torch.__future__.set_swap_module_params_on_conversion(swap)

    def __reduce_ex__(self, protocol):
        # Pickling / deepcopy: rebuild from the constructor arguments, then restore every tensor's data
        # (dtype, device and layout included) and the mode. Gradients and hooks are not carried over.
        tensors = {name: t.detach() for name, t in self._cpp_tensors()}
        requires_grad = {name: p.requires_grad for name, p in self.named_parameters()}
        return (_rebuild, (type(self), self._init_kwargs, tensors, requires_grad, self.training))

    # ----------------------------------------------------------------------------- extras
    @property
    def init_kwargs(self) -> dict:
        """The constructor arguments (what :func:`dtc.models.save_checkpoint` stores)."""
        return dict(self._init_kwargs)

    @property
    def multiple(self) -> int:
        """H and W of the input must be multiples of this."""
        return int(type(self._cpp).multiple)

    # ------------------------------------------------------------------ the feature pyramid
    @property
    def feature_strides(self) -> list[int]:
        """Stride of each encoder level that :meth:`features` returns, shallow to deep."""
        return list(type(self._cpp).feature_strides)

    @property
    def feature_channels(self) -> list[int]:
        """Channels of each encoder level that :meth:`features` returns."""
        return list(self._cpp.feature_channels)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder levels ``[f_0, ..., f_{L-1}]``, shallow to deep, ``f_l (N, C_l, H/s_l, W/s_l)``
        with ``s_l = feature_strides[l]`` and ``C_l = feature_channels[l]``."""
        return list(self._cpp.features(x))

    def decode(self, x: torch.Tensor, features) -> tuple:
        """``(logits, local, global)`` computed by the decoder from ``features`` (as :meth:`features`
        returns them, possibly replaced level by level); ``x`` gives the input size (and the student's
        image skip). ``forward(x)`` equals ``decode(x, features(x))``."""
        return self._cpp.decode(x, list(features))

    def cpp_module(self):
        """The bound C++ module (``dtc._C.nets.cpp.*``) whose tensors this module holds."""
        return self._cpp

    def check_shared(self) -> None:
        """Assert that every tensor registered here is the very tensor the C++ module computes with."""
        ours = dict(self._cpp_tensors())
        theirs = {**dict(self._cpp.named_parameters().items()), **dict(self._cpp.named_buffers().items())}
        if ours.keys() != theirs.keys():
            raise AssertionError(f"tensor names differ: {sorted(ours.keys() ^ theirs.keys())[:5]}")
        for name, t in theirs.items():
            if ours[name] is not t:
                raise AssertionError(f"{name}: the registered tensor is not the C++ module's tensor")
        if self._cpp.training != self.training:
            raise AssertionError("the C++ module's training flag differs from the facade's")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._init_kwargs.items())

    def __repr__(self) -> str:
        # The parts are plain tensor holders; listing them would suggest runnable submodules.
        n = sum(p.numel() for p in self.parameters())
        return f"{type(self).__name__}({self.extra_repr()}; {n:,} parameters, C++)"


def _rebuild(cls, init_kwargs, tensors, requires_grad, training):
    net = cls(**init_kwargs)
    with torch.no_grad():
        for name, t in net._cpp_tensors():
            if name not in tensors:
                raise ValueError(f"cannot rebuild {cls.__name__}: the stored tensors lack {name!r}")
            t.data = tensors[name].clone()
    for name, p in net.named_parameters():
        p.requires_grad_(requires_grad.get(name, True))
    return net.train(training)


class UNet(CppNet):
    """The classic U-Net of docs/method.md §3, in C++.

    Widths ``base·(1, 2, 4, 8, 16)`` (64-128-256-512-1024 by default, ≈34.5 M parameters); two 3×3
    Conv-BN-ReLU per level, 2×2 max pooling, nearest ×2 upsampling then a 3×3 Conv-BN-ReLU, 1×1 head.

    Convention:
        ``x (N, in_channels, H, W)``, ``H, W`` multiples of 16. Returns ``logits (N, 1, H, W)``,
        ``local (N, base, H, W)`` (the last decoder map), ``global (N, 16·base, H/16, W/16)``
        (the bottleneck).
    """

    name = "unet"

    def __init__(self, in_channels: int = 3, base: int = 64):
        _positive_int("in_channels", in_channels, "UNet")
        _positive_int("base", base, "UNet")
        super().__init__(_nets().cpp.UNet(in_channels=in_channels, base=base),
                         {"in_channels": in_channels, "base": base})

    @property
    def tap_channels(self) -> dict:
        """Channels of the taps: ``{"local": base, "global": 16·base}``."""
        return {"local": self._init_kwargs["base"], "global": 16 * self._init_kwargs["base"]}


class UNetPlusPlus(CppNet):
    """U-Net++ with a ResNet-34-style encoder and learnably mixed deep-supervision heads, in C++.

    Encoder: torchvision's ResNet-34 layout (blocks 3-4-6-3, widths ``width·(1, 1, 2, 4, 8)``), randomly
    initialised; :meth:`load_encoder` (or ``encoder_weights=path``) loads a torchvision ResNet-34 state
    dict into it. Decoder: nested nodes ``X(i, j)`` with ``decoder_width·2^i`` channels, a
    full-resolution stage with ``decoder_width/2`` channels, four 1×1 heads (on ``X(0,1..3)``,
    bilinearly upsampled, and on the full-resolution stage) mixed as ``Σ softmax(head_weights)_j·head_j``.

    Convention:
        ``x (N, in_channels, H, W)``, ``H, W`` multiples of 32. Returns ``logits (N, 1, H, W)``,
        ``local (N, decoder_width/2, H, W)`` (the full-resolution decoder stage),
        ``global (N, 8·width, H/32, W/32)`` (the encoder's last map, the bottleneck).
        :meth:`forward_heads` also returns the four head logits for a deep-supervision loss.
    """

    name = "unetpp"

    def __init__(self, in_channels: int = 3, width: int = 64, decoder_width: int = 32,
                 encoder_weights: str | None = None):
        _positive_int("in_channels", in_channels, "UNetPlusPlus")
        _positive_int("width", width, "UNetPlusPlus")
        _positive_int("decoder_width", decoder_width, "UNetPlusPlus")
        if decoder_width % 2:
            raise ValueError(f"UNetPlusPlus: decoder_width must be even (the last stage has half), got {decoder_width}")
        super().__init__(_nets().cpp.UNetPlusPlus(in_channels=in_channels, width=width, decoder_width=decoder_width),
                         {"in_channels": in_channels, "width": width, "decoder_width": decoder_width})
        if encoder_weights is not None:
            self.load_encoder(encoder_weights)

    @property
    def tap_channels(self) -> dict:
        return {"local": self._init_kwargs["decoder_width"] // 2, "global": 8 * self._init_kwargs["width"]}

    def forward_heads(self, x: torch.Tensor):
        """``(logits, local, global, [head_1, ..., head_4])``, each head ``(N, 1, H, W)``."""
        logits, local, global_, heads = self._cpp.forward_with_heads(x)
        return logits, local, global_, list(heads)

    def load_encoder(self, source) -> int:
        """Load a torchvision ResNet-34 ``state_dict`` (a dict or a file saved with ``torch.save``).

        Keys are torchvision's (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...), optionally
        prefixed ``module.``; the classifier ``fc.*`` is ignored. Every encoder tensor must be present
        with the right shape (so ``width`` must be 64 and ``in_channels`` 3 for torchvision's weights).
        Returns the number of tensors loaded.
        """
        from pathlib import Path

        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"UNetPlusPlus.load_encoder: no such file {str(path)!r}")
            try:
                source = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001  (any unreadable file gets the same clear message)
                raise ValueError(f"UNetPlusPlus.load_encoder: {str(path)!r} is not a readable state dict: {exc}") from exc
            if isinstance(source, dict) and "state_dict" in source and isinstance(source["state_dict"], dict):
                source = source["state_dict"]
        if not isinstance(source, dict):
            raise TypeError(f"UNetPlusPlus.load_encoder: expected a state dict or a path, got {type(source).__name__}")
        given = {}
        for key, value in source.items():
            key = key[len("module."):] if key.startswith("module.") else key
            if not key.startswith("fc."):
                given[key] = value
        ours = {name[len("encoder."):]: t for name, t in self._cpp_tensors() if name.startswith("encoder.")}
        missing = sorted(ours.keys() - given.keys())
        unexpected = sorted(given.keys() - ours.keys())
        if missing or unexpected:
            raise ValueError(
                "UNetPlusPlus.load_encoder: the state dict is not a ResNet-34 encoder's: "
                f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}, "
                f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}"
            )
        for key, t in ours.items():
            if tuple(given[key].shape) != tuple(t.shape):
                raise ValueError(
                    f"UNetPlusPlus.load_encoder: {key} has shape {tuple(given[key].shape)}, the encoder expects "
                    f"{tuple(t.shape)} (torchvision's ResNet-34 needs width=64, in_channels=3)"
                )
        with torch.no_grad():
            for key, t in ours.items():
                t.copy_(given[key])
        return len(ours)


class RealtimeStudent(CppNet):
    """The light real-time student for CPU inference, in C++ (≈0.48 M parameters by default).

    A U-shaped net of depthwise-separable blocks with widths ``base·(1, 2, 3, 6, 8)``: a 3×3 stride-2
    stem, stages at strides 4, 8 and 16 of inverted residuals (expansion 4), a bottleneck gated by its
    pooled context, and a decoder of nearest ×2 upsampling, skip concatenation (the input image at full
    resolution) and separable blocks. Fastest in ``channels_last`` on the CPU.

    Convention:
        ``x (N, in_channels, H, W)``, ``H, W`` multiples of 16. Returns ``logits (N, 1, H, W)``,
        ``local (N, base, H, W)`` (the full-resolution decoder map), ``global (N, 8·base, H/16, W/16)``
        (the bottleneck).
    """

    name = "student"

    def __init__(self, in_channels: int = 3, base: int = 16):
        _positive_int("in_channels", in_channels, "RealtimeStudent")
        _positive_int("base", base, "RealtimeStudent")
        super().__init__(_nets().cpp.RealtimeStudent(in_channels=in_channels, base=base),
                         {"in_channels": in_channels, "base": base})

    @property
    def tap_channels(self) -> dict:
        return {"local": self._init_kwargs["base"], "global": 8 * self._init_kwargs["base"]}


class StudentKD(CppNet):
    """XDim-KD's 3-D student (docs/xdim.md, "The 3-D student"), an anisotropic U-Net in C++.

    In-plane (1, k, k) convolutions everywhere except three (3, 3, 3) convolutions (dilation (1, 2, 2)) at
    stride 8, so each output slice sees exactly 7 input slices. Widths ``base·(1, 2, 4, 4)`` (32 in the
    original code, ≈ 2.9 M parameters with ``kd_channels=384``). The KD head concatenates the bottleneck and
    the decoder maps average-pooled to the stride-8 grid (``12·base`` channels), then Dropout(0.5), a 1×1×1
    conv with ReLU and a 1×1×1 conv to ``kd_channels`` (the teacher's channel count).

    Convention:
        ``x (B, in_channels, Z, H, W)``, ``H, W`` multiples of 8, ``Z`` any. ``forward(x)`` returns
        ``logits (B, Z, H, W)`` and ``kd (B, kd_channels, Z, H/8, W/8)``; ``forward(x, kd_grid=(h, w))``
        average-pools ``kd`` to a teacher grid of another size.
    """

    name = "student_kd"

    def __init__(self, in_channels: int = 1, base: int = 32, kd_channels: int = 384):
        _positive_int("in_channels", in_channels, "StudentKD")
        _positive_int("base", base, "StudentKD")
        _positive_int("kd_channels", kd_channels, "StudentKD")
        super().__init__(_nets().cpp.StudentKD(in_channels=in_channels, base=base, kd_channels=kd_channels),
                         {"in_channels": in_channels, "base": base, "kd_channels": kd_channels})

    def forward(self, x: torch.Tensor, kd_grid=None):
        logits, kd = self._cpp.forward(x)
        if kd_grid is not None:
            kd = torch.nn.functional.adaptive_avg_pool3d(kd, (kd.shape[2], int(kd_grid[0]), int(kd_grid[1])))
        return logits, kd

    @property
    def z_receptive_field(self) -> int:
        """Input slices each output slice depends on (three z-kernels of 3 at the bottleneck)."""
        return 7
