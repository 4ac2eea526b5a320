"""The CLI's one place for errors: every bad input ends in one line naming the argument or file and a
non-zero exit; --debug shows the traceback; Ctrl-C exits 130 saying what was kept."""
from __future__ import annotations

import errno

import pytest
import torch

from dtc.cli.main import main

from tests.engine.conftest import TINY


def _one_line(capsys, *needles: str) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err + captured.out
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("override, named", [
    ("optim.lr=.inf", "optim.lr must be a finite number"),
    ("optim.lr=.nan", "optim.lr must be a finite number"),
    ("data.max_windows=0", "data.max_windows must be >= 1"),
    ("data.max_windows=-5", "data.max_windows must be >= 1"),
    ("run.threads=-1", "run.threads must be >= 1"),
    ("optim.t0=0", "optim.t0 and optim.t_mult must be >= 1"),
    ("run.seed=-1", "run.seed must be in [0, 2**32)"),
    ("run.device=tpu", "run.device must be"),
    ("model.kwargs={base: 4, nope: 1}", "nope"),
    ("model.kwargs={base: 4", "override 'model.kwargs={base: 4', line 1, column"),
])
def test_values_that_used_to_fail_inside_torch_are_refused_in_one_line_before_training(override, named, tmp_path,
                                                                                      capsys):
    out = tmp_path / "run"
    assert main(["train-teacher", *TINY, "optim.epochs=1", override, "--out", str(out)]) == 2
    _one_line(capsys, "dtc train-teacher: error:", named)
    assert not (out / "last.pt").exists()


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("optim:\n  lr: 1e-3\n  epochs: [1, 2\nrun: {}\n")
    assert main(["train-teacher", "--config", str(cfg), "--dry-run"]) == 2
    err = _one_line(capsys, str(cfg), "line ", "column ", "not valid YAML")
    assert "line 4" in err or "line 3" in err


@pytest.mark.parametrize("device, named", [("tpu", "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
                                           ("cuda:x", "got 'cuda:x'")])
def test_infer_refuses_an_unknown_device_in_one_line(device, named, tmp_path, capsys):
    assert main(["infer", str(tmp_path / "any.pt"), str(tmp_path), "--device", device]) == 2
    _one_line(capsys, named)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
def test_infer_on_cuda_without_a_gpu_says_so_in_one_line(tmp_path, capsys):
    assert main(["infer", str(tmp_path / "any.pt"), str(tmp_path), "--device", "cuda"]) == 2
    _one_line(capsys, "no CUDA device is available", "--device cpu")


def _raise_in_training(monkeypatch, exc):
    import dtc.engine

    def boom(cfg, resume=False, allow_changes=()):
        raise exc

    monkeypatch.setattr(dtc.engine, "train", boom)


def test_ctrl_c_exits_130_and_says_what_was_kept(monkeypatch, tmp_path, capsys):
    _raise_in_training(monkeypatch, KeyboardInterrupt())
    assert main(["train-teacher", *TINY, "--out", str(tmp_path / "r")]) == 130
    _one_line(capsys, "dtc train-teacher: interrupted", "last.pt", "--resume")


def test_a_full_disk_says_the_last_checkpoint_is_intact(monkeypatch, tmp_path, capsys):
    _raise_in_training(monkeypatch, OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r" / "last.pt")))
    assert main(["train-teacher", *TINY, "--out", str(tmp_path / "r")]) == 2
    _one_line(capsys, "no space left", "last.pt", "--resume")


def test_an_unexpected_exception_is_one_line_and_debug_shows_the_traceback(monkeypatch, tmp_path, capsys):
    _raise_in_training(monkeypatch, RuntimeError("something\ninside"))
    assert main(["train-teacher", *TINY, "--out", str(tmp_path / "r")]) == 1
    _one_line(capsys, "internal error (RuntimeError: something inside)", "--debug")
    with pytest.raises(RuntimeError, match="something"):
        main(["--debug", "train-teacher", *TINY, "--out", str(tmp_path / "r")])
