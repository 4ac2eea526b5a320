"""XDim-KD (docs/xdim.md): sparse slice labels, pseudo-label smoothing, correlation distillation."""
from __future__ import annotations

from dtc.volume.corr import correlation_distillation, sample_points
from dtc.volume.labels import select_labelled_slices
from dtc.volume.pseudo import smooth3d, smoothing_energy

__all__ = ["correlation_distillation", "sample_points", "select_labelled_slices", "smooth3d", "smoothing_energy"]
