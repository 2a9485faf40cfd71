"""Export forms per runtime (``repact deploy --target``): every form is exact against the PyTorch
deploy model, and each target writes the graph it is meant to (issue 25, point 1)."""

import itertools

import onnx
import pytest
import torch
import torch.nn.functional as F

import repact
from repact import PiecewiseQuadratic, RepAct
from repact.deploy import (TARGETS, ConvFusedBasis, basis_coefficients, export_onnx, form_for_target,
                           last_export_forms, onnx_parity, prepare_for_export)
from repact.deploy.onnx_forms import ClampAbsBasis
from repact.deploy.runtime_forms import conv_fused_parts
from repact.models import create_model
from repact.reparam import dense_grid

#: the export form each target must write on MobileNetV3-Small with layer-wise RepAct tables
EXPECTED = {"generic": "hardswish_basis", "onnxruntime": "conv_fused", "openvino": "clamp_abs",
            "tensorrt": "plain_basis", "executorch": "plain_basis"}


def _deployed(name="mobilenet_v3_small", act="repact", seed=0, **act_kwargs):
    """A reparameterized model with random weights, BatchNorm statistics and activation parameters."""
    if act_kwargs:
        act = (lambda channels=None, _a=act: repact.create_act(_a, channels=channels, **act_kwargs))
    model = create_model(name, act=act, num_classes=10).eval()
    repact.randomize_batchnorm_(model, seed)
    repact.randomize_activations_(model, seed)
    return repact.reparameterize(model, inplace=False).eval()


def _grid_nchw(channels):
    g = dense_grid(lo=-8, hi=8, steps=4001)  # every knot and its float neighbours
    g = g[: (g.numel() // 10) * 10]
    return g.reshape(1, 1, 10, -1).expand(2, channels, 10, g.numel() // 10).contiguous()


def _table(A, B, D, E=0.3):
    """A layer-wise deploy activation with f(x) = E + A x + B relu(x) + D hardswish(x), as its table."""
    segments = [[E, A, 0.0], [E, A + D / 2, D / 6], [E, A + B + D / 2, D / 6], [E, A + B + D, 0.0]]
    pq = PiecewiseQuadratic([-3.0, 0.0, 3.0], torch.tensor([segments]))
    x = torch.linspace(-6, 6, 1201)
    assert torch.allclose(pq(x), E + A * x + B * F.relu(x) + D * F.hardswish(x), atol=1e-5)
    return pq


# --------------------------------------------------------------------------------------------------
# the onnxruntime form, module by module
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("A,B,D", [(0.2, 0.7, 1.1), (-0.3, 0.1, 0.8), (0.5, -0.9, -1.4), (0.0, 0.0, 1.0),
                                   (1.0, -1.5, 0.9), (-0.4, 0.4, 0.0), (-1.0, 2.5, -0.3)])
def test_conv_fused_parts_rebuild_the_function(A, B, D):
    s, k, alpha = conv_fused_parts(A, B, D)
    assert s in (1.0, -1.0)
    x = torch.linspace(-9, 9, 3601, dtype=torch.float64)
    want = A * x + B * F.relu(x) + D * F.hardswish(x)
    got = D * F.hardswish(s * x) + F.leaky_relu(k * x, alpha)
    assert float((got - want).abs().max()) <= 1e-12 * max(1.0, float(want.abs().max()))


def test_conv_fused_parts_refuse_a_peak_on_both_sides():
    # slopes (left, right) of the piecewise-linear part: (A, A+B) with s=1, (A+D, A+B+D) with s=-1;
    # LeakyRelu of k x reaches any pair but a peak (rising, then falling or flat), so this table has no form
    assert conv_fused_parts(0.5, -1.0, 0.1) is None  # (0.5, -0.5) and (0.6, -0.4)
    assert conv_fused_parts(0.4, -0.4, 0.0) is None  # (0.4, 0): rising, then flat
    assert conv_fused_parts(0.5, -1.0, -1.0)[0] == -1.0  # a peak with s=1, (-0.5, -1.5) with s=-1


@pytest.mark.parametrize("variant,seed", list(itertools.product(["origin", "softmax", "bn"], [0, 1, 2])))
def test_repact_tables_are_exact_in_the_conv_fused_form(variant, seed):
    act = RepAct(6, variant=variant)
    repact.randomize_activations_(act, seed=seed, scale=1.0)
    pq = act.eval().to_deploy()
    coef = basis_coefficients(pq.knots, pq.coeffs)
    module = ConvFusedBasis.build(coef, 6)
    x = _grid_nchw(6)
    ref = pq(x)
    if module is None:  # only a peak on both sides of the sign flip has no form
        A, B, D = (float(t) for t in (coef.A, coef.B, coef.D))
        assert conv_fused_parts(A, B, D) is None
        return
    with torch.no_grad():
        assert float((module(x) - ref).abs().max()) <= 2e-6 * float(ref.abs().max())


def test_conv_fused_form_needs_a_layer_wise_table():
    act = RepAct(6, granularity="channel")
    repact.randomize_activations_(act, scale=1.0)
    coef = basis_coefficients(act.eval().to_deploy().knots, act.to_deploy().coeffs)
    assert ConvFusedBasis.build(coef, 6) is None


def test_a_table_without_the_form_keeps_the_generic_one():
    pq = _table(0.5, -1.0, 0.1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), pq, torch.nn.Conv2d(4, 2, 1)).eval()
    x = torch.randn(2, 3, 9, 9)
    m, summary = prepare_for_export(model, x, "conv")
    assert summary.counts() == {"hardswish_basis": 1}
    with torch.no_grad():
        assert float((m(x) - model(x)).abs().max()) <= 1e-5 * float(model(x).abs().max())


# --------------------------------------------------------------------------------------------------
# the OpenVINO form: (R |x| + E) + x (Q clamp(x, -3, 3) + P), module by module
# --------------------------------------------------------------------------------------------------


def _dense_nchw(channels):
    g = dense_grid(lo=-8, hi=8, steps=4001)  # every knot and its float neighbours
    assert {-3.0, 0.0, 3.0} <= set(g.tolist())
    return g.reshape(1, 1, 1, -1).expand(2, channels, 1, g.numel()).contiguous()


@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("variant,seed", list(itertools.product(["origin", "softmax", "bn"], [0, 1, 2])))
def test_repact_tables_are_exact_in_the_clamp_form(variant, seed, granularity):
    act = RepAct(6, variant=variant, granularity=granularity)
    repact.randomize_activations_(act, seed=seed, scale=1.0)
    pq = act.eval().to_deploy()
    coef = basis_coefficients(pq.knots, pq.coeffs)
    assert coef is not None and coef.A.numel() == (6 if granularity == "channel" else 1)
    x = _dense_nchw(6)
    with torch.no_grad():
        ref, got = pq(x), ClampAbsBasis(coef, 1, 4)(x)
    assert float((got - ref).abs().max()) <= 2e-6 * float(ref.abs().max())
    knots = (x == -3) | (x == 0) | (x == 3)  # the breakpoints themselves, to the same bound
    assert float((got - ref)[knots].abs().max()) <= 2e-6 * float(ref.abs().max())


@pytest.mark.parametrize("seed", range(4))
def test_random_tables_are_exact_in_the_clamp_form_on_any_channel_axis(seed):
    # per-channel tables with coefficients of mixed signs and sizes (B and D up to 10x A), channels last
    g = torch.Generator().manual_seed(seed)
    A, B, D, E = (torch.randn(5, generator=g, dtype=torch.float64) * s for s in (0.3, 3.0, 3.0, 1.0))
    segments = torch.stack([torch.stack([E, A, 0 * A], -1), torch.stack([E, A + D / 2, D / 6], -1),
                            torch.stack([E, A + B + D / 2, D / 6], -1), torch.stack([E, A + B + D, 0 * A], -1)], 1)
    pq = PiecewiseQuadratic([-3.0, 0.0, 3.0], segments.float(), channels_last=True)
    coef = basis_coefficients(pq.knots, pq.coeffs)
    x = _dense_nchw(5).permute(0, 2, 3, 1).contiguous()  # (N, H, W, C)
    with torch.no_grad():
        ref, got = pq(x), ClampAbsBasis(coef, 3, 4)(x)
    want = (E + A * x.double() + B * F.relu(x.double()) + D * F.hardswish(x.double()))
    assert float((ref.double() - want).abs().max()) <= 2e-6 * float(want.abs().max())  # the table is that function
    assert float((got - ref).abs().max()) <= 2e-6 * float(ref.abs().max())


def test_clamp_form_keeps_its_constants_per_channel_and_broadcasts_a_layer_wise_one():
    pq = _table(0.2, 0.7, 1.1)
    m = ClampAbsBasis(basis_coefficients(pq.knots, pq.coeffs), 1, 4)
    assert m.P.shape == (1, 1, 1, 1)
    assert [float(t) for t in (m.P, m.Q, m.R, m.E)] == pytest.approx([0.2 + 0.35 + 0.55, 1.1 / 6, 0.35, 0.3])
    act = RepAct(4, granularity="channel")
    repact.randomize_activations_(act, scale=1.0)
    pq = act.eval().to_deploy()
    m = ClampAbsBasis(basis_coefficients(pq.knots, pq.coeffs), 1, 4)
    assert m.P.shape == (1, 4, 1, 1) and m.R.shape == (1, 4, 1, 1)


# --------------------------------------------------------------------------------------------------
# every target on a whole model: the form it writes, exact in onnxruntime
# --------------------------------------------------------------------------------------------------


def test_targets_and_their_forms():
    assert set(TARGETS) == set(EXPECTED)
    assert [form_for_target(t) for t in ("generic", "onnxruntime", "openvino", "tensorrt", "executorch")] == \
        ["auto", "conv", "clamp", "basis", "basis"]
    with pytest.raises(ValueError, match="target must be one of generic, onnxruntime, openvino, tensorrt, executorch, "
                                         "got 'tflite'"):
        form_for_target("tflite")


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_form_matches_pytorch_in_onnxruntime(tmp_path, target):
    dep = _deployed()
    x = torch.randn(2, 3, 32, 32)
    path = export_onnx(dep, x, tmp_path / f"{target}.onnx", form=form_for_target(target))
    assert last_export_forms().counts() == {EXPECTED[target]: 23}
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Where" not in ops
    if target == "onnxruntime":
        assert {"LeakyRelu", "HardSwish"} <= ops and "BatchNormalization" not in ops
    with torch.no_grad():
        scale = float(dep(x).abs().max())
    assert onnx_parity(dep, path, [x, torch.randn(1, 3, 32, 32), torch.randn(5, 3, 32, 32)]) <= 1e-4 * scale


def test_conv_form_on_per_channel_tables_falls_back_exactly(tmp_path):
    dep = _deployed("resnet18", act="repact", granularity="channel")
    x = torch.randn(2, 3, 32, 32)
    path = export_onnx(dep, x, tmp_path / "r.onnx", form="conv")
    assert last_export_forms().counts() == {"hardswish_basis": sum(isinstance(m, PiecewiseQuadratic)
                                                                  for m in dep.modules())}
    with torch.no_grad():
        scale = float(dep(x).abs().max())
    assert onnx_parity(dep, path, [x, torch.randn(3, 3, 32, 32)]) <= 1e-4 * scale


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_clamp_form_of_a_whole_model_matches_pytorch_in_onnxruntime(tmp_path, granularity):
    dep = _deployed("resnet18", act="repact", granularity=granularity)
    x = torch.randn(2, 3, 32, 32)
    path = export_onnx(dep, x, tmp_path / "r.onnx", form="clamp")
    sites = sum(isinstance(m, PiecewiseQuadratic) for m in dep.modules())
    assert last_export_forms().counts() == {"clamp_abs": sites}
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Clip") == ops.count("Abs") == sites  # one Clip and one Abs per site, nothing else nonlinear
    assert not set(ops) & {"Where", "HardSwish", "HardSigmoid", "BatchNormalization"}
    with torch.no_grad():
        scale = float(dep(x).abs().max())
    assert onnx_parity(dep, path, [x, torch.randn(3, 3, 32, 32)]) <= 1e-4 * scale
