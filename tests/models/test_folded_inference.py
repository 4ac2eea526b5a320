"""Eval-mode inference folds batch norm into the convolutions (cpp FoldedConvBn): same outputs as the
unfused ops, and the cache follows every change of the weights."""
from __future__ import annotations

import pytest
import torch

from dtc.models import create

from tests.conftest import randomise_weights_ as randomise_


def outputs(model, x, folded: bool):
    # The folded path is taken without a parameter gradient; with one the unfused ops run (so that
    # gradients reach the batch-norm parameters).
    if folded:
        with torch.no_grad():
            return model(x)
    return tuple(t.detach() for t in model(x))


@pytest.mark.parametrize("name, kwargs", [("student", {"base": 8}), ("unet", {"base": 4}),
                                          ("unetpp", {"width": 8, "decoder_width": 8})])
def test_folded_eval_equals_the_unfused_ops(name, kwargs):
    model = randomise_(create(name, **kwargs), 0).eval()
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    for a, b in zip(outputs(model, x, True), outputs(model, x, False)):
        assert float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max()))


def test_folded_cache_follows_weights_dtype_and_layout():
    model = randomise_(create("student", base=8), 0).eval()
    x = torch.rand(1, 3, 32, 48)
    first = outputs(model, x, True)[0]
    randomise_(model, 5)  # in-place writes: the version counters move
    second = outputs(model, x, True)[0]
    assert float((second - outputs(model, x, False)[0]).abs().max()) <= 1e-5
    assert float((second - first).abs().max()) > 1e-3
    other = randomise_(create("student", base=8), 9).eval()
    model.load_state_dict(other.state_dict())
    assert float((outputs(model, x, True)[0] - outputs(other, x, False)[0]).abs().max()) <= 1e-5
    model.double()
    out64 = outputs(model, x.double(), True)[0]
    assert out64.dtype == torch.float64
    assert float((out64 - outputs(model, x.double(), False)[0]).abs().max()) <= 1e-10
    model.float().to(memory_format=torch.channels_last)
    cl = outputs(model, x.contiguous(memory_format=torch.channels_last), True)[0]
    assert float((cl - outputs(other, x, False)[0]).abs().max()) <= 1e-5


def test_a_model_converted_under_inference_mode_is_folded_afresh():
    # `.to(...)` inside torch.inference_mode() makes inference tensors, which have no version counter
    # (on an H200 the benchmark's `.cuda()` under inference mode failed with "Inference tensors do not
    # track version counter"): each call folds them again, so in-place updates are still seen.
    model = randomise_(create("student", base=8), 0).eval()
    x = torch.rand(1, 3, 32, 48, dtype=torch.float64)
    with torch.inference_mode():
        model.double()
        first = model(x)[0]
        randomise_(model, 5)
        second = model(x)[0]
    model_copy = randomise_(create("student", base=8), 5).eval().double()
    assert float((second - outputs(model_copy, x, False)[0]).abs().max()) <= 1e-10
    assert float((second - first).abs().max()) > 1e-3


def test_training_mode_is_unchanged_and_gets_gradients():
    model = randomise_(create("student", base=8), 0).train()
    x = torch.rand(2, 3, 32, 48)
    model(x)[0].sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.stem.bn.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name, kwargs", [("student", {"base": 8}), ("unet", {"base": 4})])
def test_channels_last_inference_at_any_thread_count_equals_the_unfused_ops(name, kwargs):
    # The deployment path: channels-last activations (the student's decoder then upsamples and
    # concatenates in one pass, its head is one matrix product), and oneDNN weights packed per thread
    # count, which a stream changes between frames when the machine gets busy.
    model = randomise_(create(name, **kwargs), 0).eval().to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=torch.channels_last)
    expected = outputs(model, x, False)
    threads = torch.get_num_threads()
    try:
        for n in (2, 1, 2, 1):
            torch.set_num_threads(n)
            for a, b in zip(outputs(model, x, True), expected):
                assert float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max()))
    finally:
        torch.set_num_threads(threads)
