"""What the training loop computes for a task: the loss of one batch and its logged parts, the
validation summary, the per-epoch record and the entries of ``summary.json``.

Classification is the engine's own (cross-entropy, top-1/top-5); detection and segmentation go
through :mod:`repact.tasks` (their loss, ``evaluate`` and primary metric). Everything else (run
folders, checkpoints, resume, NaN guard, AMP, DDP, logging) is the engine's, the same for all.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .config import CLASSIFICATION, TrainConfig
from .dist import DistEnv
from .evaluate import evaluate, topk_correct

__all__ = ["METRIC_LABELS", "Objective", "ClassificationObjective", "TaskObjective", "objective_for", "primary_metric"]

#: how the summary keys are named for people
METRIC_LABELS = {"acc1": "top-1", "acc5": "top-5", "map50": "mAP@0.5", "map": "mAP@0.5:0.95", "map75": "mAP@0.75",
                 "mar100": "mAR@100", "miou": "mIoU", "pixel_acc": "pixel acc"}


def primary_metric(task: str) -> str:
    """The summary key the best checkpoint is chosen by: ``acc1``, ``map50`` or ``miou``."""
    if task == CLASSIFICATION:
        return "acc1"
    from ..tasks import get_task

    return get_task(task).primary_metric


class Objective:
    """The task-dependent part of a run (see the module docstring)."""

    name: str
    primary: str
    metrics: tuple[str, ...]  # summary keys reported per epoch (percent), primary first
    collate_fn: Callable | None = None

    def train_step(self, net: nn.Module, batch: Any, device: torch.device
                   ) -> tuple[torch.Tensor, dict[str, Any], int]:
        """(loss, {part: batch mean (float or 0-d tensor)}, batch size), run inside the autocast context."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader, device: torch.device, env: DistEnv, amp: bool,
                 limit: int | None) -> dict[str, Any]:
        raise NotImplementedError

    def val_record(self, val: dict[str, Any]) -> dict[str, Any]:
        """The ``val_*`` entries of the epoch's record."""
        raise NotImplementedError

    def summary(self, best: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
        """The metric entries of ``summary.json`` from the best and the last epoch's records."""
        raise NotImplementedError

    def describe(self, tr: dict[str, Any], val: dict[str, Any]) -> str:
        raise NotImplementedError

    def score(self, val: dict[str, Any]) -> float:
        return float(val[self.primary])


class ClassificationObjective(Objective):
    """Cross-entropy (with label smoothing) and top-1 / top-5."""

    name = CLASSIFICATION
    primary = "acc1"
    metrics = ("acc1", "acc5")

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def train_step(self, net, batch, device):
        x, y = batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = net(x)
        loss = self.criterion(logits.float(), y)
        n = int(y.shape[0])
        with torch.no_grad():
            acc1 = topk_correct(logits.detach(), y, (1,))[0].double() * (100.0 / n)
        return loss, {"acc1": acc1}, n

    def evaluate(self, model, loader, device, env, amp, limit):
        return evaluate(model, loader, device, env=env, amp=amp, limit=limit)

    def val_record(self, val):
        return {"val_loss": val["loss"], "val_acc1": val["acc1"], "val_acc5": val["acc5"], "val_images": val["n"]}

    def summary(self, best, last):
        return {"best_acc1": best["val_acc1"], "best_acc5": best["val_acc5"], "last_epoch": last["epoch"],
                "last_acc1": last["val_acc1"], "last_acc5": last["val_acc5"], "last_val_loss": last["val_loss"],
                "last_train_loss": last["train_loss"]}

    def describe(self, tr, val):
        return f"train {tr['train_acc1']:.2f}%  val {val['acc1']:.2f}% (top-5 {val['acc5']:.2f}%)"


class TaskObjective(Objective):
    """A :class:`repact.tasks.Task`'s loss (its parts logged as ``train_<part>``) and metrics.

    Summary: the metrics of the best epoch under their own names (``map50``, ``map``, ... or
    ``miou``, ``pixel_acc``), ``best_<primary>``, the last epoch's as ``last_<key>``, and the best
    epoch's per-class figures (``map_per_class`` or ``iou_per_class``).
    """

    def __init__(self, task) -> None:
        self.task = task
        self.name = task.name
        self.primary = task.primary_metric
        keys = [k for k in task.summary_keys if k != "loss"]
        self.metrics = (self.primary, *[k for k in keys if k != self.primary])
        self.collate_fn = task.collate_fn
        self.per_class = "map_per_class" if task.name == "detection" else "iou_per_class"

    def train_step(self, net, batch, device):
        loss, logs = self.task.loss(net, batch, device)
        return loss, logs, len(batch[0])

    def evaluate(self, model, loader, device, env, amp, limit):
        return self.task.evaluate(model, loader, device, limit=limit, amp=amp)

    def val_record(self, val):
        rec = {f"val_{k}": val[k] for k in self.metrics if k in val}
        if "loss" in val:
            rec["val_loss"] = val["loss"]
        rec["val_images"] = val["n"]
        rec[f"val_{self.per_class}"] = val.get(self.per_class, {})
        return rec

    def summary(self, best, last):
        out = {k: best.get(f"val_{k}") for k in self.metrics}
        out[f"best_{self.primary}"] = best.get(f"val_{self.primary}")
        out[self.per_class] = best.get(f"val_{self.per_class}", {})
        out["last_epoch"] = last["epoch"]
        out.update({f"last_{k}": last.get(f"val_{k}") for k in self.metrics})
        if "val_loss" in last:
            out["last_val_loss"] = last["val_loss"]
        out["last_train_loss"] = last["train_loss"]
        return out

    def describe(self, tr, val):
        main, *rest = self.metrics
        more = f" ({METRIC_LABELS.get(rest[0], rest[0])} {val[rest[0]]:.2f}%)" if rest and rest[0] in val else ""
        return f"val {METRIC_LABELS.get(main, main)} {val[main]:.2f}%{more}"


def objective_for(cfg: TrainConfig) -> Objective:
    if cfg.task == CLASSIFICATION:
        return ClassificationObjective(cfg.label_smoothing)
    from ..tasks import get_task

    return TaskObjective(get_task(cfg.task))
