"""Data: the embedded TRUS video simulator, readers for real layouts, window datasets, augmentation.

Submodules are imported on first use so `import dtc.data` stays light.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "SynthConfig": "synth", "SynthVideo": "synth", "TRUSScene": "synth", "simulate_video": "synth",
    "VideoRecord": "index", "FrameRef": "index", "DataWarning": "index", "apply_gap_policy": "index",
    "read_csv_index": "index", "read_sunseg_tree": "index", "read_folder_index": "index",
    "read_video_file": "index", "read_ellipse_stills": "index", "read_nifti": "index",
    "read_dicom_cine": "index", "dicom_spacing": "index",
    "VideoSegmentationDataset": "dataset", "SyntheticTRUSDataset": "dataset", "patient_split": "dataset", "patient_folds": "dataset",
    "fill_ellipse_outline": "dataset", "compose_backward_flows": "dataset",
    "Synth3DConfig": "synth3d", "SynthVolume": "synth3d", "simulate_volume": "synth3d", "Volume": "synth3d",
    "read_volume": "synth3d", "read_sweep_video": "synth3d", "write_volume_nifti": "synth3d",
    "write_synth3d_dataset": "synth3d",
    "SequenceAugment": "augment", "write_synth_dataset": "write",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"dtc.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dtc.data' has no attribute {name!r}")
