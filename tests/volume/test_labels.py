"""Sparse slice-label selection (oracle O-X3)."""
from __future__ import annotations

import numpy as np
import pytest

from dtc.volume import select_labelled_slices


def test_cdkd_preset_reproduces_randomstate0_choice():
    counts = [97, 120, 88, 143]
    total = sum(counts)
    flags = select_labelled_slices(counts, 0.01, preset="cdkd")
    chosen = np.flatnonzero(np.concatenate(flags))
    # legacy RandomState.choice without replacement is the first `size` entries of a permutation
    expected = np.sort(np.random.RandomState(0).permutation(total)[:int(total * 0.01)])
    assert np.array_equal(chosen, expected)
    assert [len(f) for f in flags] == counts


@pytest.mark.parametrize("seed", range(5))
def test_stratified_gives_every_volume_a_label(seed):
    counts = [200, 150, 180, 220, 90]
    flags = select_labelled_slices(counts, 0.01, seed=seed)
    n = sum(counts)
    assert sum(int(f.sum()) for f in flags) == max(1, round(0.01 * n))
    assert all(f.sum() >= 1 for f in flags)


def test_uniform_may_miss_volumes_and_fewer_labels_than_volumes():
    counts = [300] * 10
    missed = [any(f.sum() == 0 for f in select_labelled_slices(counts, 0.004, stratify=None, seed=s)) for s in range(10)]
    assert any(missed)  # what the stratified mode prevents
    flags = select_labelled_slices([50] * 4, 0.001)  # n_lab = 1 < 4 volumes: at least one label overall
    assert sum(int(f.sum()) for f in flags) == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="slices_per_volume"):
        select_labelled_slices([], 0.1)
    with pytest.raises(ValueError, match="ratio must be in"):
        select_labelled_slices([10], 0.0)
    with pytest.raises(ValueError, match="preset must be one of"):
        select_labelled_slices([10], 0.1, preset="x")
    with pytest.raises(ValueError, match="stratify must be"):
        select_labelled_slices([10], 0.1, stratify="patient")
