"""Issue 12 items 8 and 9: DTCObjective with check_inputs refuses NaN flows and 0..255 images, which
used to give a finite, gradient-free loss (both tests fail on the code before the fix)."""
from __future__ import annotations

import pytest
import torch

from dtc import losses

from .cases import CASES, make_case


def _objective_inputs():
    d = make_case(CASES[0], dtype=torch.float32, seed=0)
    return [d[k] for k in ("z", "loc", "glob", "zt", "y", "images", "flows")]


def test_objective_refuses_nan_flows_while_checking_inputs():
    args = _objective_inputs()
    args[6] = args[6].clone()
    args[6][0, 1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="flows holds NaN"):
        losses.DTCObjective("dtc", check_inputs=True)(*args)


def test_objective_refuses_images_in_0_255_while_checking_inputs():
    args = _objective_inputs()
    args[5] = args[5] * 255
    with pytest.raises(ValueError, match=r"images must be in \[0, 1\] \(divide 8-bit frames by 255\)"):
        losses.DTCObjective("dtc", check_inputs=True)(*args)


def test_objective_still_accepts_valid_inputs():
    total, _ = losses.DTCObjective("dtc", check_inputs=True)(*_objective_inputs())
    assert torch.isfinite(total)
