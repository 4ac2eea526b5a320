from __future__ import annotations

import numpy as np
import pytest

from dtc.data.synth import SynthConfig, simulate_video


@pytest.fixture(scope="session")
def synth_videos():
    """Two simulator videos (one per view) at the method's 256x448 size, with exact backward GT flow."""
    return [simulate_video(SynthConfig(frames=4), seed=11, view="axial"),
            simulate_video(SynthConfig(frames=4, motion=1.5), seed=12, view="sagittal")]


def to_u8(frame: np.ndarray) -> np.ndarray:
    return np.round(np.clip(frame, 0, 1) * 255).astype(np.uint8)
