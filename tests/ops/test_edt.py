"""torch.ops.dtc.edt: exact against brute force in 2-D and 3-D with anisotropic spacing (oracle O-M2),
batches, empty samples, fake kernel, opcheck and bad input."""
from __future__ import annotations

import pytest
import torch

import dtc.ops
from dtc.ops import reference


def _random_mask(shape, p, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("p", [0.01, 0.1, 0.5])
def test_2d_equals_brute_force_on_random_32x32_masks(seed, p):
    mask = _random_mask((32, 32), p, seed)
    mask[seed, 3 * seed] = True  # at least one object pixel
    got = dtc.ops.edt(mask, (1.0, 1.0))
    assert got.dtype == torch.float64
    assert torch.allclose(got, reference.edt(mask, (1.0, 1.0)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.7, 1.3), (0.3, 3.0, 1.0)])
@pytest.mark.parametrize("seed", range(3))
def test_3d_anisotropic_equals_brute_force_on_8x8x8_volumes(spacing, seed):
    mask = _random_mask((8, 8, 8), 0.05, seed)
    mask[1, 2, 3] = True
    got = dtc.ops.edt(mask, spacing)
    assert torch.allclose(got, reference.edt(mask, spacing), rtol=1e-12, atol=1e-12)


def test_2d_anisotropic_batch_with_an_empty_sample():
    mask = _random_mask((3, 2, 9, 13), 0.08, 5)
    mask[0, 1] = False
    mask[1, 0, 4, 4] = True
    got = dtc.ops.edt(mask.to(torch.uint8), (1.7, 0.4))
    assert torch.isinf(got[0, 1]).all()
    finite = torch.isfinite(got)
    want = reference.edt(mask, (1.7, 0.4))
    assert torch.equal(finite, torch.isfinite(want))
    assert torch.allclose(got[finite], want[finite], rtol=1e-12, atol=1e-12)


def test_values_by_hand_and_zero_on_the_object():
    mask = torch.zeros(5, 7, dtype=torch.bool)
    mask[2, 3] = True
    d = dtc.ops.edt(mask, (1.0, 2.0))
    assert d[2, 3] == 0 and d[2, 5] == 4.0 and d[0, 3] == 2.0 and d[0, 4] == pytest.approx((4 + 4) ** 0.5)
    one_d = dtc.ops.edt(torch.tensor([0, 0, 1, 0, 0, 0, 1]), (0.5,))
    assert one_d.tolist() == [1.0, 0.5, 0.0, 0.5, 1.0, 0.5, 0.0]


def test_non_contiguous_and_float_masks():
    mask = _random_mask((20, 24), 0.1, 7)
    t = mask.t()
    assert not t.is_contiguous()
    assert torch.equal(dtc.ops.edt(t, (1.0, 1.0)), dtc.ops.edt(t.contiguous(), (1.0, 1.0)))
    assert torch.equal(dtc.ops.edt(mask.double() * 0.3, (1.0, 1.0)), dtc.ops.edt(mask, (1.0, 1.0)))


def test_opcheck_and_fake():
    mask = _random_mask((2, 8, 8), 0.2, 3)
    torch.library.opcheck(torch.ops.dtc.edt.default, (mask, [1.0, 2.0]),
                          test_utils=("test_schema", "test_faketensor"))
    with torch._subclasses.fake_tensor.FakeTensorMode():
        fake = torch.ops.dtc.edt(torch.empty(2, 8, 8, dtype=torch.bool), [1.0, 1.0])
    assert fake.shape == (2, 8, 8) and fake.dtype == torch.float64


@pytest.mark.parametrize("spacing,match", [([], "1, 2 or 3 values"), ([1, 1, 1, 1], "1, 2 or 3 values"),
                                           ([1.0, 0.0], r"spacing\[1\]"), ([1.0, float("nan")], r"spacing\[1\]")])
def test_bad_spacing(spacing, match):
    with pytest.raises(ValueError, match=match):
        torch.ops.dtc.edt(torch.ones(4, 4, dtype=torch.bool), spacing)


def test_bad_mask():
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        torch.ops.dtc.edt(torch.ones(4, 4), [1.0, 1.0, 1.0])
    with pytest.raises(TypeError, match="ComplexFloat"):
        torch.ops.dtc.edt(torch.ones(4, 4, dtype=torch.complex64), [1.0, 1.0])
