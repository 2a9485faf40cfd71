"""Deploy of detection and segmentation models: exact reparameterization, ONNX of the dense view, onnxruntime parity."""

from __future__ import annotations

import json

import pytest
import torch

from repact import PiecewiseQuadratic, RepAct
from repact.checkpoint import build_model
from repact.deploy.pipeline import DeployError
from repact.deploy.tasks import compare_detections, compare_masks, deploy_task_model, dense_view
from repact.models import create_model

pytest.importorskip("onnxruntime")


def test_ssdlite_deploys_backbone_and_heads_and_says_what_is_not_exported(tmp_path):
    torch.manual_seed(0)
    kwargs = {"img_size": 96, "swap_heads": True}
    model = create_model("ssdlite320_mobilenet_v3_large", act="repact_bn", num_classes=3, **kwargs)
    cfg = {"name": "ssdlite320_mobilenet_v3_large", "act": "repact_bn", "num_classes": 3, "kwargs": kwargs}
    lines = []
    res = deploy_task_model(model, tmp_path / "out", model_config=cfg, name="ssd", log=lines.append)
    report = json.loads(res.report_path.read_text())
    assert report["task"] == "detection" and report["onnx"]["input_size"] == 96
    for label in ("own_statistics", "randomized_bn_and_activations"):
        check = report["verify"][label]
        assert check["dense"]["max_rel"] <= 1e-5 and check["outputs"]["equal"] is not False
    assert report["verify"]["randomized_bn_and_activations"]["dense"]["ref_scale"] > 0.1  # a real signal
    assert report["onnx"]["parity_max_abs"] <= 1e-4 and report["onnx"]["parity_batches"] == [2, 1, 3]
    assert any("NMS" in s for s in report["onnx"]["not_exported"])
    assert any(line.startswith("not exported:") for line in lines)
    assert report["weights"]["reload_max_abs"] == 0.0
    rebuilt = build_model(res.weights_path)  # the full detector, in deploy form
    assert sum(isinstance(m, PiecewiseQuadratic) for m in rebuilt.modules()) == 55
    assert not any(isinstance(m, RepAct) for m in rebuilt.modules())
    from repact.deploy.onnx_export import ort_session

    sess = ort_session(res.onnx_path)
    assert [o.name for o in sess.get_outputs()] == ["output_0", "output_1"]
    assert any(isinstance(m, RepAct) for m in model.modules())  # the model itself is untouched


def test_segmentation_models_deploy_whole(tmp_path):
    torch.manual_seed(0)
    for name, kwargs in (("lraspp_mobilenet_v3_large", {"swap_heads": True}),
                         ("deeplabv3_mobilenet_v3_large", {"aux_loss": True})):
        model = create_model(name, act="repact", num_classes=4, **kwargs)
        cfg = {"name": name, "act": "repact", "num_classes": 4, "kwargs": kwargs}
        res = deploy_task_model(model, tmp_path / name, img_size=48, model_config=cfg)
        r = res.report
        assert r["task"] == "segmentation" and r["onnx"]["parity_max_abs"] <= 1e-4
        assert r["verify"]["randomized_bn_and_activations"]["outputs"]["mismatched"] == 0
        assert r["verify"]["randomized_bn_and_activations"]["dense"]["max_rel"] <= 1e-5
        assert r["cost"]["params_deploy"] <= r["cost"]["params_train"]


def test_faster_rcnn_dense_view_exports(tmp_path):
    torch.manual_seed(0)
    kwargs = {"min_size": 96, "max_size": 192, "swap_heads": True}
    model = create_model("fasterrcnn_mobilenet_v3_large_320_fpn", act="repact", num_classes=3, **kwargs)
    res = deploy_task_model(model, tmp_path / "frcnn", img_size=96,
                            model_config={"name": "fasterrcnn_mobilenet_v3_large_320_fpn", "act": "repact",
                                          "num_classes": 3, "kwargs": kwargs})
    assert len(res.report["onnx"]["not_exported"]) == 3 and "RoIAlign" in res.report["onnx"]["not_exported"][2]
    assert res.report["onnx"]["parity_max_abs"] <= 1e-4
    assert len(dense_view(model)(torch.rand(1, 3, 96, 96))) == 9


def test_a_failed_check_writes_nothing(tmp_path):
    model = create_model("lraspp_mobilenet_v3_large", act="repact", num_classes=2)
    with pytest.raises(DeployError, match="nothing was written"):
        deploy_task_model(model, tmp_path / "out", img_size=32, rtol=0.0, parity_tol=-1.0)
    assert not any(p.name.endswith((".onnx", ".safetensors", ".json")) for p in (tmp_path / "out").rglob("*"))


def _dets(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


def test_compare_detections_tells_ties_from_differences():
    a = [_dets([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0.9, 0.5, 0.5], [1, 2, 2])]
    same = compare_detections(a, [_dets([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]],
                                        [0.9, 0.5, 0.5], [1, 2, 2])])
    assert same["equal"] is True and same["matched"] == 3
    # NMS kept the other of two equally scored boxes: a tie swap, not a difference
    swap = compare_detections(a, [_dets([[0, 0, 10, 10], [20, 20, 30, 30], [60, 60, 70, 70]],
                                        [0.9, 0.5, 0.5], [1, 2, 2])])
    assert swap["tie_swaps"] == 1 and swap["mismatched"] == 0 and swap["equal"] is True
    moved = compare_detections(a, [_dets([[0, 0, 12, 10], [20, 20, 30, 30], [40, 40, 50, 50]],
                                         [0.9, 0.5, 0.5], [1, 2, 2])])
    assert moved["equal"] is False and moved["mismatched"] == 2
    relabeled = compare_detections(a, [_dets([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]],
                                             [0.9, 0.5, 0.5], [2, 2, 2])])
    assert relabeled["equal"] is False


def test_compare_masks_counts_only_untied_flips():
    ref = torch.tensor([[[[2.0, 1.0]], [[0.0, 1.0]]]])       # pixel 2 ties
    cand = torch.tensor([[[[2.0, 1.0]], [[0.0, 1.0 + 1e-7]]]])
    r = compare_masks(ref, cand)
    assert r["differing"] == 1 and r["mismatched"] == 0 and r["equal"]
    r = compare_masks(ref, torch.tensor([[[[0.0, 1.0]], [[2.0, 1.0]]]]))
    assert r["mismatched"] >= 1 and not r["equal"]
