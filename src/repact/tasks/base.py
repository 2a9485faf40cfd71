"""The task interface the training engine, ``repact eval`` and ``repact deploy`` call.

A :class:`Task` knows its data, its models, its loss and its metrics; the engine keeps everything
else (run folders, checkpoints, resume, optimizers, schedules, NaN guard, DDP, logging). The loop
it is written for::

    task = get_task("detection")
    train_set, val_set, info = task.build_data("voc", data_dir, img_size=320, augment="light")
    model, model_config = task.build_model("ssdlite320_mobilenet_v3_large", act="repact", info=info)
    loader = DataLoader(train_set, batch_size=8, sampler=..., collate_fn=task.collate_fn, drop_last=True)
    for batch in loader:
        loss, logs = task.loss(model, batch, device)      # model in train mode; loss is a 0-d tensor
        loss.backward(); opt.step(); opt.zero_grad()
    summary = task.evaluate(model, val_loader, device)    # eval mode inside; {primary_metric: ..., ...}

Contract:

* ``build_data(dataset, data_dir, *, img_size, augment, **options) -> (train, val, DataInfo)``;
  ``info.num_classes`` is what the model is built with (detection: object classes + torchvision's
  background; segmentation: every mask value but 255), ``info.classes`` names them in index order.
  Bad names or folders raise :class:`repact.data.DataError` (one line, naming the value).
* ``build_model(name, *, act, info, **kwargs) -> (model, model_config)``; ``model_config``
  (``name``, ``act``, ``num_classes``, ``kwargs``, ``input_shape``, ``task``) rebuilds the
  architecture with :func:`repact.checkpoint.build_model` without the weights file (its ``kwargs``
  are :func:`~repact.models.task_backbone.rebuild_kwargs`). Models of another task's family are refused.
* ``collate_fn``: the loader's collate function (``None``: PyTorch's default).
* ``loss(model, batch, device) -> (loss, logs)``: the training loss of one batch (moved to
  ``device`` here) with the model in train mode; ``logs`` holds floats (the loss parts).
* ``evaluate(model, loader, device, *, limit=None) -> dict``: the summary over the loader, model in
  eval mode (restored afterwards). Percentages for accuracies, mAP and IoU. Under DDP with a
  sharded loader, the torchmetrics states are gathered across ranks by torchmetrics itself.
* ``primary_metric``: the summary key the engine keeps the best checkpoint by (higher is better).
* ``example_input(info, batch)``: an input for one eval forward (priming, export, cost).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, ClassVar, Iterable

import torch
from torch import nn

from .._modes import eval_mode
from ..data.common import DataError, DataInfo
from ..models import create_model, get_model_spec
from ..models.task_backbone import rebuild_kwargs

__all__ = ["Task", "TASKS", "eval_batches", "get_task", "list_tasks", "register_task", "to_device"]

TASKS: dict[str, type["Task"]] = {}


def register_task(cls: type["Task"]) -> type["Task"]:
    TASKS[cls.name] = cls
    return cls


def list_tasks() -> list[str]:
    return list(TASKS)


def get_task(name: str) -> "Task":
    """A registered task by name: ``detection`` or ``segmentation`` (classification is the engine's own)."""
    key = str(name).strip().lower()
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; accepted: {', '.join(TASKS)}")
    return TASKS[key]()


def to_device(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor (in lists, tuples and dicts too) moved to ``device``."""
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


@contextmanager
def eval_batches(model: nn.Module, loader: Iterable, device: torch.device, limit: int | None, amp: bool):
    """``with eval_batches(...) as (batches, autocast):`` the loader's first ``limit`` batches with the
    model in eval mode (restored on exit) and the autocast context to run the forward in."""
    ctx = torch.autocast("cuda", dtype=torch.float16) if amp and device.type == "cuda" else nullcontext()
    batches = (b for i, b in enumerate(loader) if limit is None or i < limit)
    with eval_mode(model):
        yield batches, ctx


class Task(ABC):
    """One task: its data, models, loss and metrics (see the module docstring)."""

    name: ClassVar[str]
    datasets: ClassVar[tuple[str, ...]]
    default_dataset: ClassVar[str]
    default_model: ClassVar[str]
    model_families: ClassVar[tuple[str, ...]]
    primary_metric: ClassVar[str]
    summary_keys: ClassVar[tuple[str, ...]]
    augments: ClassVar[tuple[str, ...]]
    collate_fn: ClassVar[Callable | None] = None

    @abstractmethod
    def build_data(self, dataset: str, data_dir: Any, *, img_size: int | None = None, augment: str = "auto",
                   **options: Any) -> tuple[Any, Any, DataInfo]:
        """(train set, val set, DataInfo)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any, device: torch.device | str) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss of one batch and its logged parts."""

    @abstractmethod
    def evaluate(self, model: nn.Module, loader: Iterable, device: torch.device | str = "cpu", *,
                 limit: int | None = None) -> dict[str, Any]:
        """Summary metrics over ``loader``."""

    def check_dataset(self, dataset: str) -> str:
        key = str(dataset).strip().lower().replace("-", "_")
        if key not in self.datasets:
            raise DataError(f"task {self.name} takes datasets {', '.join(self.datasets)}, got {dataset!r}")
        return key

    def check_model(self, name: str) -> None:
        family = get_model_spec(name).family
        if family not in self.model_families:
            raise ValueError(f"model {name!r} is a {family} model; task {self.name} takes models of family "
                             f"{', '.join(self.model_families)}")

    def build_model(self, name: str | None = None, *, act: Any = None, info: DataInfo,
                    **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
        """(model, model_config) with ``info.num_classes`` outputs."""
        name = name or self.default_model
        self.check_model(name)
        model = create_model(name, act=act, num_classes=info.num_classes, **kwargs)
        config = {"name": name, "act": act, "num_classes": info.num_classes, "kwargs": rebuild_kwargs(model, kwargs),
                  "input_shape": [info.in_channels, info.img_size, info.img_size], "task": self.name}
        return model, config

    def example_input(self, info: DataInfo, batch: int = 1) -> Any:
        return torch.zeros(batch, info.in_channels, info.img_size, info.img_size)
