"""Detection and segmentation metrics (torchmetrics), reported in percent.

**Detection** (:class:`DetectionMeter`): torchmetrics' ``MeanAveragePrecision`` with its COCO
backend (pycocotools; ``pip install repact[metrics]``): ``map50`` (AP at IoU 0.5), ``map`` (AP
averaged over IoU 0.5:0.95), ``map75``, ``mar100`` and per-class AP (``map_per_class``, 0.5:0.95).
These are COCO-style figures (101-point interpolated precision, each image's 100 highest-scoring
detections), not the VOC devkit's 11-point
(VOC2007) or all-point (VOC2010+) AP@0.5; they differ by a fraction of a point.
VOC's ``difficult`` objects are passed as COCO's ``iscrowd``: they count neither as positives nor,
when a detection matches them, as false positives, as in VOC. The one difference: COCO matches a
detection to a crowd region by intersection over the detection's area rather than by IoU (and only
after the non-crowd objects), so a detection lying inside a difficult box is ignored even when its
IoU with it is below the threshold.

Under DDP (an initialized process group, each rank updating with its shard) ``compute()`` is
collective: torchmetrics gathers the states, and the image counts are summed over the ranks.

**Segmentation** (:class:`SegmentationMeter`): a confusion matrix over the pixels whose label is not
255 (torchmetrics ``MulticlassConfusionMatrix``): ``miou`` (mean over the classes that occur in
the labels or the predictions of the IoU TP / (TP + FP + FN); classes absent from both are left
out, reported as None), ``iou_per_class`` and ``pixel_acc`` (global pixel accuracy).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

__all__ = ["DetectionMeter", "SegmentationMeter", "segmentation_scores", "sum_across_ranks"]


def sum_across_ranks(values: Sequence[float], device: torch.device | str) -> list[float]:
    """``values`` summed over the processes of an initialized process group (as they are otherwise).
    A collective call: under DDP every rank must make it, as torchmetrics' ``compute`` is."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _torchmetrics(what: str):
    try:
        import torchmetrics  # noqa: F401
    except ImportError:
        raise ImportError(f"{what} needs torchmetrics: pip install 'repact[metrics]'") from None


class DetectionMeter:
    """Accumulates torchvision detections and VOC targets; ``compute()`` gives the summary."""

    def __init__(self, classes: Sequence[str], device: torch.device | str = "cpu") -> None:
        _torchmetrics("detection mAP")
        from torchmetrics.detection import MeanAveragePrecision

        try:
            self.metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True,
                                               backend="pycocotools")
        except ModuleNotFoundError as exc:
            raise ImportError(f"detection mAP needs pycocotools ({exc}): pip install 'repact[metrics]'") from None
        self.metric.warn_on_many_detections = False  # COCO scores each image's 100 best detections, as documented
        self.device = torch.device(device)  # the states' device: DDP gathers them there (CUDA for NCCL)
        self.metric.to(self.device)
        self.classes = list(classes)
        self.images = 0

    def update(self, predictions: Sequence[Mapping[str, torch.Tensor]], targets: Sequence[Mapping[str, Any]]) -> None:
        dev = self.device
        preds = [{"boxes": p["boxes"].detach().float().to(dev), "scores": p["scores"].detach().float().to(dev),
                  "labels": p["labels"].detach().to(dev)} for p in predictions]
        gts = []
        for t in targets:
            labels = t["labels"].to(dev)
            difficult = t.get("difficult")
            crowd = difficult.to(dev, torch.int64) if difficult is not None else torch.zeros_like(labels)
            gts.append({"boxes": t["boxes"].float().to(dev), "labels": labels, "iscrowd": crowd})
        self.metric.update(preds, gts)
        self.images += len(preds)

    def compute(self) -> dict[str, Any]:
        r = _compute(self.metric)
        per_class: dict[str, float | None] = {}
        cls_ids = r.get("classes", torch.tensor([]))
        values = r.get("map_per_class", torch.tensor([]))
        if cls_ids.numel() and values.numel() == cls_ids.numel():
            for c, v in zip(cls_ids.reshape(-1).tolist(), values.reshape(-1).tolist()):
                name = self.classes[c] if 0 <= c < len(self.classes) else str(c)
                per_class[name] = None if v < 0 else 100.0 * v
        return {"map50": _pct(r["map_50"]), "map": _pct(r["map"]), "map75": _pct(r["map_75"]),
                "mar100": _pct(r["mar_100"]), "map_per_class": per_class,
                "n": int(sum_across_ranks([self.images], self.device)[0])}


def _compute(metric) -> Any:
    """``metric.compute()``; a process without updates (an empty DDP shard) takes part quietly."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*compute.* was called before the ``update``")
        return metric.compute()


def _pct(t: torch.Tensor) -> float:
    v = float(t)
    return 0.0 if v < 0 else 100.0 * v  # torchmetrics gives -1 when there is nothing to score


def segmentation_scores(confmat: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """mIoU, per-class IoU and global pixel accuracy (percent) of a KxK confusion matrix (rows: labels)."""
    cm = confmat.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    total = float(cm.sum())
    return {
        "miou": 100.0 * float(iou[present].mean()) if bool(present.any()) else 0.0,
        "pixel_acc": 100.0 * float(tp.sum()) / total if total else 0.0,
        "iou_per_class": {name: (None if bool(torch.isnan(v)) else 100.0 * float(v)) for name, v in zip(classes, iou)},
    }


class SegmentationMeter:
    """Accumulates a confusion matrix over non-ignored pixels; ``compute()`` gives the summary."""

    def __init__(self, classes: Sequence[str], ignore_index: int = 255, device: torch.device | str = "cpu") -> None:
        _torchmetrics("segmentation mIoU")
        from torchmetrics.classification import MulticlassConfusionMatrix

        self.classes = list(classes)
        self.device = torch.device(device)
        self.metric = MulticlassConfusionMatrix(num_classes=len(self.classes), ignore_index=ignore_index).to(self.device)
        self.images = 0

    def update(self, logits: torch.Tensor, masks: torch.Tensor) -> None:
        self.metric.update(logits.argmax(1).detach().to(self.device), masks.detach().to(self.device))
        self.images += int(masks.shape[0])

    def compute(self) -> dict[str, Any]:
        out = segmentation_scores(_compute(self.metric), self.classes)
        out["n"] = int(sum_across_ranks([self.images], self.device)[0])
        return out
