"""Models by name: activation conventions, small-input stems, TFNet's size, whole-model exact reparameterization."""

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import repact
from repact import PiecewiseQuadratic, RepAct
from repact.models import create_model, list_models
from repact.models.tfnet import FunnelAct


TORCHVISION = ["mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
               "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "mobilenet_v2", "resnet18", "resnet50"]
TFNETS = ["tfnet_0_5", "tfnet_1_0", "tfnet_1_5", "tfnet_2_0"]
ALL = TORCHVISION + TFNETS


def _count(model, cls=RepAct):
    return sum(isinstance(m, cls) for m in model.modules())


def test_every_model_is_registered_and_unknown_names_list_the_choices():
    assert set(ALL) <= set(list_models())
    with pytest.raises(ValueError, match="unknown model 'mobilenet_v4'.*Available models: .*mobilenet_v3_small"):
        create_model("mobilenet_v4")
    with pytest.raises(ValueError, match="convention must be one of repact, standard, got 'paper'"):
        create_model("mobilenet_v3_small", act="repact", convention="paper")
    with pytest.raises(ValueError, match="convention must be one of acon, all"):
        create_model("resnet18", act="repact", convention="repact")
    with pytest.raises(ValueError, match="does not take pretrained"):
        create_model("shufflenet_v2_x1_0", pretrained=True)


@pytest.mark.parametrize("name,expected", [
    ("mobilenet_v3_small", 23), ("mobilenet_v3_large", 31), ("shufflenet_v2_x0_5", 37), ("shufflenet_v2_x1_0", 37),
    ("shufflenet_v2_x1_5", 37), ("shufflenet_v2_x2_0", 37), ("mobilenet_v2", 35), ("resnet18", 16), ("resnet50", 16),
    ("tfnet_0_5", 33), ("tfnet_2_0", 33),
])
def test_activation_layers_replaced_per_convention(name, expected):
    model = create_model(name, act="repact", num_classes=10)
    assert _count(model) == expected


def test_mobilenet_v3_repact_convention_keeps_se_and_classifier():
    model = create_model("mobilenet_v3_small", act="repact", num_classes=10)
    stock = torchvision.models.mobilenet_v3_small(num_classes=10)
    se = [m for m in model.modules() if isinstance(m, torchvision.ops.SqueezeExcitation)]
    assert len(se) == 9 and all(isinstance(m.activation, nn.ReLU) and isinstance(m.scale_activation, nn.Hardsigmoid)
                                for m in se)
    assert isinstance(model.classifier[1], nn.Hardswish)
    # every conv-block activation of the stock model (ReLU or HardSwish) became a RepAct
    stock_sites = [n for n, m in stock.named_modules() if n.startswith("features") and n.endswith(".2")
                   and isinstance(m, (nn.ReLU, nn.Hardswish))]
    assert all(isinstance(model.get_submodule(n), RepAct) for n in stock_sites) and len(stock_sites) == 23
    assert model.state_dict()["features.0.1.running_var"].shape == (16,)
    assert model.features[0][1].eps == 1e-3 and model.features[0][1].momentum == 0.01


def test_mobilenet_v3_standard_convention_replaces_only_hardswish():
    stock = torchvision.models.mobilenet_v3_large(num_classes=10)
    model = create_model("mobilenet_v3_large", act="repact", num_classes=10, convention="standard")
    hs = [n for n, m in stock.named_modules() if isinstance(m, nn.Hardswish)]
    relu = [n for n, m in stock.named_modules() if isinstance(m, nn.ReLU)]
    assert all(isinstance(model.get_submodule(n), RepAct) for n in hs)
    assert all(isinstance(model.get_submodule(n), nn.ReLU) for n in relu)
    assert _count(model) == len(hs) and "classifier.1" in hs


def test_act_none_is_the_architecture_itself():
    for name in TORCHVISION:
        model = create_model(name, num_classes=10)
        assert _count(model) == 0
    # the ResNets keep torchvision's state-dict keys (its weights load)
    ours = create_model("resnet50", num_classes=10)
    ours.load_state_dict(torchvision.models.resnet50(num_classes=10).state_dict(), strict=True)
    assert _count(create_model("tfnet_0_5", num_classes=10), nn.SiLU) == 33


def test_resnet_acon_convention_sites_and_channels():
    r50 = create_model("resnet50", act="repact_bn", num_classes=10)
    blk = r50.layer3[0]
    assert isinstance(blk.act2, RepAct) and isinstance(blk.act1, nn.ReLU) and isinstance(blk.act3, nn.ReLU)
    assert isinstance(r50.relu, nn.ReLU)
    r18 = create_model("resnet18", act="acon_c", num_classes=10)
    blk = r18.layer2[1]
    assert type(blk.act1).__name__ == type(blk.act2).__name__ != "ReLU"
    assert blk.act1 is not blk.act2
    everything = create_model("resnet50", act="repact", num_classes=10, convention="all")
    assert _count(everything) == 1 + 16 * 3


def test_channelwise_acts_get_their_channel_counts():
    model = create_model("shufflenet_v2_x0_5", act="acon_c", num_classes=10)
    model(torch.randn(2, 3, 32, 32))
    model = create_model("mobilenet_v3_small", act="repact", num_classes=10).eval()
    from functools import partial

    model = create_model("mobilenet_v3_small", act=partial(RepAct, granularity="channel"), num_classes=10)
    acts = [m for m in model.modules() if isinstance(m, RepAct)]
    assert all(m.branch_weight.shape[0] == m.channels for m in acts)
    model(torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("name", ALL)
def test_small_input_stem(name):
    model = create_model(name, act="repact", num_classes=10, small_input=True).eval()
    stem = next(c for c in model.modules() if isinstance(c, nn.Conv2d))
    assert stem.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for n, m in model.named_modules() if "maxpool" in n)
    sizes = []
    stem.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert sizes == [32]


def test_tfnet_matches_the_paper_size_and_flops():
    # ACON's table: 1.3M/43M, 1.9M/135M, 2.7M/279M, 3.8M/474M (params / multiply-adds at 224 px)
    paper = {"tfnet_0_5": (1.3, 43), "tfnet_1_0": (1.9, 135), "tfnet_1_5": (2.7, 279), "tfnet_2_0": (3.8, 474)}
    for name, (mparams, mflops) in paper.items():
        model = create_model(name).to("meta").eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(torch.randn(1, 3, 224, 224, device="meta"))
        macs = fc.get_total_flops() / 2e6
        assert abs(params - mparams) / mparams < 0.04, (name, params)
        assert abs(macs - mflops) / mflops < 0.02, (name, macs)
    model = create_model("tfnet_1_0", act="relu", num_classes=10)
    f = model.features[0].merge
    assert isinstance(f, FunnelAct) and f.stride == 2 and f.funnel.groups == f.funnel.in_channels == 32
    assert isinstance(model.dropout, nn.Dropout) and isinstance(create_model("tfnet_0_5").dropout, nn.Identity)


def test_tfnet_funnel_with_relu_gate_is_frelu_max():
    act = FunnelAct(4, 1, act="relu").eval()
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        b = act.funnel_bn(act.funnel(x))
        assert torch.allclose(act(x), act.out_bn(torch.maximum(x, b)), atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_whole_model_reparameterization_is_exact(name):
    act = {"resnet50": "repact_bn", "shufflenet_v2_x1_5": "repact_softmax", "tfnet_1_5": "repact_bn"}.get(name, "repact")
    model = create_model(name, act=act, num_classes=10).eval()
    repact.randomize_batchnorm_(model, seed=1)
    repact.randomize_activations_(model, seed=1)
    x = torch.randn(2, 3, 32, 32)
    res, deployed = repact.verify_reparameterization(model, x, randomize_bn=False)
    assert res.max_rel <= 1e-5, res
    assert res.ref_scale > 1e-3  # randomized statistics: a non-trivial output
    assert _count(deployed) == 0 and _count(deployed, PiecewiseQuadratic) == _count(model)


def test_timm_builder_swaps_every_call_site():
    pytest.importorskip("timm")
    model = create_model("timm", act="repact", num_classes=10, model_name="mobilenetv3_small_100", input_size=32).eval()
    report = model.repact_swap_report
    assert _count(model) == len(report) > 20 and report.functional == []
    repact.randomize_batchnorm_(model)
    res, _ = repact.verify_reparameterization(model, torch.randn(2, 3, 32, 32), randomize_bn=False)
    assert res.max_rel <= 1e-5
    with pytest.raises(ValueError, match="needs model_name="):
        create_model("timm")


@pytest.mark.parametrize("name, kwargs, words", [
    ("small_cnn", {"width": -5}, ["small_cnn", "width", "-5"]),
    ("small_cnn", {"width": True}, ["width", "True"]),
    ("small_cnn", {"in_channels": 0}, ["in_channels", "0"]),
    ("small_cnn", {"dropout": 1.0}, ["dropout", "[0, 1)"]),
    ("mobilenet_v2", {"width_mult": 0}, ["width_mult", "above 0"]),
    ("mobilenet_v3_small", {"small_input": "yes"}, ["small_input", "true or false"]),
    ("resnet18", {"small_input": 1}, ["small_input"]),
    ("tfnet_0_5", {"small_input": None}, ["small_input"]),
    ("small_cnn", {"num_classes": 0}, ["num_classes", "0"]),
    ("small_cnn", {"num_classes": True}, ["num_classes", "True"]),
])
def test_impossible_builder_arguments_raise_before_building(name, kwargs, words):
    with pytest.raises(ValueError) as e:
        create_model(name, act="repact", **kwargs)
    for w in words:
        assert w in str(e.value)
