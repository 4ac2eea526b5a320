"""Running an experiment's plan: resumable, sequential or one process per run, then one results table.

A run is *finished* when its ``last.pt`` records the configured epochs (or an early stop) and its
``evaluation.json`` exists. Finished runs are skipped; an interrupted run continues from its
``last.pt``; a run trained but not yet evaluated is only evaluated. So re-running the same command
after a crash (or a kill) redoes exactly what is missing, and a second run of a finished experiment
trains nothing and leaves every file as it was.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, Optional

import yaml

from dtc.experiments.spec import TEACHER, Experiment, ExperimentError, RunSpec
from dtc.io import atomic_write_text

__all__ = ["EVALUATION_FILE", "run_experiment", "run_state", "select_runs", "execute_run"]

EVALUATION_FILE = "evaluation.json"
# Keys that may differ between the saved config of a run and the plan without changing what it trains.
# The folder's own paths are volatile too: a moved experiment folder stays resumable.
_VOLATILE = {("run", "progress"), ("run", "device"), ("run", "threads"), ("run", "log_every"), ("optim", "epochs"),
             ("data", "num_workers"), ("run", "out_dir"), ("teacher_checkpoint",)}

_log = logging.getLogger(__name__)


def run_state(run: RunSpec) -> str:
    """``"finished"``, ``"trained"`` (needs evaluation only), ``"partial"`` (has a ``last.pt``) or ``"new"``."""
    from dtc.engine.stages import stage_finished

    last = run.out_dir / "last.pt"
    if not last.exists():
        return "new"
    if not stage_finished(last, run.epochs):
        return "partial"
    return "finished" if (run.out_dir / EVALUATION_FILE).is_file() else "trained"


def select_runs(plan: list[RunSpec], only: Optional[list[str]]) -> list[RunSpec]:
    """The runs whose id matches one of the ``only`` glob patterns (all when None), plus the teachers
    they need; in plan order."""
    if not only:
        return list(plan)
    chosen = {r.run_id for r in plan if any(fnmatch(r.run_id, pat) for pat in only)}
    if not chosen:
        raise ExperimentError(f"--only {only} matches no run; run ids look like {plan[-1].run_id!r}")
    chosen |= {r.depends_on for r in plan if r.run_id in chosen and r.depends_on}
    return [r for r in plan if r.run_id in chosen]


_MISSING = object()


def _diff(saved, planned, prefix=()) -> list[str]:
    if isinstance(saved, dict) and isinstance(planned, dict):
        out = []
        for key in sorted(set(saved) | set(planned)):
            out += _diff(saved.get(key, _MISSING), planned.get(key, _MISSING), prefix + (key,))
        return out
    if saved is _MISSING and prefix[:-1] != ("loss",):
        # A config field added by a newer dtc after the run was trained: the run used its default.
        return []
    saved = None if saved is _MISSING else saved
    planned = None if planned is _MISSING else planned
    if prefix in _VOLATILE or saved == planned:
        return []
    # YAML round trips turn tuples into lists.
    if isinstance(saved, (list, tuple)) and isinstance(planned, (list, tuple)) and list(saved) == list(planned):
        return []
    return [f"{'.'.join(prefix)}: {saved!r} in the run, {planned!r} in the plan"]


def _check_unchanged(run: RunSpec, cfg) -> None:
    """Refuse to continue a run folder trained under another configuration (an edited experiment
    file would otherwise mix two settings in one table)."""
    saved_path = run.out_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    diffs = _diff(saved, cfg.to_dict())
    if diffs:
        raise ExperimentError(f"run {run.run_id} in {run.out_dir} was trained with another configuration ("
                              + "; ".join(diffs[:5]) + "); use another --out or delete that run folder")


@contextlib.contextmanager
def _keep_matplotlib_backend():
    """dtc.metrics' plot writer switches matplotlib to Agg; in a notebook that would silence every later
    figure, so the caller's backend is put back."""
    mpl = sys.modules.get("matplotlib")
    before = mpl.get_backend() if mpl is not None else None
    try:
        yield
    finally:
        if before is not None and mpl.get_backend() != before:
            mpl.use(before)


def execute_run(run: RunSpec, experiment: Experiment, *, on_step: Optional[Callable] = None) -> str:
    """Train (or resume) and evaluate one run in this process unless it is finished; returns what was done:
    ``"skipped"``, ``"evaluated"``, ``"trained"`` or ``"resumed"``."""
    from dtc.engine.data import build_dataset
    from dtc.engine.demo import score_checkpoint
    from dtc.engine.inference import resolve_device
    from dtc.engine.stages import train_stage

    cfg = run.train_config()
    _check_unchanged(run, cfg)  # again: a child process of a parallel run starts here
    if run.depends_on is not None and not Path(cfg.teacher_checkpoint).is_file():
        raise ExperimentError(f"run {run.run_id} needs its teacher {cfg.teacher_checkpoint}; run {run.depends_on} first")
    def hook(trainer, epoch, step):
        on_step(run.run_id, trainer, epoch, step)
    label = f"[{experiment.name}] {run.run_id}"
    done = train_stage(cfg, label=label, on_step=hook if on_step is not None else None)
    evaluation = run.out_dir / EVALUATION_FILE
    if done == "skipped" and evaluation.is_file():
        return "skipped"
    split = experiment.evaluation["split"]
    _log.info("%s: evaluating best.pt on the %s split ...", label, split)
    dataset = build_dataset(cfg, split, T=1, stride=1)
    device = resolve_device(cfg.run.device)
    with _keep_matplotlib_backend():
        scores, videos = score_checkpoint(run.out_dir / "best.pt", dataset, out_dir=run.out_dir / "eval",
                                          device=device, batch_size=experiment.evaluation["batch_size"])
    from dtc.engine.inference import video_scores

    # Per video, for the paired tests over videos (results.py): Dice at 0.5 and TC.
    per_video = {str(vid): {"Dice": s["dice"], "TC": s["tc"]}
                 for vid, s in ((vid, video_scores(v)) for vid, v in sorted(videos.items()))}
    from dtc.engine.checkpoint import load_run_checkpoint

    record = {"run_id": run.run_id, "seed": run.seed, "arm": run.arm, "label": run.label, "split": split,
              "checkpoint": "best.pt", "trained_epochs": load_run_checkpoint(run.out_dir / "last.pt")["epoch"],
              "device": str(device), "scores": scores, "per_video": per_video}
    atomic_write_text(evaluation, json.dumps(record, indent=2, default=float) + "\n")
    return "evaluated" if done == "skipped" else done


def _child_command(experiment: Experiment, out_root: Path, run_id: str) -> list[str]:
    cmd = [sys.executable, "-m", "dtc", "experiment", "run", str(experiment.path), "--out", str(out_root),
           "--only", run_id, "--jobs", "1", "--no-table"]
    if experiment.preset is not None:
        cmd += ["--preset", experiment.preset]
    for item in experiment.overrides:
        cmd += ["--set", item]
    return cmd


def _run_parallel(experiment: Experiment, todo: list[RunSpec], out_root: Path, jobs: int, progress: bool) -> dict:
    """One child process per run, at most ``jobs`` at a time; teachers first (students need them). With
    CUDA each worker slot owns one GPU (``CUDA_VISIBLE_DEVICES``); on the CPU the cores are divided."""
    import torch
    from dtc.progress import progress_bar

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    threads = max(1, (os.cpu_count() or 1) // jobs)
    status: dict[str, str] = {}
    failed: dict[str, Path] = {}
    bar = progress_bar(total=len(todo), desc=f"{experiment.name} runs", unit="run", enabled=progress)
    for phase in ([r for r in todo if r.arm == TEACHER], [r for r in todo if r.arm != TEACHER]):
        queue = list(phase)
        running: dict[int, tuple[subprocess.Popen, RunSpec, Path]] = {}
        while queue or running:
            while queue and len(running) < jobs:
                run = queue.pop(0)
                if run.depends_on in failed:
                    status[run.run_id] = "blocked"
                    bar.update(1)
                    continue
                slot = next(s for s in range(jobs) if s not in running)
                env = dict(os.environ)
                # The child runs under this process's folder lock (it trains only the run given to it).
                env[_LOCK_HELD_ENV] = str(experiment.folder(out_root).resolve())
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
                else:
                    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
                run.out_dir.mkdir(parents=True, exist_ok=True)
                log = run.out_dir / "experiment.log"
                # A log is a stream the child appends to (not a result file): readable while it runs.
                with open(log, "ab") as fh:
                    proc = subprocess.Popen(_child_command(experiment, out_root, run.run_id), env=env, stdout=fh,
                                            stderr=subprocess.STDOUT)
                running[slot] = (proc, run, log)
            time.sleep(0.2)
            for slot, (proc, run, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[slot]
                bar.update(1)
                if proc.returncode == 0:
                    status[run.run_id] = "done (child process)"
                else:
                    status[run.run_id] = f"failed (exit {proc.returncode})"
                    failed[run.run_id] = log
    bar.close()
    if failed:
        raise RuntimeError("experiment runs failed: " + ", ".join(f"{rid} (log: {log})" for rid, log in failed.items()))
    return status


_LOCK_HELD_ENV = "DTC_EXPERIMENT_FOLDER_LOCKED"


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """Hold an exclusive lock on ``folder`` (released by the OS if this process dies), or refuse at once."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    if os.environ.get(_LOCK_HELD_ENV) == str(folder.resolve()):
        yield
        return
    path = folder / ".lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # The lock file is never written, so a finished experiment's second invocation rewrites no file.
            raise ExperimentError(f"{folder} is in use by another dtc experiment run; wait for it to finish "
                                  "(dtc experiment status shows progress) or use another --out") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_experiment(experiment: Experiment, out_root: str | os.PathLike = "runs", *, jobs: int = 1,
                   only: Optional[list[str]] = None, dry_run: bool = False, write_table: bool = True,
                   on_step: Optional[Callable] = None, progress: bool = True, command: Optional[str] = None) -> dict:
    """Run every unfinished run of ``experiment`` (or those matching ``only``), then write the table.

    Args:
        jobs: 1 runs in this process, in plan order; ``N > 1`` runs up to N child processes at a time
            (teachers first), each logging to its run folder's ``experiment.log``.
        only: glob patterns over run ids (``seed0/*``, ``*/full``); matching students bring their teacher.
        dry_run: report each run's state and do nothing.
        on_step: ``on_step(run_id, trainer, epoch, step)`` after every training step (sequential only;
            tests use it to interrupt a run).
        command: the command line recorded in the Markdown table.

    Returns:
        ``{"folder", "runs": {run_id: action}, "table": paths or None, "minutes"}``; actions are
        ``skipped | evaluated | trained | resumed`` (``would ...`` with ``dry_run``).
    """
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    if on_step is not None and jobs > 1:
        raise ValueError("on_step hooks run in this process only; use jobs=1 with on_step")
    t0 = time.perf_counter()
    out_root = Path(out_root)
    experiment.validate(out_root)
    plan = experiment.plan(out_root)
    chosen = select_runs(plan, only)
    for run in chosen:  # finished runs too: their results would silently stand for another setting
        _check_unchanged(run, run.train_config())
    states = {r.run_id: run_state(r) for r in chosen}
    summary: dict = {"folder": str(experiment.folder(out_root)), "runs": {}, "table": None}
    if dry_run:
        verbs = {"finished": "skip (finished)", "trained": "would evaluate", "partial": "would resume",
                 "new": "would train"}
        summary["runs"] = {rid: verbs[s] for rid, s in states.items()}
        summary["minutes"] = 0.0
        return summary
    # Two processes on one folder would both train every unfinished run into the same files.
    with _folder_lock(experiment.folder(out_root)):
        todo = [r for r in chosen if states[r.run_id] != "finished"]
        summary["runs"] = {r.run_id: "skipped" for r in chosen if states[r.run_id] == "finished"}
        if todo:
            _log.info("[%s] %d of %d runs to do (%d finished) in %s", experiment.name, len(todo), len(chosen),
                      len(chosen) - len(todo), experiment.folder(out_root))
        else:
            _log.info("[%s] all %d runs finished in %s", experiment.name, len(chosen), experiment.folder(out_root))
        if jobs == 1 or len(todo) <= 1:
            from dtc.progress import progress_bar

            for run in progress_bar(todo, desc=f"{experiment.name} runs", unit="run",
                                    enabled=progress and len(todo) >= 2):
                summary["runs"][run.run_id] = execute_run(run, experiment, on_step=on_step)
        else:
            summary["runs"].update(_run_parallel(experiment, todo, out_root, jobs, progress))
        if write_table:
            from dtc.experiments.results import write_results

            summary["table"] = write_results(experiment, out_root, command=command)
            if experiment.evaluation.get("ensemble") and summary["table"] is not None:
                from dtc.experiments.ensemble import evaluate_ensemble

                device = experiment.plan(out_root)[0].train_config().run.device
                ensemble = evaluate_ensemble(experiment, out_root, device=device)
                if ensemble is not None:
                    summary["table"].update(ensemble)
    summary["minutes"] = (time.perf_counter() - t0) / 60
    return summary
