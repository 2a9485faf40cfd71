"""repact.integrations.ultralytics on a small YOLOv8n (3 classes, 64 px), built from its YAML (nothing is downloaded)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

ultralytics = pytest.importorskip("ultralytics")

from ultralytics.nn.modules import Conv  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402

from repact.activations.piecewise import PiecewiseQuadratic  # noqa: E402
from repact.activations.repact import RepAct  # noqa: E402
from repact.integrations.ultralytics import (export_yolo_onnx, reparameterize_yolo, swap_yolo_activations,  # noqa: E402
                                             verify_yolo_reparameterization, yolo_network)
from repact.reparam import (_flatten_outputs, deployable_modules, randomize_activations_,  # noqa: E402
                            randomize_batchnorm_)

SIZE = 64


def _acted_convs(net: nn.Module) -> list[Conv]:
    return [m for m in net.modules() if isinstance(m, Conv) and not isinstance(m.act, nn.Identity)]


@pytest.fixture(scope="module")
def plain() -> DetectionModel:
    torch.manual_seed(0)
    return DetectionModel("yolov8n.yaml", nc=3, verbose=False)


@pytest.fixture(scope="module")
def swapped(plain) -> DetectionModel:
    return swap_yolo_activations(copy.deepcopy(plain), "repact")


def test_every_conv_gets_its_own_repact_not_the_shared_default_act(plain, swapped):
    convs = _acted_convs(plain)
    # the gotcha: one nn.SiLU instance (the class attribute) serves every Conv
    assert len(convs) == 57 and all(c.act is Conv.default_act for c in convs)
    assert sum(1 for m in plain.modules() if m is Conv.default_act) == 1  # named_modules() de-duplicates it

    acts = [c.act for c in _acted_convs(swapped)]
    repacts = [m for m in swapped.modules() if isinstance(m, RepAct)]
    assert len(acts) == len(convs) and all(isinstance(a, RepAct) for a in acts)
    assert len(repacts) == len(convs) and len({id(a) for a in acts}) == len(acts)
    ptrs = {p.data_ptr() for a in acts for p in a.parameters()}
    assert len(ptrs) == sum(1 for a in acts for _ in a.parameters())
    assert swapped.repact_info["swap"]["swapped"] == len(convs)
    assert swapped.repact_info["swap"]["functional_not_swapped"] == []

    net = copy.deepcopy(swapped)  # independent parameters: changing one act leaves the others
    first, second = [c.act for c in _acted_convs(net)][:2]
    with torch.no_grad():
        first.branch_weight.add_(1.0)
    assert not torch.equal(first.branch_weight, second.branch_weight)
    # the class attribute and the plain model are untouched: models built later still get SiLU
    assert type(Conv.default_act) is nn.SiLU and all(c.act is Conv.default_act for c in _acted_convs(plain))


def test_yolo_wrapper_and_act_kwargs_give_channelwise_repact_iii():
    yolo = ultralytics.YOLO("yolov8n.yaml", task="detect")
    net = swap_yolo_activations(yolo, "repact", variant="bn", granularity="channel")
    assert net is yolo.model and yolo_network(yolo) is net
    convs = _acted_convs(net)
    assert all(isinstance(c.act, RepAct) and c.act.variant == "bn" for c in convs)
    assert all(c.act.channels == c.conv.out_channels for c in convs)  # from surgery's example forward


def test_not_a_yolo_model_is_a_clear_type_error():
    for bad in (nn.Sequential(nn.Conv2d(3, 8, 3), nn.SiLU()), "yolov8n.pt", None):
        with pytest.raises(TypeError, match=r"ultralytics\.YOLO .*BaseModel"):
            swap_yolo_activations(bad)
    with pytest.raises(TypeError, match="YOLO"):
        reparameterize_yolo(object())


def test_training_step_updates_repact_parameters(swapped):
    from ultralytics.cfg import get_cfg

    net = copy.deepcopy(swapped).train()
    net.args = get_cfg()  # the loss's gains (box, cls, dfl); the trainer sets this
    batch = {"img": torch.rand(2, 3, SIZE, SIZE), "batch_idx": torch.tensor([0.0, 1.0]),
             "cls": torch.tensor([[0.0], [2.0]]), "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.6, 0.2, 0.2]])}
    acts = {n: p for n, p in net.named_parameters() if ".act." in n}
    before = {n: p.detach().clone() for n, p in acts.items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss, _ = net.loss(batch)  # Ultralytics' own detection loss
    loss.sum().backward()
    opt.step()
    assert all(p.grad is not None for p in acts.values())
    changed = {n for n, p in acts.items() if not torch.equal(p, before[n])}
    # backbone and neck (layers 0-21) all learn; the head's box branches only where targets were assigned
    trunk = {n for n in acts if int(n.split(".")[1]) < 22}
    assert trunk <= changed and len(changed) > 0.9 * len(acts)


def test_fused_convs_still_call_their_repact(swapped):
    net = copy.deepcopy(swapped).eval()
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = net(x)[0]
    net.fuse(verbose=False)  # folds conv + BN, Conv.forward -> Conv.forward_fuse
    convs = _acted_convs(net)
    assert net.is_fused() and all(c.forward == c.forward_fuse for c in convs)
    called = []
    hooks = [c.act.register_forward_hook(lambda m, i, o: called.append(id(m))) for c in convs]
    with torch.no_grad():
        out = net(x)[0]
    for h in hooks:
        h.remove()
    assert sorted(called) == sorted(id(c.act) for c in convs)
    assert float((out - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


def test_reparameterization_is_exact_with_random_bn_and_activation_parameters(swapped):
    state = {k: v.clone() for k, v in swapped.state_dict().items()}
    res, deployed = verify_yolo_reparameterization(swapped, imgsz=SIZE, batch=2, seed=1)
    assert res.ok(1e-5), str(res)
    assert res.outputs >= 4  # decoded predictions and the raw ones (8.4: box distributions, class logits, 3 maps)
    assert not any(isinstance(m, RepAct) for m in deployed.modules())
    assert sum(isinstance(m, PiecewiseQuadratic) for m in deployed.modules()) == 57
    assert all(torch.equal(v, state[k]) for k, v in swapped.state_dict().items())  # the model is not changed

    # each raw output on its own scale (the check above takes the largest output's scale)
    ref = randomize_activations_(randomize_batchnorm_(copy.deepcopy(swapped), 2), 2).eval()
    dep = reparameterize_yolo(ref, inplace=False).eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        pairs = list(zip(_flatten_outputs(ref(x)), _flatten_outputs(dep(x))))
    for r, d in pairs:
        assert float((r - d).abs().max()) <= 1e-5 * float(r.abs().max())

    net = reparameterize_yolo(copy.deepcopy(swapped))  # in place: nothing left to convert
    assert not deployable_modules(net)
    with pytest.raises(ValueError, match="no re-parameterizable activation"):
        verify_yolo_reparameterization(net)


def test_onnx_export_matches_onnxruntime(swapped, tmp_path):
    pytest.importorskip("onnxruntime")
    from repact.deploy.onnx_export import ort_session

    report = export_yolo_onnx(swapped, tmp_path / "yolo.onnx", imgsz=SIZE, batch=2)
    assert report["parity_max_abs"] <= 1e-4 and report["parity_batches"] == [2, 1, 3]
    assert report["export_forms"] and sum(report["export_forms"].values()) == 57 and report["unfused"] == {}
    assert any("NMS" in s for s in report["not_exported"])
    sess = ort_session(tmp_path / "yolo.onnx")
    (out,) = sess.run(None, {"input": torch.rand(3, 3, SIZE, SIZE).numpy()})
    assert out.shape == (3, 4 + 3, 84)  # xywh + 3 class scores at 8x8 + 4x4 + 2x2 anchors
    assert any(isinstance(m, RepAct) for m in swapped.modules())  # exported a copy
