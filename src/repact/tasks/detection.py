"""Object detection on VOC-format data (``dataset="voc"``) with torchvision detectors; see :mod:`repact.tasks.base`."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..data.common import DataInfo
from ..data.voc import VOCDetection
from ..data.voc_transforms import DETECTION_AUGMENTS, detection_collate, detection_transforms
from .base import Task, eval_batches, register_task, to_device
from .metrics import DetectionMeter

__all__ = ["DetectionTask"]


@register_task
class DetectionTask(Task):
    """Detection: batches ``(images, targets)`` (lists); loss = the sum of torchvision's losses;
    summary ``map50``, ``map``, ``map75``, ``mar100``, ``map_per_class`` (percent), ``n``."""

    name = "detection"
    datasets = ("voc",)
    default_dataset = "voc"
    default_model = "ssdlite320_mobilenet_v3_large"
    model_families = ("detection",)
    primary_metric = "map50"
    summary_keys = ("map50", "map", "map75", "mar100")
    augments = ("auto", *DETECTION_AUGMENTS)
    collate_fn = staticmethod(detection_collate)

    def build_data(self, dataset: str, data_dir: Any, *, img_size: int | None = None, augment: str = "auto",
                   classes: Any = "voc", year: Any = None, train_split: str = "train", val_split: str = "val",
                   keep_difficult: bool = False, resize: str = "square", **options: Any):
        """VOC train/val splits. ``classes``: ``"voc"``, ``"auto"`` (the train split's names, then
        used for val) or a list. Difficult objects stay out of training unless ``keep_difficult``;
        val keeps them (flagged) for the mAP. ``resize``: ``"square"`` (SSD) or ``"short"`` (Faster R-CNN)."""
        if options:
            raise ValueError(f"detection data does not take {', '.join(sorted(options))}")
        key = self.check_dataset(dataset)
        size = int(img_size or 320)
        aug = "light" if augment in (None, "auto") else augment
        train = VOCDetection(data_dir, train_split, classes=classes, keep_difficult=keep_difficult, year=year,
                             transforms=detection_transforms(aug, size, train=True, resize=resize))
        val = VOCDetection(data_dir, val_split, classes=train.classes, keep_difficult=True, year=year,
                           transforms=detection_transforms("none", size, train=False, resize=resize))
        names = ["__background__", *train.classes]
        info = DataInfo(key, len(names), 3, size, names, (), (), len(train), len(val), str(train.root))
        return train, val, info

    def example_input(self, info: DataInfo, batch: int = 1) -> Any:
        return ([torch.zeros(3, info.img_size, info.img_size) for _ in range(batch)],)

    def loss(self, model: nn.Module, batch: Any, device: torch.device | str) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets = batch
        images = to_device(list(images), device)
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        parts = model(images, targets)
        loss = sum(parts.values())
        return loss, {k: float(v.detach()) for k, v in parts.items()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, device: torch.device | str = "cpu", *,
                 limit: int | None = None, classes: Sequence[str] | None = None, amp: bool = False) -> dict[str, Any]:
        device = torch.device(device)
        if classes is None:
            names = getattr(getattr(loader, "dataset", None), "classes", None)
            classes = ["__background__", *names] if names else []
        meter = DetectionMeter(classes, device=device)
        with eval_batches(model, loader, device, limit, amp) as (batches, autocast):
            for images, targets in batches:
                with autocast:
                    preds = model(to_device(list(images), device))
                meter.update(preds, targets)
        summary = meter.compute()
        if summary["n"] == 0:
            raise ValueError("evaluation saw no images (empty validation split or limit 0)")
        return summary
