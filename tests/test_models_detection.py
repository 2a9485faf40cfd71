"""Detection and segmentation builders: swapped activations, local weights, dense views (real torchvision models)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from repact import RepAct
from repact.models import create_model, get_model_spec, list_models
from repact.models.detection import ActTwoMLPHead, DenseFasterRCNN, DenseSSD
from repact.models.segmentation import DenseSegmentation

DET = "ssdlite320_mobilenet_v3_large"
FRCNN = "fasterrcnn_mobilenet_v3_large_320_fpn"


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_registered_by_family():
    assert list_models("detection") == [FRCNN, DET]
    assert list_models("segmentation") == ["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]
    assert get_model_spec(DET).family == "detection"


def test_ssdlite_backbone_and_head_swap_counts_and_conventions():
    plain = create_model(DET, num_classes=4, img_size=128)
    assert _count(plain, RepAct) == 0 and plain.repact_info["backbone_swap"]["swapped"] == 0
    model = create_model(DET, act="repact", num_classes=4, img_size=128)
    info = model.repact_info
    assert info["backbone_swap"]["swapped"] == 31 == _count(model, RepAct)
    assert info["head_swap"]["swapped"] == 0 and info["backbone_swap"]["functional_not_swapped"] == []
    assert all(p.startswith("backbone.features") or p.startswith("features") for p in info["backbone_swap"]["paths"])
    # the SE blocks keep their ReLU / Hardsigmoid
    assert _count(model, nn.Hardsigmoid) == _count(plain, nn.Hardsigmoid) > 0
    heads = create_model(DET, act="repact", num_classes=4, img_size=128, swap_heads=True)
    assert heads.repact_info["head_swap"]["swapped"] == 24 and _count(heads, RepAct) == 55
    assert _count(heads, nn.ReLU6) == 0
    standard = create_model(DET, act="repact", num_classes=4, img_size=128, convention="standard")
    assert standard.repact_info["backbone_swap"]["swapped"] == 20


def test_faster_rcnn_box_head_activations_are_modules_and_swappable():
    model = create_model(FRCNN, act="repact", num_classes=3, swap_heads=True, min_size=128, max_size=256)
    assert isinstance(model.roi_heads.box_head, ActTwoMLPHead)
    assert model.repact_info["head_swap"]["paths"] == ["rpn.head.conv.0.1", "roi_heads.box_head.act6",
                                                       "roi_heads.box_head.act7"]
    ref = torchvision.models.detection.faster_rcnn.TwoMLPHead(16, 8)
    ours = ActTwoMLPHead(16, 8)
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 4, 2, 2)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_segmentation_builders_and_swaps():
    lr = create_model("lraspp_mobilenet_v3_large", act="repact_bn", num_classes=5, swap_heads=True)
    assert lr.repact_info["backbone_swap"]["swapped"] == 31 and lr.repact_info["head_swap"]["paths"] == ["classifier.cbr.2"]
    assert isinstance(lr.classifier.scale[2], nn.Sigmoid)  # the gate is not an activation to swap
    x = torch.randn(2, 3, 64, 48)
    assert lr.eval()(x)["out"].shape == (2, 5, 64, 48)
    dl = create_model("deeplabv3_mobilenet_v3_large", act="repact", num_classes=5, aux_loss=True, swap_heads=True)
    assert dl.repact_info["head_swap"]["swapped"] == 8  # ASPP (7) + the FCN auxiliary head (1)
    out = dl.eval()(x)
    assert out["out"].shape == out["aux"].shape == (2, 5, 64, 48)


def test_dense_views_share_weights_and_keys_and_compute_the_detector_network():
    torch.manual_seed(0)
    ssd = create_model(DET, act="repact", num_classes=4, img_size=128).eval()
    dense = DenseSSD(ssd)
    assert list(dense.state_dict()) == list(ssd.state_dict())
    assert dense.head is ssd.head
    images = torch.rand(2, 3, 128, 128)
    seen = {}
    ssd.head.register_forward_hook(lambda m, i, o: seen.update(o))
    with torch.no_grad():
        ssd(list(images))
        reg, cls = dense(images)
    torch.testing.assert_close(reg, seen["bbox_regression"], rtol=0, atol=0)
    torch.testing.assert_close(cls, seen["cls_logits"], rtol=0, atol=0)
    via_builder = create_model(DET, act="repact", num_classes=4, img_size=128, outputs="dense")
    assert isinstance(via_builder, DenseSSD) and list(via_builder.state_dict()) == list(ssd.state_dict())

    frcnn = create_model(FRCNN, num_classes=3, min_size=128, max_size=256).eval()
    rpn_seen = {}
    frcnn.rpn.head.register_forward_hook(lambda m, i, o: rpn_seen.update(obj=o[0], deltas=o[1]))
    with torch.no_grad():
        frcnn(list(images))
        outs = DenseFasterRCNN(frcnn)(images)
    assert len(outs) == 9  # 3 FPN levels, objectness and deltas per level
    for got, want in zip(outs[3:], [*rpn_seen["obj"], *rpn_seen["deltas"]]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)

    seg = create_model("deeplabv3_mobilenet_v3_large", num_classes=3).eval()
    with torch.no_grad():
        torch.testing.assert_close(DenseSegmentation(seg)(images), seg(images)["out"], rtol=0, atol=0)


def test_local_backbone_and_full_weights(tmp_path):
    torch.manual_seed(0)
    cls = torchvision.models.mobilenet_v3_large(weights=None)
    for m in cls.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
    path = tmp_path / "mnv3_imagenet.pth"
    torch.save(cls.state_dict(), path)
    model = create_model(DET, act="repact", num_classes=4, img_size=128, weights=str(path))
    info = model.repact_info["weights"]
    assert info["kind"] == "backbone" and info["ignored_other"] and info["activation_tensors_kept_at_init"]
    first = model.backbone.features[0][0][1]  # stem BatchNorm
    torch.testing.assert_close(first.running_mean, cls.features[0][1].running_mean)
    torch.testing.assert_close(model.backbone.features[1][-1][0].weight, cls.features[16][0].weight)  # full tail

    from repact.checkpoint import save_checkpoint

    trained = create_model(FRCNN, act="repact", num_classes=3, min_size=128, max_size=256)
    for p in trained.parameters():
        p.data.normal_()
    tpath, _ = save_checkpoint(tmp_path / "frcnn", trained, model_config={"name": FRCNN})
    again = create_model(FRCNN, act="repact", num_classes=3, min_size=128, max_size=256, weights=str(tpath))
    assert again.repact_info["weights"]["kind"] == "full"
    for (k, a), b in zip(trained.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="does not match this model"):
        create_model(FRCNN, act=None, num_classes=3, weights=str(tpath))
    with pytest.raises(ValueError, match="does not exist \\(weights are only read from local files\\)"):
        create_model(DET, num_classes=4, weights="DEFAULT")
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"x": object()}}, evil)
    with pytest.raises(ValueError, match="weights_only=True"):
        create_model(DET, num_classes=4, weights=str(evil))


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="SSD does not take bogus"):
        create_model(DET, num_classes=4, bogus=1)
    with pytest.raises(ValueError, match="outputs must be one of default, dense"):
        create_model("lraspp_mobilenet_v3_large", num_classes=4, outputs="onnx")
    with pytest.raises(ValueError, match="convention must be one of repact, standard"):
        create_model(DET, act="repact", num_classes=4, convention="all")
    with pytest.raises(ValueError, match="weights_kind must be one of auto, backbone, full"):
        create_model(DET, num_classes=4, weights=__file__, weights_kind="head")
