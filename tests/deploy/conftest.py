from __future__ import annotations

import pytest
import torch

from dtc.engine.checkpoint import FORMAT, VERSION
from dtc.io import atomic_torch_save
from dtc.models import create


def randomised(model):
    """Random weights and BatchNorm statistics, so normalisation and folding are not identities."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (1.0 / max(1, t[0].numel()) ** 0.5))
    return model.eval()


@pytest.fixture
def write_checkpoint(tmp_path):
    """write_checkpoint(name, kwargs, preprocess=None) -> path of a run checkpoint as the trainer writes it."""

    def write(name="student", kwargs=None, preprocess=None, size=(48, 64), filename="ckpt.pt"):
        kwargs = dict(kwargs or {"base": 4})
        model = randomised(create(name, **kwargs))
        ckpt = {"format": FORMAT, "version": VERSION, "stage": "student", "model":
                {"name": name, "kwargs": kwargs, "state_dict": model.state_dict()},
                "config": {"data": {"height": size[0], "width": size[1]}}}
        if preprocess is not None:
            ckpt["preprocess"] = preprocess
        path = tmp_path / filename
        atomic_torch_save(ckpt, path)
        return path

    return write
