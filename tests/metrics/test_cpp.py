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


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e300, -1e300])
def test_cpp_rejects_values_that_do_not_convert_to_a_bin(bad):
    """Non-finite or huge predictions are rejected by name; before the check they were converted to an
    int bin index (undefined behaviour that UBSan's float-cast-overflow reports; benchmarks/sanitize.sh)."""
    import torch

    from dtc.metrics.functional import _cpp_module

    pred = torch.full((5, 6), 0.5, dtype=torch.float64)
    pred[2, 3] = bad
    gt = torch.zeros(5, 6, dtype=torch.uint8)
    gt[1:3, 1:4] = 1
    with pytest.raises(RuntimeError, match=r"pred must hold probabilities in \[0, 1\]"):
        _cpp_module().sunseg_frame(pred, gt)
