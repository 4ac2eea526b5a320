"""Training a run to completion, idempotently: what the demo and the experiment runner share."""
from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["stage_finished", "train_stage"]

_log = logging.getLogger(__name__)


def stage_finished(last_path: str | Path, epochs: int) -> bool:
    """True when the run whose ``last.pt`` is ``last_path`` needs no more training: it recorded
    ``epochs`` epochs, or it stopped early (its patience was used up) before that."""
    from dtc.engine.checkpoint import load_run_checkpoint

    last_path = Path(last_path)
    if not last_path.exists():
        return False
    ckpt = load_run_checkpoint(last_path)
    if ckpt["epoch"] >= epochs:
        return True
    patience = (ckpt.get("config") or {}).get("optim", {}).get("early_stop_patience")
    return patience is not None and ckpt.get("bad_epochs", 0) >= patience


def train_stage(cfg, *, label: str = "[dtc]", on_step=None) -> str:
    """Train the run ``cfg`` describes unless its ``run.out_dir`` already holds a finished one; an
    interrupted run continues from its ``last.pt``. Returns ``"skipped"``, ``"resumed"`` or ``"trained"``."""
    from dtc.engine import Trainer

    last = Path(cfg.run.out_dir) / "last.pt"
    if stage_finished(last, cfg.optim.epochs):
        _log.info("%s: already trained (%s)", label, last)
        return "skipped"
    resume = last.exists()
    _log.info("%s: %s ...", label, "resuming" if resume else "training")
    Trainer(cfg, resume=resume, on_step=on_step).fit()
    return "resumed" if resume else "trained"
