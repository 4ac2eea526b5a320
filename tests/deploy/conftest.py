from __future__ import annotations

import pytest
import torch

from dtc.engine.checkpoint import FORMAT, VERSION
from dtc.io import atomic_torch_save
from dtc.models import create

from tests.conftest import randomise_weights_


@pytest.fixture
def write_checkpoint(tmp_path):
    """write_checkpoint(name, kwargs, preprocess=None) -> path of a run checkpoint as the trainer writes it."""

    def write(name="student", kwargs=None, preprocess=None, size=(48, 64), filename="ckpt.pt"):
        kwargs = dict(kwargs or {"base": 4})
        model = randomise_weights_(create(name, **kwargs)).eval()
        ckpt = {"format": FORMAT, "version": VERSION, "stage": "student", "model":
                {"name": name, "kwargs": kwargs, "state_dict": model.state_dict()},
                "config": {"data": {"height": size[0], "width": size[1]}}}
        if preprocess is not None:
            ckpt["preprocess"] = preprocess
        path = tmp_path / filename
        atomic_torch_save(ckpt, path)
        return path

    return write
