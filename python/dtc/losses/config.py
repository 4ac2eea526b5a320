"""Configuration of the stage-2 objective (docs/method.md §2): two presets and every switch."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Union

__all__ = ["DTCLossConfig", "PRESETS", "TERMS", "ABLATIONS", "CONFIDENCE_INPUTS"]

TERMS = ("seg", "kd", "con", "proto")
# What the confidence residual is taken on: the intensities (the method), or their band-pass structure, which
# is blind to brightness changes that leave the anatomy in place (losses.functional.structure_images).
CONFIDENCE_INPUTS = ("intensity", "structure")

# Per-preset defaults that differ; everything else has the same default in both (docs/method.md §2, §9).
PRESETS: dict[str, dict] = {
    # The authors' released code: signed channel sum of the residual on ImageNet-normalised images with
    # alpha 1, the per-sample 70th-percentile foreground threshold, flow resized without rescaling.
    # The student makes its own soft pseudo-labels and the consistency target is the binarised warp.
    "reference": dict(alpha=1.0, confidence="abs_sum", normalise_images=True, fg_threshold="percentile70",
                      rescale_flow=False, pseudo_source="student", warped_target="hard"),
    # The fixes of docs/method.md §9: mean absolute residual on intensities in [0, 1] with alpha 13.3 (a
    # 13-grey-level residual halves the weight), foreground at 0.5, flow rescaled with the resize. From the
    # event study (docs/method.md §10): the frozen teacher makes the pseudo-labels (the student's own drift
    # outwards: validation Dice 0.89 -> 0.67 in 6 epochs) and the warped target stays soft.
    "dtc": dict(alpha=13.3, confidence="mean_abs", normalise_images=False, fg_threshold=0.5, rescale_flow=True,
                pseudo_source="teacher", warped_target="soft"),
}

# Named ablations (the paper's table and the single-scale prototype variant): terms that stay on.
ABLATIONS: dict[str, dict] = {
    "seg": dict(terms=("seg",)),
    "seg+kd": dict(terms=("seg", "kd")),
    "seg+kd+proto": dict(terms=("seg", "kd", "proto")),
    "seg+kd+con": dict(terms=("seg", "kd", "con")),
    "full": dict(terms=TERMS),
    "single-scale-proto": dict(terms=TERMS, prototype_scales="local"),
}


@dataclass
class DTCLossConfig:
    """Every switch of the stage-2 objective, with docs/method.md's defaults for ``preset``.

    Build it with :meth:`from_preset` so preset-dependent defaults are filled in; unknown keys raise.

    Convention:
        ``weights`` are ``(lambda_seg, lambda_KD, lambda_con, lambda_proto)``. A term is computed only if it
        is listed in ``terms`` and its weight is non-zero; a skipped term is reported as 0.
        ``confidence``: ``"abs_sum"`` is ``|sum_c dI_c|`` (reference), ``"mean_abs"`` is ``mean_c |dI_c|``
        (dtc). With ``normalise_images`` the residual is taken on ``(I - image_mean) / image_std`` (the
        network's input normalisation of the reference code); the images themselves are always passed in
        ``[0, 1]``. ``fg_threshold`` is a float in (0, 1) or ``"percentile70"`` (``mean_b`` of each sample's
        ``sort(P_t[b].flatten())[int(0.7 N)]``, the reference's indexed order statistic). The local
        prototypes' mask reads the warped previous prediction exactly as the consistency term does
        (binarised at 0.5 with ``warped_target="hard"``). ``prototype_scales``: ``"both"`` (cross-weighted ``w_bg*L_loc +
        w_fg*L_glob``), ``"local"`` or ``"global"`` (that term alone, weight 1).
        ``pseudo_binarise`` thresholds the flip pseudo-labels at 0.5 (hard labels cannot creep outwards
        through their soft boundary, the drift of self-training on soft labels). ``confidence_input``:
        ``"intensity"`` (the method) or ``"structure"`` (the residual of band-passed images, see
        :func:`dtc.losses.functional.structure_images`).
    """

    preset: str = "dtc"
    weights: tuple = (3.0, 1.0, 2.0, 0.1)
    terms: tuple = TERMS
    tau: float = 4.0
    alpha: float = 13.3
    confidence: str = "mean_abs"
    normalise_images: bool = False
    image_mean: tuple = (0.485, 0.456, 0.406)
    image_std: tuple = (0.229, 0.224, 0.225)
    warped_target: str = "hard"
    con_normalise: bool = False
    fg_threshold: Union[str, float] = 0.5
    occlusion_check: bool = False
    pseudo_label: str = "flip"
    pseudo_source: str = "student"
    pseudo_binarise: bool = False
    confidence_input: str = "intensity"
    rescale_flow: bool = True
    prototype_scales: str = "both"
    dice_smooth: float = 1e-5
    implementation: str = "fused"
    check_inputs: bool = True

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_preset(cls, name: str = "dtc", **overrides) -> "DTCLossConfig":
        """The preset's defaults (``"reference"`` or ``"dtc"``) with ``overrides`` applied.

        ``ablation=NAME`` (a key of :data:`ABLATIONS`) sets ``terms``/``prototype_scales``."""
        if name not in PRESETS:
            raise ValueError(f"DTCLossConfig: preset must be one of {sorted(PRESETS)}, got {name!r}")
        known = {f.name for f in dataclasses.fields(cls)} - {"preset"}
        ablation = overrides.pop("ablation", None)
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"DTCLossConfig: unknown keys {unknown}; known keys are {sorted(known)} and 'ablation'")
        values = dict(PRESETS[name])
        if ablation is not None:
            if ablation not in ABLATIONS:
                raise ValueError(f"DTCLossConfig: ablation must be one of {sorted(ABLATIONS)}, got {ablation!r}")
            values.update(ABLATIONS[ablation])
        values.update(overrides)
        return cls(preset=name, **values)

    def validate(self) -> None:
        def fail(msg):
            raise ValueError(f"DTCLossConfig: {msg}")

        if self.preset not in PRESETS:
            fail(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        self.weights = tuple(float(w) for w in self.weights)
        if len(self.weights) != 4 or any(w < 0 for w in self.weights):
            fail(f"weights must be 4 non-negative numbers (seg, kd, con, proto), got {self.weights}")
        self.terms = tuple(self.terms)
        bad = [t for t in self.terms if t not in TERMS]
        if bad:
            fail(f"terms must be drawn from {TERMS}, got unknown {bad}")
        if not self.tau > 0:
            fail(f"tau must be > 0, got {self.tau}")
        if not self.alpha >= 0:
            fail(f"alpha must be >= 0, got {self.alpha}")
        if self.confidence not in ("abs_sum", "mean_abs"):
            fail(f"confidence must be 'abs_sum' or 'mean_abs', got {self.confidence!r}")
        if self.warped_target not in ("hard", "soft"):
            fail(f"warped_target must be 'hard' or 'soft', got {self.warped_target!r}")
        if isinstance(self.fg_threshold, str):
            if self.fg_threshold != "percentile70":
                fail(f"fg_threshold must be 'percentile70' or a number in (0, 1), got {self.fg_threshold!r}")
        elif not 0 < float(self.fg_threshold) < 1:
            fail(f"fg_threshold must be 'percentile70' or a number in (0, 1), got {self.fg_threshold!r}")
        if self.pseudo_label not in ("flip", "mean"):
            fail(f"pseudo_label must be 'flip' or 'mean', got {self.pseudo_label!r}")
        if self.pseudo_source not in ("student", "teacher"):
            fail(f"pseudo_source must be 'student' or 'teacher', got {self.pseudo_source!r}")
        if self.confidence_input not in CONFIDENCE_INPUTS:
            fail(f"confidence_input must be one of {CONFIDENCE_INPUTS}, got {self.confidence_input!r}")
        if not isinstance(self.pseudo_binarise, bool):
            fail(f"pseudo_binarise must be true or false, got {self.pseudo_binarise!r}")
        if self.prototype_scales not in ("both", "local", "global"):
            fail(f"prototype_scales must be 'both', 'local' or 'global', got {self.prototype_scales!r}")
        if self.implementation not in ("fused", "reference"):
            fail(f"implementation must be 'fused' or 'reference', got {self.implementation!r}")
        if len(self.image_mean) != len(self.image_std) or any(s <= 0 for s in self.image_std):
            fail(f"image_mean and image_std must have one entry per channel and std > 0, got "
                 f"{self.image_mean} and {self.image_std}")
        if not self.dice_smooth > 0:
            fail(f"dice_smooth must be > 0, got {self.dice_smooth}")

    def weight(self, term: str) -> float:
        """The weight of ``term``, 0 when it is switched off."""
        return self.weights[TERMS.index(term)] if term in self.terms else 0.0

    def channel_scale(self, channels: int):
        """Per-channel factor of the image residual: ``1/std`` when the images are normalised (the mean
        cancels in a difference of two frames), else ``None``."""
        if not self.normalise_images:
            return None
        if channels != len(self.image_std):
            raise ValueError(f"DTCLossConfig: images have {channels} channels but image_std has "
                             f"{len(self.image_std)} entries")
        return [1.0 / s for s in self.image_std]
