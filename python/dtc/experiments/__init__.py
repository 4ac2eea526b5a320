"""Declarative experiments: grids of two-stage runs over seeds, run resumably, summarised in one table.

- :func:`load_experiment` reads an experiment file (see :mod:`dtc.experiments.spec` for the format).
- :func:`run_experiment` trains/evaluates what is missing and writes ``results.{csv,md}``.
- :func:`write_results`, :func:`load_results`: the table; :mod:`dtc.experiments.plots`: figures.
- :func:`training_signal_maps`: what the stage-2 objective sees on one window (notebooks).

Importing this package does not load the compiled core.
"""
from __future__ import annotations

from dtc.experiments.inspect import training_signal_maps
from dtc.experiments.results import METRICS, aggregate, collect_runs, load_results, write_results
from dtc.experiments.runner import EVALUATION_FILE, execute_run, run_experiment, run_state, select_runs
from dtc.experiments.spec import Experiment, ExperimentError, RunSpec, load_experiment

__all__ = [
    "Experiment", "ExperimentError", "RunSpec", "load_experiment", "run_experiment", "execute_run", "run_state",
    "select_runs", "EVALUATION_FILE", "METRICS", "aggregate", "collect_runs", "write_results", "load_results",
    "training_signal_maps",
]
