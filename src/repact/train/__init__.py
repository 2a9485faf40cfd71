"""Training and evaluation: ``train(TrainConfig(...))``, ``evaluate``, and experiment grids (``repact.train.compare``).

    from repact.train import TrainConfig, train
    result = train(TrainConfig(model="small_cnn", act="repact", dataset="digits", epochs=5, out="runs/demo"))
    print(result.summary["best_acc1"])
"""

from __future__ import annotations

from .config import RECIPES, ConfigError, TrainConfig, load_config_file, resolve_config, validate_config
from .engine import RunResult, TrainingDiverged, config_for_resume, train
from .evaluate import evaluate
from .finetune import train_only
from .optim import activation_modules, param_groups

__all__ = ["RECIPES", "ConfigError", "RunResult", "TrainConfig", "TrainingDiverged", "activation_modules",
           "config_for_resume", "evaluate", "load_config_file", "param_groups", "resolve_config", "train",
           "train_only", "validate_config"]
