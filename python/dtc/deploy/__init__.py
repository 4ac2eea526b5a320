"""Deployment: a self-contained predictor (:class:`Segmenter`), exports (`dtc export`) and the C++ runtime's
archive. The preprocessing a network was trained with travels with it (:func:`preprocessing_of`)."""
from __future__ import annotations

from dtc.deploy.preprocess import Preprocessing, preprocessing_of
from dtc.deploy.segmenter import Prediction, Segmenter

__all__ = ["Preprocessing", "preprocessing_of", "Prediction", "Segmenter"]
