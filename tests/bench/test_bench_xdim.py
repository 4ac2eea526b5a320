"""`dtc bench xdim` runs its three comparisons at a tiny size and prints their tables (figures untested)."""
from __future__ import annotations

import pytest

from dtc.bench import main


def test_bench_xdim_prints_every_table(capsys):
    assert main(["xdim", "--volume", "8x12x12", "--slices", "4", "--points", "8", "--channels", "6,5",
                 "--infer", "20x16x16", "--size", "16", "--base", "4", "--rounds", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for text in ("Eigen PCG (Jacobi)", "Adam, 60 steps", "max |PCG - Adam|", "| fused |", "| composition |",
                 "16 slices, overlap 8", "host load"):
        assert text in out


def test_bench_xdim_refuses_a_bad_size():
    with pytest.raises(SystemExit):
        main(["xdim", "--volume", "big"])
