"""Which slices carry a label under extreme label deficiency (docs/xdim.md, "Sparse labels")."""
from __future__ import annotations

import numpy as np

PRESETS = ("dtc", "cdkd")


def select_labelled_slices(slices_per_volume, ratio: float, preset: str = "dtc", stratify: str | None = "volume",
                           seed: int = 0) -> list[np.ndarray]:
    """Per volume, a boolean flag per slice: True where the slice's label may be used.

    slices_per_volume: the number of slices of each training volume, in the volumes' sorted order.
    preset="cdkd": floor(ratio * N) global slice indices drawn without replacement by
        `numpy.random.RandomState(seed)` over all N training slices concatenated in volume order,
        which is the original code's choice (seed 0 there); `stratify` is ignored.
    preset="dtc": max(1, round(ratio * N)) slices. With stratify="volume" every volume first gets one
        slice (while there are at least as many labels as volumes), the rest are drawn uniformly from the
        remaining slices; with stratify=None the draw is uniform over all slices.
    """
    counts = [int(c) for c in slices_per_volume]
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"slices_per_volume must be a non-empty list of positive counts, got {counts}")
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if stratify not in (None, "volume"):
        raise ValueError(f"stratify must be None or 'volume', got {stratify!r}")
    total = sum(counts)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    if preset == "cdkd":
        chosen = np.random.RandomState(seed).choice(np.arange(total), size=int(total * ratio), replace=False)
    else:
        n_lab = max(1, int(round(ratio * total)))
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5A1]))
        if stratify == "volume" and n_lab >= len(counts):
            per_volume = np.array([offsets[v] + rng.integers(counts[v]) for v in range(len(counts))])
            rest = np.setdiff1d(np.arange(total), per_volume)
            chosen = np.concatenate([per_volume, rng.choice(rest, size=n_lab - len(counts), replace=False)])
        else:
            chosen = rng.choice(total, size=n_lab, replace=False)
    flags = np.zeros(total, bool)
    flags[chosen] = True
    return [flags[offsets[v]:offsets[v + 1]].copy() for v in range(len(counts))]
