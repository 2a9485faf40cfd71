"""mAP (torchmetrics + pycocotools) with VOC's difficult objects, and mIoU / pixel accuracy."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchmetrics")
pytest.importorskip("pycocotools")

from repact.tasks.metrics import DetectionMeter, SegmentationMeter, segmentation_scores  # noqa: E402

CLASSES = ["__background__", "cat", "dog"]


def _det(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


def _gt(boxes, labels, difficult):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
            "difficult": torch.tensor(difficult)}


def test_perfect_detections_score_100_and_keys_are_percent():
    m = DetectionMeter(CLASSES)
    m.update([_det([[10, 10, 50, 50], [60, 10, 90, 40]], [0.9, 0.8], [1, 2])],
             [_gt([[10, 10, 50, 50], [60, 10, 90, 40]], [1, 2], [False, False])])
    r = m.compute()
    assert r["map50"] == pytest.approx(100.0) and r["map"] == pytest.approx(100.0)
    assert set(r["map_per_class"]) == {"cat", "dog"} and r["n"] == 1


def test_difficult_objects_are_neither_missed_nor_false_positives():
    gts = [_gt([[10, 10, 50, 50], [60, 10, 90, 40]], [1, 1], [False, True])]
    # the difficult cat is not detected: no recall lost
    m = DetectionMeter(CLASSES)
    m.update([_det([[10, 10, 50, 50]], [0.9], [1])], gts)
    assert m.compute()["map50"] == pytest.approx(100.0)
    # a detection on the difficult cat, scored above the real one: not a false positive
    m = DetectionMeter(CLASSES)
    m.update([_det([[60, 10, 90, 40], [10, 10, 50, 50]], [0.95, 0.9], [1, 1])], gts)
    assert m.compute()["map50"] == pytest.approx(100.0)
    # the same boxes without the difficult flag: the miss costs recall
    m = DetectionMeter(CLASSES)
    m.update([_det([[10, 10, 50, 50]], [0.9], [1])], [_gt([[10, 10, 50, 50], [60, 10, 90, 40]], [1, 1], [False, False])])
    assert m.compute()["map50"] == pytest.approx(50.0, abs=1.0)


def test_a_false_positive_ranked_first_lowers_ap50():
    m = DetectionMeter(CLASSES)
    m.update([_det([[100, 100, 120, 120], [10, 10, 50, 50]], [0.99, 0.5], [1, 1])],
             [_gt([[10, 10, 50, 50]], [1], [False])])
    r = m.compute()
    assert 40.0 < r["map50"] < 60.0  # precision 1/2 at the only recall level


def test_segmentation_scores_from_a_confusion_matrix():
    cm = torch.tensor([[50, 10, 0, 0],
                       [5, 30, 0, 0],
                       [0, 0, 0, 0],   # class 2 absent from labels and predictions
                       [0, 0, 0, 5]])
    r = segmentation_scores(cm, ["bg", "a", "b", "c"])
    ious = {"bg": 50 / 65, "a": 30 / 45, "c": 1.0}
    assert r["iou_per_class"]["b"] is None
    for k, v in ious.items():
        assert r["iou_per_class"][k] == pytest.approx(100 * v)
    assert r["miou"] == pytest.approx(100 * sum(ious.values()) / 3)
    assert r["pixel_acc"] == pytest.approx(100 * 85 / 100)


def test_segmentation_meter_ignores_255():
    m = SegmentationMeter(["bg", "fg"])
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, :] = 1.0  # predicts fg in the top row
    masks = torch.tensor([[[1, 255], [0, 255]]])
    m.update(logits, masks)
    r = m.compute()
    assert r["pixel_acc"] == pytest.approx(100.0) and r["miou"] == pytest.approx(100.0) and r["n"] == 1
