"""`dtc bench v2i` runs its three comparisons at a tiny size and prints their tables (figures untested)."""
from __future__ import annotations

import pytest

from dtc.bench import main


def test_bench_v2i_prints_every_table(capsys):
    assert main(["v2i", "--size", "64x64", "--batch", "1", "--d", "16", "--heads", "2", "--points", "2",
                 "--channels", "4,6,8", "--model", "student", "--model-kwargs", "base=4", "--rounds", "1",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for text in ("### msda_st", "### tfd_loss", "| forward |", "| forward + backward |", "| image model |",
                 "| V2I student |", "host load"):
        assert text in out


def test_bench_v2i_refuses_a_bad_size():
    with pytest.raises(SystemExit):
        main(["v2i", "--size", "big"])
    with pytest.raises(SystemExit):
        main(["v2i", "--size", "60x64"])
