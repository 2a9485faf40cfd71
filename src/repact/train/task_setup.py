"""Data and model of a detection or segmentation run, built through :mod:`repact.tasks` from a TrainConfig."""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch
from torch import nn

from ..data.common import DataError
from ..models import get_model_spec
from .config import ConfigError, TrainConfig

__all__ = ["build_task_data", "build_task_model", "parse_classes"]


def parse_classes(classes: Any) -> Any:
    """``"voc"``, ``"auto"`` or a comma-separated list of class names (a list as it is)."""
    if isinstance(classes, (list, tuple)):
        return [str(c) for c in classes]
    text = str(classes).strip()
    if text.lower() in ("voc", "auto"):
        return text.lower()
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise DataError(f"--classes {classes!r} names no class; accepted: voc, auto, or names separated by commas")
    return names


def build_task_data(cfg: TrainConfig):
    """(train set, val set, DataInfo) of ``cfg.dataset`` under ``cfg.data_dir`` (a VOC-format root)."""
    from ..tasks import get_task

    task = get_task(cfg.task)
    if cfg.data_dir is None:
        raise DataError(f"task {cfg.task} reads a VOC-format folder: give --data-dir (the folder holding "
                        "Annotations/ or SegmentationClass/, JPEGImages/ and ImageSets/, or a VOCdevkit)")
    try:
        return task.build_data(cfg.dataset, cfg.data_dir, img_size=cfg.img_size, augment=cfg.augment,
                               classes=parse_classes(cfg.classes), year=cfg.year, **cfg.data_kwargs)
    except TypeError as exc:  # a --data-kw the loader does not take
        raise ConfigError(f"--data-kw {', '.join(f'{k}={v!r}' for k, v in cfg.data_kwargs.items())}: {exc}") from None


def build_task_model(cfg: TrainConfig, info, act: Any, saved: Mapping[str, Any] | None = None,
                     device: torch.device | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """(model, model_config) for a detection or segmentation run.

    A new run passes ``--model-kw`` options, ``--weights``, ``--swap-heads`` and the input size
    (SSDlite's ``img_size``) to the builder; a resumed one rebuilds the architecture from the
    checkpoint's ``model_config`` (``saved``), without reading the weights file again. A model too
    large for ``device`` (counted on the meta device) is refused before it is built.
    """
    from ..tasks import get_task
    from .setup import check_model_fits

    task = get_task(cfg.task)
    if saved is not None:
        kwargs = dict(saved.get("kwargs", {}))
    else:
        kwargs = dict(cfg.model_kwargs)
        params = set(inspect.signature(get_model_spec(cfg.model).builder).parameters)
        if "img_size" in params and "img_size" not in kwargs:
            kwargs["img_size"] = info.img_size
        if cfg.weights is not None:
            kwargs["weights"] = cfg.weights
        if cfg.swap_heads:
            kwargs["swap_heads"] = True
    try:
        task.check_model(cfg.model)
        check_model_fits(cfg.model, act, info.num_classes, kwargs, device or torch.device("cpu"))
        model, config = task.build_model(cfg.model, act=act, info=info, **kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"model {cfg.model!r} cannot be built with {kwargs}: {exc}") from None
    return model, config
