"""Training: typed configs, the two-stage trainer, checkpoints, distributed plumbing."""
from dtc.engine.checkpoint import load_run_checkpoint, model_from_checkpoint
from dtc.engine.config import ConfigError, TrainConfig, apply_overrides, load_config
from dtc.engine.trainer import Trainer, train

__all__ = ["ConfigError", "TrainConfig", "Trainer", "apply_overrides", "load_config", "load_run_checkpoint",
           "model_from_checkpoint", "train"]
