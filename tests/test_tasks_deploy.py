"""Deploy of detection and segmentation models: exact re-parameterization, ONNX of the dense views, parity."""

from __future__ import annotations

import json

import pytest
import torch

from repact import RepAct
from repact.checkpoint import build_model
from repact.deploy.tasks import (NOT_EXPORTED, compare_detections, compare_masks, deploy_task_model,
                                 verify_task_reparameterization)
from repact.models import create_model
from repact.reparam import deployable_modules

pytest.importorskip("onnxruntime")

DET = "ssdlite320_mobilenet_v3_large"
FRCNN = "fasterrcnn_mobilenet_v3_large_320_fpn"


def _det(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


def test_compare_detections_tells_tie_swaps_from_mismatches():
    ref = [_det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.5], [1, 2])]
    same = [_det([[20, 20, 30, 30], [0, 0, 10, 10]], [0.5, 0.9], [2, 1])]  # another order
    r = compare_detections(ref, same)
    assert r["equal"] is True and r["matched"] == 2 and r["mismatched"] == 0
    tied = [_det([[0, 0, 10, 10], [20, 20, 30, 30], [60, 60, 70, 70]], [0.9, 0.5, 0.5], [1, 2, 2])]
    swapped = [_det([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0.9, 0.5, 0.5], [1, 2, 2])]
    r = compare_detections(tied, swapped)  # NMS kept the other of two boxes scored 0.5
    assert r["tie_swaps"] == 1 and r["mismatched"] == 0 and r["equal"] is True
    moved = [_det([[0, 0, 10, 10], [40, 40, 50, 50]], [0.9, 0.5], [1, 2])]  # an untied score, another box
    r = compare_detections(ref, moved)
    assert r["tie_swaps"] == 0 and r["mismatched"] == 2 and r["equal"] is False
    other = [_det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.4], [1, 2])]  # a score moved
    r = compare_detections(ref, other)
    assert r["mismatched"] == 2 and r["equal"] is False  # the reference one unmatched, the candidate one extra
    r = compare_detections(ref, [_det([[0, 0, 10, 10]], [0.9], [1])])
    assert r["mismatched"] == 1 and r["equal"] is False
    with pytest.raises(ValueError, match="1 images of reference detections but 2 of candidate"):
        compare_detections(ref, ref + ref)


def test_compare_masks_forgives_only_ties():
    ref = torch.tensor([[[[1.0, 0.0, 0.5]], [[0.0, 1.0, 0.5]]]])  # 1 x 2 classes x 1 x 3; the last pixel a tie
    assert compare_masks(ref, ref.clone())["equal"] is True
    flipped = ref.flip(1)
    r = compare_masks(ref, flipped)
    assert r["pixels"] == 3 and r["differing"] == 2 and r["mismatched"] == 2 and r["equal"] is False
    near_tie = ref.clone()
    near_tie[0, 0, 0, 2] -= 1e-6  # within the accepted error, the tied pixel changes class
    r = compare_masks(ref, near_tie, rtol=1e-5)
    assert r["differing"] == 1 and r["mismatched"] == 0 and r["equal"] is True
    small = ref.clone()
    small[0, 0, 0, 0] = -1e-3  # a clear pixel flipped by an error far below the logits' scale: still a mismatch
    assert compare_masks(ref, small, rtol=1e-5)["mismatched"] == 1


@pytest.mark.parametrize("name,kwargs,size", [
    (FRCNN, {"min_size": 128, "max_size": 128, "swap_heads": True}, 128),
    ("lraspp_mobilenet_v3_large", {"swap_heads": True}, 64),
    ("deeplabv3_mobilenet_v3_large", {"aux_loss": True}, 64),
])
def test_reparameterization_is_exact_with_randomized_statistics(name, kwargs, size):
    torch.manual_seed(0)
    model = create_model(name, act="repact", num_classes=4, **kwargs)
    images = torch.rand(2, 3, size, size)
    res, deployed = verify_task_reparameterization(model, images, randomize=True, seed=1)
    assert any(isinstance(m, RepAct) for m in model.modules())
    assert not deployable_modules(deployed)  # nothing left to re-parameterize
    assert res.randomized and res.dense.max_rel <= 1e-5, res
    assert res.ok(1e-5), res
    if res.task == "segmentation":
        assert res.outputs["equal"] is True and res.outputs["pixels"] == 2 * size * size
    else:
        assert res.outputs["detections"] > 0 and res.outputs["equal"] is not False, res


def test_deploy_segmentation_exports_the_whole_model(tmp_path):
    torch.manual_seed(0)
    config = {"name": "lraspp_mobilenet_v3_large", "act": "repact", "num_classes": 3, "kwargs": {}}
    model = create_model("lraspp_mobilenet_v3_large", act="repact", num_classes=3)
    lines = []
    result = deploy_task_model(model, tmp_path / "out", img_size=64, model_config=config, log=lines.append)
    report = json.loads(result.report_path.read_text())
    assert report["task"] == "segmentation"
    assert report["onnx"]["exported"].startswith("the whole model")
    assert report["onnx"]["not_exported"] == NOT_EXPORTED["segmentation"]
    assert report["onnx"]["parity_max_abs"] <= 1e-4 and report["onnx"]["parity_batches"] == [2, 1, 3]
    assert report["verify"]["randomized_bn_and_activations"]["dense"]["max_rel"] <= 1e-5
    assert report["weights"]["reload_max_abs"] == 0.0
    assert any(line.startswith("not exported:") for line in lines)
    rebuilt = build_model(result.weights_path).eval()
    assert not any(isinstance(m, RepAct) for m in rebuilt.modules())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rebuilt(x)["out"].shape == (1, 3, 64, 64)
        torch.testing.assert_close(rebuilt(x)["out"], model.eval()(x)["out"], rtol=1e-4, atol=1e-4)


def test_deploy_detector_exports_backbone_and_head_and_names_what_is_not(tmp_path):
    torch.manual_seed(0)
    config = {"name": DET, "act": "repact", "num_classes": 4, "kwargs": {"img_size": 96}}
    model = create_model(DET, act="repact", num_classes=4, img_size=96)
    model.train()
    result = deploy_task_model(model, tmp_path / "out", model_config=config, name="ssd")
    assert model.training  # modes restored
    report = json.loads(result.report_path.read_text())
    assert report["task"] == "detection" and report["onnx"]["input_size"] == 96
    assert report["onnx"]["not_exported"] == NOT_EXPORTED["SSD"]
    assert any("NMS" in item for item in report["onnx"]["not_exported"])
    assert report["onnx"]["parity_max_abs"] <= 1e-4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "ssd.onnx", "ssd_deploy.json", "ssd_deploy.safetensors", "ssd_deploy_report.json"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"input": torch.rand(2, 3, 96, 96).numpy()})
    assert [o.shape[0] for o in outs] == [2, 2] and outs[1].shape[-1] == 4  # regressions, class logits
