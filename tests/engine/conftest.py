from __future__ import annotations

import pytest

from dtc.engine import load_config

# Tiny runs: 48x64 frames, a 4-channel student, a few windows. Multiples of 16 as the nets require.
TINY = ["data.height=48", "data.width=64", "data.num_videos=6", "data.frames=8", "data.batch_size=4",
        "data.max_windows=8", "model.kwargs={base: 4}", "run.progress=false", "optim.lr=1e-2"]


@pytest.fixture
def tiny_config(tmp_path):
    def make(*overrides: str, out: str = "run"):
        return load_config(None, [*TINY, f"run.out_dir={tmp_path / out}", *overrides])

    return make


@pytest.fixture
def tiny_teacher(tiny_config):
    """A stage-1 checkpoint trained for one epoch (shared shape with the students below)."""
    from dtc.engine import train

    cfg = tiny_config("stage=teacher", "optim.epochs=1", "optim.scheduler=poly", out="teacher")
    train(cfg)
    return cfg.run.out_dir + "/last.pt"
