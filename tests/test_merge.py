"""repact.merge_linear on real models: exact (random BN statistics, <= 1e-5 relative), refusals named,
the VanillaNet-style network halved, the record that rebuilds a merged model, merge candidates."""

import copy

import pytest
import torch
from torch import nn

import repact
from repact import PiecewiseQuadratic, RepAct
from repact.activations.anneal import anneal_activations, annealed_modules
from repact.merge import MergeError, PaddedConv2d, apply_structure, linear_candidates, merge_linear, verify_merge
from repact.models import create_model


def _conv_count(model):
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


def _to_identity(model):
    for _, a in annealed_modules(model):
        a.set_lam(1.0)
    return model


@pytest.mark.parametrize("act,small", [("relu", True), ("repact", False)])
def test_vanillanet_annealed_to_the_identity_merges_to_half_its_convolutions(act, small):
    model = _to_identity(create_model("vanillanet_mini", act=act, num_classes=10, small_input=small)).eval()
    repact.randomize_activations_(model, seed=1)
    x = torch.randn(2, 3, 32, 32)
    res, merged, report = verify_merge(model, x)  # random BN statistics, every exact merge
    assert res.ok(1e-5), res
    assert _conv_count(merged) * 2 <= _conv_count(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in merged.modules())
    assert report.before["conv_layers"] == 10 and report.after["conv_layers"] == 5
    assert report.ratios()["conv_layers"] == 0.5 and report.after["params"] < report.before["params"]
    assert [m.form for m in report.merged][:2] == ["1x1 after 3x3" if small else "1x1 after 4x4", "1x1 after 1x1"]
    assert not report.refused
    with torch.no_grad():  # and with the model's own statistics, the default merge
        merged2, report2 = merge_linear(model, x)
        assert (merged2(x) - model(x)).abs().max() <= 1e-5 * model(x).abs().max()
    assert report2.verify["max_rel"] <= 1e-5 and _conv_count(merged2) == 5


def test_vanillanet_not_annealed_keeps_its_layers_and_only_folds():
    model = create_model("vanillanet_mini", act="relu", num_classes=10, small_input=True).eval()
    merged, report = merge_linear(model, torch.randn(2, 3, 16, 16))
    assert report.merged == [] and len(report.folded) == 9  # every BatchNorm folded, nothing merged
    assert _conv_count(merged) == 10


def test_mobilenet_v3_blocks_merge_exactly_and_refusals_are_named():
    model = create_model("mobilenet_v3_small", act=None, num_classes=10, small_input=True).eval()
    # anneal the expand activations (1x1 then depthwise 3x3), the depthwise ones of blocks 2-3 (no SE:
    # depthwise 3x3 then the 1x1 projection) and the classifier's (Linear then Linear)
    anneal_activations(model, include=r"^features\.[23]\.block\.[01]\.2$|^classifier")
    _to_identity(model)
    x = torch.randn(2, 3, 32, 32)
    res, merged, report = verify_merge(model, x, when="always")
    assert res.ok(1e-5), res
    forms = sorted(m.form for m in report.merged)
    assert forms == ["1x1 after 3x3 depthwise", "1x1 after 3x3 depthwise", "linear after linear"]
    refused = {r.first: r for r in report.refused}
    r = refused["features.2.block.0.0"]  # the expand 1x1 (16 -> 72) before the padded depthwise 3x3
    assert r.kind == "inexact" and r.second == "features.2.block.1.0"
    assert "bias does not pass through the second's zero padding" in r.reason and "16 -> 72" in r.reason
    assert isinstance(merged.classifier[0], nn.Linear) and merged.classifier[0].out_features == 10
    # the default merges only what saves multiply-adds: the dense 3x3 that replaces depthwise + 1x1 costs more
    _, cheap = merge_linear(model, x)
    assert [m.form for m in cheap.merged] == ["linear after linear"]
    costlier = [r for r in cheap.refused if r.kind == "costlier"]
    assert len(costlier) == 2 and "multiply-adds per output position" in costlier[0].reason


def _reduce_then_3x3(bias: bool = True):
    return nn.Sequential(nn.Conv2d(12, 8, 1, bias=bias), nn.BatchNorm2d(8) if bias else nn.Identity(),
                         repact.anneal(nn.ReLU(), 1.0), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8),
                         nn.ReLU())


def test_kxk_after_1x1_carries_the_bias_through_the_padded_border_exactly():
    model = _reduce_then_3x3().eval()
    x = torch.randn(2, 12, 7, 9)
    res, merged, report = verify_merge(model, x)
    assert res.ok(1e-5), res
    assert isinstance(merged[0], PaddedConv2d) and merged[0].padding == (1, 1) and merged[0].groups == 1
    assert report.merged[0].form == "3x3 after 1x1 (padded border)"
    with torch.no_grad():
        wrong = copy.deepcopy(merged)
        wrong[0].pad_value.zero_()  # padded with zeros instead, the border is off
        assert (wrong(x) - model(x)).abs().max() > 1e-3 * model(x).abs().max()
    # no bias before the 3x3 (no BatchNorm to fold either): plain zero padding is exact
    plain, rep = merge_linear(_reduce_then_3x3(bias=False).eval(), x, when="always")
    assert type(plain[0]) is nn.Conv2d and plain[0].padding == (1, 1)


@pytest.mark.parametrize("groups", [1, 2])
def test_padded_conv_pads_each_channel_with_its_value(groups):
    conv = PaddedConv2d(4, 6, 3, stride=2, padding=(2, 1), dilation=(1, 2), groups=groups)
    with torch.no_grad():
        conv.pad_value.copy_(torch.tensor([0.5, -2.0, 3.0, 1.5]))
    x = torch.randn(2, 4, 7, 8)
    ring = torch.nn.functional.pad(torch.zeros_like(x), [1, 1, 2, 2], value=1.0)
    padded = torch.nn.functional.pad(x, [1, 1, 2, 2]) + ring * conv.pad_value.reshape(1, -1, 1, 1)
    ref = torch.nn.functional.conv2d(padded, conv.weight, conv.bias, stride=2, dilation=(1, 2), groups=groups)
    with torch.no_grad():
        assert (conv(x) - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_a_structure_record_rebuilds_the_merged_model():
    model = _to_identity(create_model("vanillanet_mini", act="repact", num_classes=4, small_input=True)).eval()
    repact.randomize_batchnorm_(model)
    padded = _reduce_then_3x3().eval()
    x = torch.randn(2, 3, 16, 16)
    for m, inp in ((model, x), (padded, torch.randn(2, 12, 5, 5))):
        merged, report = merge_linear(m, inp)
        fresh = repact.reparameterize(copy.deepcopy(m))
        for mod in fresh.modules():  # other weights: only the architecture comes from the record
            for p in mod.parameters(recurse=False):
                p.data.normal_()
        apply_structure(fresh, report.structure)
        fresh.load_state_dict(merged.state_dict())
        with torch.no_grad():
            assert torch.equal(fresh.eval()(inp), merged(inp))
    with pytest.raises(ValueError, match="names 'nope.1', which the model does not have"):
        apply_structure(copy.deepcopy(model), {"nope.1": {"module": "Identity"}})
    with pytest.raises(ValueError, match="names module 'Conv3d'"):
        apply_structure(copy.deepcopy(model), {"stem.1": {"module": "Conv3d"}})


def test_affine_deploy_activations_fold_and_shared_layers_stay():
    lin = RepAct(variant="origin")
    with torch.no_grad():
        lin.branch_weight.copy_(torch.tensor([0.7, 0.0, 0.0, 0.0]))  # 0.7 x: linear everywhere
    shared = nn.Conv2d(4, 4, 1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), lin, nn.Conv2d(4, 4, 1), RepAct(), nn.Conv2d(4, 4, 1),
                          repact.anneal(nn.ReLU(), 1.0), shared, nn.ReLU(), shared).eval()
    x = torch.randn(2, 3, 6, 6)
    merged, report = merge_linear(model, x)
    assert [(m.first, m.second) for m in report.merged] == [("0", "2")]
    assert isinstance(merged[1], nn.Identity) and isinstance(merged[3], PiecewiseQuadratic)
    assert merged[6] is merged[8] and torch.equal(merged[6].weight, shared.weight)  # used twice: never changed
    assert [(r.first, r.second) for r in report.refused] == [("4", "6")]
    assert "used at several places" in report.refused[0].reason


def test_a_wrong_merge_is_caught_and_bad_arguments_refused():
    class NotItsSequential(nn.Module):
        """Calls its Sequential's modules one by one, with a scaling between: not what the Sequential computes."""

        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))

        def forward(self, x):
            return self.seq[2](self.seq[1](self.seq[0](x)) * 2)

    model = repact.randomize_batchnorm_(NotItsSequential()).eval()
    with pytest.raises(MergeError, match="the merged model differs from the model: .*above rtol=1e-05"):
        merge_linear(model, torch.randn(2, 3, 4, 4))
    with pytest.raises(MergeError, match="when must be one of cheaper, always, got 'never'"):
        merge_linear(model, torch.randn(2, 3, 4, 4), when="never")


def test_merge_candidates_are_the_activations_linear_on_their_measured_range():
    model = nn.Sequential(nn.Conv2d(2, 3, 1), RepAct(), nn.Conv2d(3, 3, 1), RepAct(), nn.Conv2d(3, 1, 1)).eval()
    repact.randomize_activations_(model, seed=0)
    with torch.no_grad():
        model[0].weight.fill_(0.1)
        model[0].bias.fill_(5.0)  # the first RepAct sees inputs above 3 only: its table is a line there
    batches = [torch.rand(4, 2, 5, 5) for _ in range(3)]
    found = {c.path: c for c in linear_candidates(model, batches)}
    assert found["1"].linear and found["1"].low > 3 and found["1"].pieces == 1
    w = model[1].branch_weights()[0].detach()
    slope = float(w.sum())  # above 3 each branch (identity, relu, prelu, hardswish) is x
    assert found["1"].slope == pytest.approx([slope], rel=1e-5)
    assert not found["3"].linear and found["3"].pieces > 1
    _, report = merge_linear(model, batches[0], calibration=batches)
    assert [c.path for c in report.candidates if c.linear] == ["1"]
    assert any("merge candidate: 1 (PiecewiseQuadratic)" in line for line in report.lines())


def test_linear_chains_fold_only_what_acts_on_their_features():
    mlp = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), repact.anneal(nn.GELU(), 1.0), nn.Dropout(0.1),
                        nn.Linear(16, 4)).eval()
    repact.randomize_batchnorm_(mlp)
    res, merged, report = verify_merge(mlp, torch.randn(5, 8))  # (N, features): the BatchNorm folds
    assert res.ok(1e-5) and [m.form for m in report.merged] == ["linear after linear"]
    assert isinstance(merged[0], nn.Linear) and (merged[0].in_features, merged[0].out_features) == (8, 4)
    tokens = torch.randn(2, 16, 8)  # (N, L, features) with L == features: BatchNorm1d would normalize L
    merged, report = merge_linear(mlp, tokens)
    assert isinstance(merged[1], nn.BatchNorm1d) and report.merged == [] and report.verify["max_rel"] <= 1e-5
    lin = PiecewiseQuadratic([0.0], torch.tensor([[[0.1, 2.0, 0.0], [0.1, 2.0, 0.0]]]).repeat(16, 1, 1),
                             channels_last=True)  # 2x + 0.1 per feature, on the last dim
    vit = nn.Sequential(nn.Linear(8, 16), lin, nn.Linear(16, 8)).eval()
    res, merged, report = verify_merge(vit, tokens)
    assert res.ok(1e-5) and [m.form for m in report.merged] == ["linear after linear"]
