"""`dtc export`: a checkpoint's network with its preprocessing, as files other programs run.

* ``model.dtc``: the C++ runtime's model file (LibTorch archive; see cpp/src/nets/model.cpp for why),
  read by ``dtc-stream`` and by applications through ``cpp/include/dtc/runtime.h``;
* ``model.pt2``: a ``torch.export`` program (student networks: exported from the pure-PyTorch twin);
* ``model.onnx``: when ``onnx`` (and ``onnxruntime`` to verify it) are installed.

Every file follows one contract: float32 frames in [0, 1], ``(N, C_in, H, W)``, un-normalised, H and W
multiples of the size multiple (at least two of them for .pt2/ONNX) -> probabilities ``(N, 1, H, W)``. Each is verified when written, by
running it on probe frames at two sizes and comparing with the checkpoint's own network (max-abs
difference <= ``TOLERANCE``); a file that fails is not left behind.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Optional

import torch

from dtc.deploy.preprocess import Preprocessing, preprocessing_of
from dtc.deploy.segmenter import Segmenter
from dtc.deploy.twin import ExportedModel, StudentTwin
from dtc.io import atomic_write_text

__all__ = ["export", "TOLERANCE", "probe_frames", "exported_program_module"]

TOLERANCE = 1e-5  # float32 max-abs difference an export may have from the checkpoint


def probe_frames(pre: Preprocessing, seed: int = 0) -> list[torch.Tensor]:
    """Two probe batches in [0, 1]: the training size (or 4x6 multiples) and a different size, so a
    shape specialised by the exporter is caught."""
    g = torch.Generator().manual_seed(seed)
    m = pre.multiple
    h, w = pre.train_size if pre.train_size else (4 * m, 6 * m)
    return [torch.rand(1, pre.in_channels, h, w, generator=g),
            torch.rand(2, pre.in_channels, h + m if h > m else 2 * m, max(m, w - m), generator=g)]


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"export verification: output shape {tuple(a.shape)} differs from the checkpoint's {tuple(b.shape)}")
    return float((a.float().cpu() - b.float().cpu()).abs().max())


def _verify(kind: str, path: Path, run, probes, references) -> float:
    worst = 0.0
    for x, ref in zip(probes, references):
        worst = max(worst, _max_abs(run(x), ref))
    if not worst <= TOLERANCE:
        path.unlink(missing_ok=True)
        raise ValueError(f"export: the {kind} file differs from the checkpoint by {worst:.3g} (max-abs) on the probe "
                         f"frames; more than the {TOLERANCE:g} allowed, so it was not written")
    return worst


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def exported_program_module(path):
    """The callable module of a ``.pt2`` written by :func:`export`."""
    return torch.export.load(str(path)).module()


def export(checkpoint, out, *, onnx: Optional[bool] = None) -> dict:
    """Writes ``out/model.dtc``, ``out/model.pt2`` (student), ``out/model.onnx`` (when possible) and
    ``out/export.json`` (the preprocessing, the files and each one's verified max-abs difference).

    ``onnx``: None writes ONNX when ``onnx`` and ``onnxruntime`` are importable; True requires it.
    Returns the summary written to ``export.json``.
    """
    from dtc.engine.checkpoint import model_from_checkpoint
    from dtc.models.cpp_net import _nets

    checkpoint, out = Path(checkpoint), Path(out)
    model, ckpt = model_from_checkpoint(checkpoint, map_location="cpu")
    pre = preprocessing_of(model, ckpt)
    name, kwargs = ckpt["model"]["name"], dict(ckpt["model"]["kwargs"])
    segmenter = Segmenter(model, pre, device="cpu")
    probes = probe_frames(pre)
    references = [segmenter.probabilities(x) for x in probes]
    out.mkdir(parents=True, exist_ok=True)
    summary = {"checkpoint": str(checkpoint), "net": name, "kwargs": kwargs, "preprocess": pre.to_dict(),
               "contract": "float32 frames in [0, 1], (N, C_in, H, W) un-normalised, H and W multiples of "
                           f"{pre.multiple} -> probabilities (N, 1, H, W)",
               "tolerance": TOLERANCE, "torch_version": torch.__version__, "files": {}, "skipped": {}}
    metadata = json.dumps({k: summary[k] for k in ("checkpoint", "net", "kwargs", "preprocess", "torch_version")})

    # 1. The C++ runtime's model file, read back through the runtime's own loader.
    path = out / "model.dtc"
    tmp = _tmp(path)
    _nets().save_runtime_model(str(tmp), name, {k: int(v) for k, v in kwargs.items()},
                               {k: v.detach() for k, v in model.state_dict().items()}, pre.in_channels,
                               list(pre.mean), list(pre.std), pre.multiple, list(pre.train_size or ()),
                               float(pre.threshold), metadata)
    err = _verify("runtime", tmp, lambda x: _nets().runtime_probabilities(str(tmp), x, "cpu"), probes, references)
    os.replace(tmp, path)
    summary["files"]["runtime"] = {"path": path.name, "max_abs": err}

    # 2. torch.export (and ONNX from the same program): the exporters trace Python, so they take the twin.
    if name != "student":
        why = f"torch.export/ONNX need the pure-PyTorch twin, which exists for the student only (this is {name!r})"
        summary["skipped"]["pt2"] = why
        summary["skipped"]["onnx"] = why
    else:
        twin = StudentTwin(**kwargs)
        twin.load_state_dict(model.state_dict())
        wrapped = ExportedModel(twin, pre).eval()
        m = pre.multiple
        # At least two blocks per side: the exporter specialises a bottleneck of size 1 (0/1 specialisation),
        # so the .pt2/ONNX files take H, W >= 2 multiples (the runtime file takes any multiple).
        dims = {"x": {0: torch.export.Dim("batch", min=1, max=1024),
                      2: m * torch.export.Dim("h_blocks", min=2, max=4096 // m),
                      3: m * torch.export.Dim("w_blocks", min=2, max=4096 // m)}}
        with torch.no_grad():
            # The batch-of-two probe: an example batch of one would specialise the batch size to 1.
            program = torch.export.export(wrapped, (probes[1],), dynamic_shapes=dims)
        path = out / "model.pt2"
        tmp = _tmp(path)
        torch.export.save(program, str(tmp))
        loaded = exported_program_module(tmp)
        with torch.no_grad():
            err = _verify("torch.export", tmp, loaded, probes, references)
        os.replace(tmp, path)
        summary["files"]["pt2"] = {"path": path.name, "max_abs": err}

        have_onnx = importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxruntime") is not None
        if onnx and not have_onnx:
            raise ValueError("export: ONNX was asked for but onnx and onnxruntime are not both installed "
                             "(pip install onnx onnxruntime)")
        if onnx is False or not have_onnx:
            summary["skipped"]["onnx"] = "not asked for" if onnx is False else "onnx/onnxruntime not installed"
        else:
            import onnxruntime

            path = out / "model.onnx"
            tmp = _tmp(path)
            with torch.no_grad():
                torch.onnx.export(wrapped, (probes[1],), str(tmp), input_names=["x"], output_names=["prob"],
                                  dynamic_shapes=dims, dynamo=True)
            session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            run = lambda x: torch.from_numpy(session.run(None, {"x": x.numpy()})[0])  # noqa: E731
            err = _verify("ONNX", tmp, run, probes, references)
            os.replace(tmp, path)
            summary["files"]["onnx"] = {"path": path.name, "max_abs": err}
    atomic_write_text(out / "export.json", json.dumps(summary, indent=2) + "\n")
    return summary
