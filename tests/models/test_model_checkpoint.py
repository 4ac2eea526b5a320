"""dtc.models.save_checkpoint / load_checkpoint: round trips, atomic writes, clear errors."""
from __future__ import annotations

import logging

import pytest
import torch

from dtc import models


def _x():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(9))


@pytest.mark.parametrize("name,kw", [("unet", dict(base=4)), ("unetpp", dict(width=4, decoder_width=4)),
                                     ("student", dict(base=4))])
def test_round_trip_rebuilds_the_same_net(tmp_path, name, kw, caplog):
    torch.manual_seed(0)
    net = models.create(name, **kw)
    net(_x())  # train-mode forward: running statistics move away from their defaults
    path = tmp_path / "sub" / f"{name}.pt"
    assert models.save_checkpoint(path, net, extra={"epoch": 4, "dice": 0.81}) == path
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    with caplog.at_level(logging.INFO, logger="dtc.models"):
        loaded, meta = models.load_checkpoint(path)
    assert type(loaded) is type(net) and loaded.init_kwargs == net.init_kwargs
    assert meta["name"] == name and meta["kwargs"] == {"in_channels": 3, **kw} and meta["extra"] == {"epoch": 4, "dice": 0.81}
    assert meta["num_parameters"] == models.count_parameters(net)
    assert name in meta["summary"] and str(path) in meta["summary"] and meta["summary"] in caplog.text
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    net.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(_x())[0], net(_x())[0])
    # Readable without dtc's classes (weights_only).
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == models.CHECKPOINT_FORMAT and raw["name"] == name


def test_overwrite_and_wrapped_models(tmp_path):
    torch.manual_seed(0)
    net = models.create("student", base=4)
    path = tmp_path / "ckpt.pt"
    models.save_checkpoint(path, net)
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    # A wrapper with .module (as DDP has) is unwrapped; the file is replaced.
    wrapper = torch.nn.Module()
    wrapper.module = net
    models.save_checkpoint(path, wrapper)
    loaded, _ = models.load_checkpoint(path)
    assert torch.equal(next(loaded.parameters()), next(net.parameters()))


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        models.load_checkpoint(missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x04garbage" * 10)
    with pytest.raises(ValueError, match="corrupt.pt could not be read"):
        models.load_checkpoint(corrupt)
    torch.manual_seed(0)
    net = models.create("student", base=4)
    bare = tmp_path / "bare.pt"
    torch.save(net.state_dict(), bare)
    with pytest.raises(ValueError, match="bare.pt is not a dtc checkpoint"):
        models.load_checkpoint(bare)
    good = tmp_path / "good.pt"
    models.save_checkpoint(good, net)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated.pt"):
        models.load_checkpoint(truncated)
    # Weights that do not fit the stored architecture.
    payload = torch.load(good, weights_only=True)
    payload["kwargs"] = {"base": 8}
    mismatched = tmp_path / "mismatched.pt"
    torch.save(payload, mismatched)
    with pytest.raises(ValueError, match="mismatched.pt.*do not fit"):
        models.load_checkpoint(mismatched)
    with pytest.raises(ValueError, match="what load_checkpoint can rebuild: .*requires the argument 'in_features'"):
        models.save_checkpoint(tmp_path / "x.pt", torch.nn.Linear(2, 2))
