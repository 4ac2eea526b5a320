"""The C++ kernels (dtc._C.sunseg_frame) against the numpy reference."""
import numpy as np
import pytest

from dtc.metrics.functional import cpp_available, sunseg_frame

from .frame_cases import CASES

pytestmark = pytest.mark.skipif(not cpp_available(), reason="dtc._C is not built (make dev) or lacks the metric kernels")

SCALARS = ("Smeasure", "MAE", "adpEm", "adpFm")
CURVES = ("Em", "Fm", "Sen", "Spe", "Dice", "IoU")


@pytest.mark.parametrize("name,pred,gt", CASES, ids=[c[0] for c in CASES])
def test_cpp_matches_numpy(name, pred, gt):
    a = sunseg_frame(pred, gt, backend="numpy")
    b = sunseg_frame(pred, gt, backend="cpp")
    for k in SCALARS:
        assert b[k] == pytest.approx(a[k], rel=1e-12, abs=1e-12), k
    for k in CURVES:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-12, atol=1e-12, err_msg=k)
    # Weighted F also depends on which object pixel the distance transform picks among equidistant ones;
    # our Felzenszwalb pass order (columns, then rows, keeping the first minimum) picks as scipy does here.
    assert b["wFmeasure"] == pytest.approx(a["wFmeasure"], rel=1e-12, abs=1e-12)


def test_cpp_rejects_bad_input():
    import torch

    from dtc.metrics.functional import _cpp_module

    core = _cpp_module()
    with pytest.raises(RuntimeError, match="gt must have pred's shape"):
        core.sunseg_frame(torch.zeros(4, 5, dtype=torch.float64), torch.zeros(4, 4, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match=r"probabilities in \[0, 1\]"):
        core.sunseg_frame(torch.full((4, 4), 2.0, dtype=torch.float64), torch.zeros(4, 4, dtype=torch.uint8))
