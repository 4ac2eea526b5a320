"""Video-to-image distillation (docs/v2i.md): soft foreground masks, target-guided feature distillation,
the clip teacher and cross-view query distillation."""
from __future__ import annotations

from dtc.distill.msi import ClipTeacher, MSISeg, key_index
from dtc.distill.tfd import FeatureAdapters, tfd_loss
from dtc.distill.masks import (MODES, box_gaussian, component_boxes, components, edt_gaussian, hard_mask,
                               moment_gaussian, soft_foreground)

__all__ = ["ClipTeacher", "MSISeg", "key_index", "FeatureAdapters", "tfd_loss", "MODES", "box_gaussian", "component_boxes", "components", "edt_gaussian", "hard_mask", "moment_gaussian",
           "soft_foreground"]
