"""XDim-KD (docs/xdim.md): sparse slice labels, pseudo-label smoothing for 3-D volumes."""
from __future__ import annotations

from dtc.volume.labels import select_labelled_slices
from dtc.volume.pseudo import smooth3d, smoothing_energy

__all__ = ["select_labelled_slices", "smooth3d", "smoothing_energy"]
