"""Semantic segmentation on VOC-format data (``dataset="voc_seg"``) with torchvision segmenters; see :mod:`repact.tasks.base`."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.common import DataInfo
from ..data.voc import IGNORE_INDEX, VOCSegmentation
from ..data.voc_transforms import (IMAGENET_MEAN, IMAGENET_STD, SEGMENTATION_AUGMENTS, segmentation_collate,
                                   segmentation_transforms)
from .base import Task, eval_batches, register_task
from .metrics import SegmentationMeter, sum_across_ranks

__all__ = ["SegmentationTask", "segmentation_logits"]

AUX_WEIGHT = 0.5  # torchvision's segmentation reference


def segmentation_logits(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(main logits, auxiliary logits or None) of a torchvision segmenter's dict or a dense view's tensor(s)."""
    if isinstance(output, dict):
        return output["out"], output.get("aux")
    if isinstance(output, tuple):
        return output[0], (output[1] if len(output) > 1 else None)
    return output, None


@register_task
class SegmentationTask(Task):
    """Segmentation: batches ``(images, masks)``; loss = cross-entropy ignoring 255 (+ 0.5 x the
    auxiliary head's); summary ``miou``, ``pixel_acc``, ``iou_per_class`` (percent), ``loss``, ``n``."""

    name = "segmentation"
    datasets = ("voc_seg",)
    default_dataset = "voc_seg"
    default_model = "lraspp_mobilenet_v3_large"
    model_families = ("segmentation",)
    primary_metric = "miou"
    summary_keys = ("miou", "pixel_acc", "loss")
    augments = ("auto", *SEGMENTATION_AUGMENTS)
    collate_fn = staticmethod(segmentation_collate)

    def build_data(self, dataset: str, data_dir: Any, *, img_size: int | None = None, augment: str = "auto",
                   classes: Any = "voc", year: Any = None, train_split: str = "train", val_split: str = "val",
                   **options: Any):
        """VOC ``ImageSets/Segmentation`` train/val splits at ``img_size`` (default 320) square."""
        if options:
            raise ValueError(f"segmentation data does not take {', '.join(sorted(options))}")
        key = self.check_dataset(dataset)
        size = int(img_size or 320)
        aug = "light" if augment in (None, "auto") else augment
        train = VOCSegmentation(data_dir, train_split, classes=classes, year=year,
                                transforms=segmentation_transforms(aug, size, train=True))
        val = VOCSegmentation(data_dir, val_split, classes=train.classes, year=year,
                              transforms=segmentation_transforms("none", size, train=False))
        info = DataInfo(key, len(train.classes), 3, size, list(train.classes), IMAGENET_MEAN, IMAGENET_STD,
                        len(train), len(val), str(train.root))
        return train, val, info

    def loss(self, model: nn.Module, batch: Any, device: torch.device | str) -> tuple[torch.Tensor, dict[str, float]]:
        images, masks = batch
        out, aux = segmentation_logits(model(images.to(device, non_blocking=True)))
        masks = masks.to(device, non_blocking=True)
        main = F.cross_entropy(out, masks, ignore_index=IGNORE_INDEX)
        logs = {"loss_out": float(main.detach())}
        if aux is None:
            return main, logs
        aux_loss = F.cross_entropy(aux, masks, ignore_index=IGNORE_INDEX)
        logs["loss_aux"] = float(aux_loss.detach())
        return main + AUX_WEIGHT * aux_loss, logs

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, device: torch.device | str = "cpu", *,
                 limit: int | None = None, classes: Sequence[str] | None = None, amp: bool = False) -> dict[str, Any]:
        device = torch.device(device)
        if classes is None:
            classes = getattr(getattr(loader, "dataset", None), "classes", None)
        if not classes:
            raise ValueError("pass classes= (the loader's dataset has no class list)")
        meter = SegmentationMeter(classes, IGNORE_INDEX, device=device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        pixels = 0
        with eval_batches(model, loader, device, limit, amp) as (batches, autocast):
            for images, masks in batches:
                masks = masks.to(device)
                with autocast:
                    out, _ = segmentation_logits(model(images.to(device)))
                out = out.float()
                loss_sum += F.cross_entropy(out, masks, ignore_index=IGNORE_INDEX, reduction="sum").double()
                pixels += int((masks != IGNORE_INDEX).sum())
                meter.update(out, masks)
        summary = meter.compute()
        if summary["n"] == 0:
            raise ValueError("evaluation saw no images (empty validation split or limit 0)")
        loss_total, pixels = sum_across_ranks([float(loss_sum), pixels], device)
        summary["loss"] = loss_total / max(pixels, 1)
        return summary
