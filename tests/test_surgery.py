"""Activation surgery on real torchvision models: call-site untying, filters, channels, approximate init, functional calls."""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import repact
from repact import RepAct
from repact.surgery import DEFAULT_TARGETS, fit_activation, swap_activations, untie_calls


def _x(n=2, size=32):
    return torch.randn(n, 3, size, size)


def _rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


# --------------------------------------------------------------------------------------------------
# torchvision ResNet: one shared `relu` per block, called twice (basic) or three times (bottleneck)
# --------------------------------------------------------------------------------------------------


def test_resnet18_reused_relu_gets_one_module_per_call_site():
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = _x()
    report = swap_activations(model, "repact", example_input=x)
    # stem relu + 8 basic blocks x 2 calls
    assert len(report) == 17
    acts = [m for m in model.modules() if isinstance(m, RepAct)]
    assert len(acts) == 17
    assert len({id(m) for m in acts}) == 17
    params = [p for m in acts for p in m.parameters()]
    assert len({p.data_ptr() for p in params}) == len(params)  # nothing shared
    blk = model.layer2[0]
    assert isinstance(blk.relu, RepAct) and isinstance(blk.relu_1, RepAct) and blk.relu is not blk.relu_1
    by_path = {r.path: r for r in report.swapped}
    assert by_path["layer2.0.relu"].channels == 128 and by_path["layer2.0.relu_1"].untied_from == "layer2.0.relu"
    assert by_path["relu"].untied_from is None and by_path["relu"].channels == 64
    # state-dict keys of the block's own layers are unchanged, the untied site adds its own
    keys = set(model.state_dict())
    assert {"layer2.0.conv1.weight", "layer2.0.bn2.running_var", "layer2.0.downsample.0.weight"} <= keys
    assert "layer2.0.relu_1.branch_weight" in keys
    # gradients reach every call site's own parameters
    model.train()
    model(x).sum().backward()
    assert all(m.branch_weight.grad is not None and m.branch_weight.grad.abs().sum() > 0 for m in acts)


def test_resnet50_bottleneck_untied_three_ways_and_reparameterizes_exactly():
    model = torchvision.models.resnet50(num_classes=10).eval()
    x = _x(2, 32)
    report = swap_activations(model, "repact_bn", example_input=x)
    assert len(report) == 1 + 16 * 3
    by_path = {r.path: r.channels for r in report.swapped}
    assert by_path["layer1.0.relu"] == 64 and by_path["layer1.0.relu_1"] == 64 and by_path["layer1.0.relu_2"] == 256
    repact.randomize_batchnorm_(model)
    repact.randomize_activations_(model)
    res, deployed = repact.verify_reparameterization(model, x, randomize_bn=False)
    assert res.max_rel <= 1e-5
    assert not any(isinstance(m, RepAct) for m in deployed.modules())


def test_untied_model_matches_the_original_function():
    model = torchvision.models.resnet18(num_classes=10).eval()
    ref = copy.deepcopy(model)
    x = _x()
    swap_activations(model, nn.ReLU, example_input=x)  # a fresh ReLU per call site: same function
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    assert model.layer1[0].relu is not model.layer1[0].relu_1


# --------------------------------------------------------------------------------------------------
# MobileNetV3: type targets, regex filters, channels from the example forward or the neighbours
# --------------------------------------------------------------------------------------------------


def test_targets_and_regex_filters_choose_the_sites():
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    stock = [n for n, m in model.named_modules() if isinstance(m, nn.Hardswish)]
    report = swap_activations(model, "repact", targets=[nn.Hardswish], exclude=r"^classifier", example_input=_x())
    assert sorted(report.paths) == sorted(p for p in stock if not p.startswith("classifier"))
    assert isinstance(model.classifier[1], nn.Hardswish)
    assert ("classifier.1", "matched by exclude") in report.skipped
    # ReLUs of the blocks but not those of the SE layers ("...fc1" neighbours, named "activation")
    report = swap_activations(model, "repact", targets="ReLU", include=r"^features", exclude=r"\.activation$",
                              example_input=_x())
    assert report.paths and all(p.startswith("features") and not p.endswith(".activation") for p in report.paths)
    assert all(isinstance(m.activation, nn.ReLU) for m in model.modules()
               if type(m).__name__ == "SqueezeExcitation")
    for r in report.swapped:
        conv = model.get_submodule(r.path.rsplit(".", 1)[0])[0]
        assert r.channels == conv.out_channels and r.channels_from == "example forward"


def test_channels_from_neighbouring_layer_without_example_input():
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    report = swap_activations(model, functools.partial(RepAct, granularity="channel"), targets=[nn.Hardswish])
    inside = [r for r in report.swapped if r.path.startswith("features")]
    assert inside and all(r.channels_from == "neighbouring layer" for r in inside)
    for r in inside:
        assert r.channels == model.get_submodule(r.path.rsplit(".", 1)[0])[1].num_features
    head = next(r for r in report.swapped if r.path == "classifier.1")
    assert head.channels == 1024
    assert "not run" in report.functional_scan
    model(_x())  # the channel-wise activations were built with the right counts


def test_dry_run_changes_nothing():
    model = torchvision.models.resnet18(num_classes=10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = swap_activations(model, "repact", example_input=_x(), dry_run=True)
    assert len(report) == 17 and "would swap" in str(report)
    assert not any(isinstance(m, RepAct) for m in model.modules())
    assert type(model.layer1[0]) is torchvision.models.resnet.BasicBlock
    assert model.state_dict().keys() == before.keys()


def test_module_registered_at_two_paths_gets_two_instances():
    shared = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), shared, nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6), shared)
    report = swap_activations(model, "repact_bn", example_input=_x())
    assert len(report) == 2 and model[2] is not model[5]
    assert [r.channels for r in report.swapped] == [4, 6]


# --------------------------------------------------------------------------------------------------
# functional calls, the root's own forward, untraceable parents
# --------------------------------------------------------------------------------------------------


class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.inner = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Hardswish())

    def forward(self, x):
        x = self.act(self.conv(x))
        x = F.relu(x) + torch.relu(x) + x.relu()
        return F.hardswish(self.inner(x))


def test_functional_activation_calls_are_reported_not_ignored():
    model = _Functional()
    report = swap_activations(model, "repact", example_input=_x())
    assert sorted(report.paths) == ["act", "inner.1"]
    ops = {(f.op.rsplit(".", 1)[-1], f.module, f.count) for f in report.functional}
    assert ("relu", "", 1) in ops and ("hardswish", "", 1) in ops
    assert sum(f.count for f in report.functional if f.op.endswith("relu")) == 3
    assert all(f.module_type == "_Functional" for f in report.functional)
    assert "NOT swapped" in str(report) and "__torch_function__" in report.functional_scan


class _RootReuse(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 1)
        self.c2 = nn.Conv2d(4, 5, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.c2(self.act(self.c1(x))))


def test_root_level_reuse_is_reported_and_untie_calls_fixes_it():
    model = _RootReuse().eval()
    x = _x()
    report = swap_activations(model, "repact", example_input=x)
    assert len(report) == 0 and "untie_calls" in report.skipped[0][1]
    ref = model(x)
    untied = untie_calls(model, x)
    assert untied.act is not untied.act_1
    assert torch.equal(untied(x), ref)
    report = swap_activations(untied, "repact", example_input=x)
    assert [r.channels for r in report.swapped] == [4, 5]
    assert untie_calls(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()), x).__class__ is nn.Sequential


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        y = self.act(self.conv(x))
        if y.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            y = y * 2
        return self.act(y)


def test_untraceable_parent_is_left_shared_and_reported():
    model = nn.Sequential(_Branchy())
    report = swap_activations(model, "repact", example_input=_x())
    assert len(report) == 0
    path, reason = report.skipped[0]
    assert path == "0.act" and "torch.fx could not trace" in reason
    assert isinstance(model[0].act, nn.ReLU)
    model(_x())


# --------------------------------------------------------------------------------------------------
# approximate init
# --------------------------------------------------------------------------------------------------


def test_approximate_init_starts_repact_as_hardswish_and_relu_exactly():
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    report = swap_activations(model, "repact", init="approximate", example_input=_x())
    hs = model.features[0][2]
    assert torch.allclose(hs.branch_weight, torch.tensor([0.0, 0.0, 0.0, 1.0]), atol=1e-6)
    relu = model.features[1].block[0][2]
    assert torch.allclose(relu.branch_weight, torch.tensor([0.0, 1.0, 0.0, 0.0]), atol=1e-6)
    assert max(r.fit_error for r in report.swapped) < 1e-5
    grid = torch.linspace(-8, 8, 4001).reshape(-1, 1)
    assert torch.allclose(hs(grid), F.hardswish(grid), atol=1e-5)


def test_approximate_init_fits_channelwise_prelu_and_smooth_targets():
    slopes = torch.tensor([0.1, -0.3, 0.5, 0.9])
    prelu = nn.PReLU(4)
    with torch.no_grad():
        prelu.weight.copy_(slopes)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), prelu, nn.Conv2d(4, 4, 1), nn.SiLU())
    report = swap_activations(model, functools.partial(RepAct, granularity="channel"), init="approximate",
                              example_input=_x())
    fitted = model[1]
    x = torch.linspace(-5, 5, 101).reshape(-1, 1).expand(-1, 4)
    assert torch.allclose(fitted(x), F.prelu(x, slopes), atol=1e-5)
    silu_err = report.swapped[1].fit_error
    assert 1e-4 < silu_err < 0.2  # SiLU is not piecewise quadratic: close, not exact
    default = RepAct(channels=4, granularity="channel")
    g = torch.linspace(-6, 6, 1201).reshape(-1, 1).expand(-1, 4)
    with torch.no_grad():
        assert silu_err < float((default(g) - F.silu(g)).abs().max())


def test_approximate_init_by_lbfgs_for_softmax_weights():
    act = repact.create_act("repact_softmax")
    err = fit_activation(act, nn.Hardswish(), ndim=2)
    g = torch.linspace(-6, 6, 1201).reshape(-1, 1)
    with torch.no_grad():
        default = float((repact.create_act("repact_softmax")(g) - F.hardswish(g)).abs().max())
    assert err < 1e-2 < default


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------


def test_bad_arguments_raise_clear_errors_and_leave_the_model_alone():
    model = torchvision.models.resnet18(num_classes=10)
    keys = set(model.state_dict())
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        swap_activations(model, "nope")
    with pytest.raises(ValueError, match=r"exclude pattern '\(' is not a valid regular expression"):
        swap_activations(model, "repact", exclude="(")
    with pytest.raises(ValueError, match="init must be one of default, approximate"):
        swap_activations(model, "repact", init="best")
    with pytest.raises(ValueError, match="'Relu' is not a torch.nn module class"):
        swap_activations(model, "repact", targets=["Relu"])
    with pytest.raises(ValueError, match="one instance is built per call site"):
        swap_activations(model, nn.ReLU())
    assert set(model.state_dict()) == keys
    assert nn.ReLU in DEFAULT_TARGETS and nn.GELU in DEFAULT_TARGETS
