"""Deploy of the task models beyond tests/test_tasks_deploy.py: DeepLabV3 with its auxiliary head, Faster R-CNN, a failed check."""

from __future__ import annotations

import pytest
import torch

from repact.deploy.pipeline import DeployError
from repact.deploy.tasks import deploy_task_model, dense_view
from repact.models import create_model

pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_deeplab_with_aux_head_deploys_both_outputs(tmp_path):
    torch.manual_seed(0)
    name, kwargs = "deeplabv3_mobilenet_v3_large", {"aux_loss": True, "swap_heads": True}
    model = create_model(name, act="repact", num_classes=4, **kwargs)
    cfg = {"name": name, "act": "repact", "num_classes": 4, "kwargs": kwargs}
    res = deploy_task_model(model, tmp_path / name, img_size=48, model_config=cfg)
    r = res.report
    assert r["task"] == "segmentation" and r["onnx"]["parity_max_abs"] <= 1e-4
    assert r["verify"]["randomized_bn_and_activations"]["outputs"]["mismatched"] == 0
    assert r["verify"]["randomized_bn_and_activations"]["dense"]["max_rel"] <= 1e-5
    assert r["cost"]["params_deploy"] <= r["cost"]["params_train"]
    from repact.deploy.onnx_export import ort_session

    assert [o.name for o in ort_session(res.onnx_path).get_outputs()] == ["output_0", "output_1"]  # out, aux


@pytest.mark.slow
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
