"""`dtc bench stream` runs every contender on one clip and prints one row each (figures are not tested)."""
from __future__ import annotations

import importlib.util

import pytest

from dtc.bench import main
from dtc.cli.stream import find_dtc_stream


@pytest.mark.slow
def test_bench_stream_prints_a_row_per_contender(capsys):
    assert main(["stream", "--sizes", "32x48", "--frames", "3", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    names = ["exported .pt2 (Python loop)", "Segmenter.push (Python loop)", "dtc infer (Python, batched)"]
    if all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")):
        names.append("ONNX Runtime (Python loop)")
    try:
        find_dtc_stream()
        names += ["C++ runtime (dtc-stream)", "C++ runtime, live 30 FPS feed", "C++ runtime, live 30 FPS feed, fixed threads",
                  "C++ runtime, live 30 FPS feed, --drop-late"]
    except FileNotFoundError:
        pass
    for name in names:
        assert f"| 32x48 | {name} |" in out
    assert "host load" in out


def test_bench_stream_refuses_a_bad_size():
    with pytest.raises(SystemExit):
        main(["stream", "--sizes", "big"])
