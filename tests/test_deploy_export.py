"""ONNX export of deploy models: checker, opset, dynamic batch, onnxruntime parity, the HardSwish-basis form."""

import itertools

import onnx
import pytest
import torch
from torch import nn

import repact
from repact import PiecewiseQuadratic, RepAct
from repact.deploy import (
    HardSwishBasis,
    PlainBasis,
    basis_coefficients,
    export_onnx,
    last_export_forms,
    onnx_parity,
    ort_session,
    prepare_for_export,
)
from repact.deploy.onnx_export import max_opset
from repact.models import create_model
from repact.reparam import dense_grid


def _deployed(name="mobilenet_v3_small", act="repact", seed=0):
    model = create_model(name, act=act, num_classes=10).eval()
    repact.randomize_batchnorm_(model, seed)
    repact.randomize_activations_(model, seed)
    return repact.reparameterize(model, inplace=False).eval()


def _pq(variant, granularity="layer", channels=6, seed=0, branches=None):
    kw = {"branches": branches} if branches else {}
    act = RepAct(channels, variant=variant, granularity=granularity, **kw)
    repact.randomize_activations_(act, seed=seed, scale=1.0)
    if variant == "bn":
        with torch.no_grad():
            act.bn.running_mean.uniform_(-1, 1)
            act.bn.running_var.uniform_(0.5, 2)
            act.bn.weight.uniform_(-2, 2)
            act.bn.bias.uniform_(-1, 1)
    return act.eval().to_deploy()


def _grid_nchw(channels):
    g = dense_grid(lo=-8, hi=8, steps=4001)
    g = g[: (g.numel() // 10) * 10]
    return g.reshape(1, 1, 10, -1).expand(2, channels, 10, g.numel() // 10).contiguous()


# --------------------------------------------------------------------------------------------------
# the basis form
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant,granularity,seed", list(itertools.product(["origin", "softmax", "bn"],
                                                                             ["layer", "channel"], [0, 1, 2])))
def test_repact_tables_are_exactly_in_the_hardswish_basis(variant, granularity, seed):
    pq = _pq(variant, granularity, seed=seed)
    coef = basis_coefficients(pq.knots, pq.coeffs)
    assert coef is not None and coef.max_error <= 1e-6 * float(pq.coeffs.abs().max())
    x = _grid_nchw(6)  # every knot and its float neighbours, in every channel
    ref = pq(x)
    scale = float(ref.abs().max())
    with torch.no_grad():
        for module in (HardSwishBasis(coef, 6).eval(), PlainBasis(coef, 1, 4)):
            assert float((module(x) - ref).abs().max()) <= 2e-6 * scale


def test_tables_outside_the_span_are_refused():
    knots = torch.tensor([-3.0, 0.0, 3.0])
    assert basis_coefficients(knots, torch.randn(1, 4, 3)) is None  # a quadratic left of -3
    assert basis_coefficients(torch.tensor([-1.0, 1.0]), torch.zeros(1, 3, 3)) is None  # other knots
    # relu/prelu/identity tables live on knot 0 only: in the span with D = 0
    pq = _pq("origin", branches=("identity", "relu", "prelu"))
    coef = basis_coefficients(pq.knots, pq.coeffs)
    assert coef is not None and float(coef.D.abs().max()) == 0.0
    module = HardSwishBasis(coef, 6).eval()
    assert not module.quadratic
    x = _grid_nchw(6)
    with torch.no_grad():
        assert torch.allclose(module(x), pq(x), atol=1e-5)


def test_prepare_for_export_picks_forms_and_keeps_the_model():
    dep = _deployed()
    x = torch.randn(2, 3, 32, 32)
    m, summary = prepare_for_export(dep, x, "auto")
    assert summary.counts() == {"hardswish_basis": 23}
    assert sum(isinstance(t, PiecewiseQuadratic) for t in dep.modules()) == 23  # the original is untouched
    with torch.no_grad():
        assert float((m(x) - dep(x)).abs().max()) <= 1e-5 * float(dep(x).abs().max())
    assert prepare_for_export(dep, x, "where")[1].counts() == {"where": 23}
    assert prepare_for_export(dep, x, "basis")[1].counts() == {"plain_basis": 23}
    with pytest.raises(ValueError, match="onnx form must be one of auto, conv, basis, clamp, where"):
        prepare_for_export(dep, x, "fast")


# --------------------------------------------------------------------------------------------------
# export, checker, onnxruntime
# --------------------------------------------------------------------------------------------------


def test_export_mobilenet_v3_onnx_checker_dynamic_batch_and_parity(tmp_path):
    dep = _deployed()
    x = torch.randn(2, 3, 32, 32)
    path = export_onnx(dep, x, tmp_path / "m.onnx")
    assert path == tmp_path / "m.onnx" and path.is_file()
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "batch"
    ops = {n.op_type for n in proto.graph.node}
    assert "Where" not in ops and "GreaterOrEqual" not in ops and "HardSigmoid" in ops
    assert last_export_forms().counts() == {"hardswish_basis": 23}
    parity = onnx_parity(dep, path, [x, torch.randn(1, 3, 32, 32), torch.randn(5, 3, 32, 32)])
    with torch.no_grad():
        assert parity <= 1e-4 * max(1.0, float(dep(x).abs().max()))


@pytest.mark.parametrize("name,act,form", [("resnet18", "repact_softmax", "auto"), ("shufflenet_v2_x0_5", "repact", "where"),
                                           ("tfnet_0_5", "repact_bn", "basis")])
def test_export_other_models_and_forms(tmp_path, name, act, form):
    dep = _deployed(name, act)
    x = torch.randn(2, 3, 32, 32)
    path = export_onnx(dep, x, tmp_path / f"{name}.onnx", form=form, opset=18)
    assert [o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")] == [18]
    with torch.no_grad():
        scale = max(1.0, float(dep(x).abs().max()))
    assert onnx_parity(dep, path, [x, torch.randn(3, 3, 32, 32)]) <= 1e-4 * scale


def test_token_inputs_and_static_batch(tmp_path):
    act = RepAct(8, granularity="channel", channels_last=True)
    repact.randomize_activations_(act, scale=1.0)
    model = nn.Sequential(nn.Linear(5, 8), act, nn.Linear(8, 3)).eval()
    dep = repact.reparameterize(model, inplace=False)
    x = torch.randn(2, 7, 5)
    path = export_onnx(dep, x, tmp_path / "tok.onnx", dynamic_batch=False)
    assert last_export_forms().counts() == {"plain_basis": 1}
    assert onnx_parity(dep, path, x) <= 1e-5
    sess = ort_session(path)
    with pytest.raises(Exception):
        sess.run(None, {"input": torch.randn(3, 7, 5).numpy()})  # the batch is fixed


def test_dynamo_exporter(tmp_path):
    model = create_model("small_cnn", act="repact", num_classes=4, in_channels=3, width=8).eval()
    repact.randomize_activations_(model)
    dep = repact.reparameterize(model, inplace=False)
    x = torch.randn(2, 3, 16, 16)
    path = export_onnx(dep, x, tmp_path / "d.onnx", exporter="dynamo", opset=18)
    assert onnx_parity(dep, path, [x, torch.randn(4, 3, 16, 16)]) <= 1e-5


def test_export_errors_leave_existing_files_intact(tmp_path):
    dep = _deployed()
    x = torch.randn(1, 3, 32, 32)
    target = tmp_path / "keep.onnx"
    target.write_bytes(b"previous file")
    with pytest.raises(ValueError, match="opset 13 is not accepted: 14 to"):
        export_onnx(dep, x, target, opset=13)
    with pytest.raises(ValueError, match=f"opset 99 is not accepted: 14 to {max_opset()}"):
        export_onnx(dep, x, target, opset=99)
    with pytest.raises(ValueError, match="exporter must be one of"):
        export_onnx(dep, x, target, exporter="tf")
    with pytest.raises(IsADirectoryError):
        export_onnx(dep, x, tmp_path)

    class Broken(nn.Module):
        def forward(self, t):
            return t.numpy()  # cannot be traced

    with pytest.raises(Exception):
        export_onnx(Broken(), x, target)
    assert target.read_bytes() == b"previous file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.onnx"]  # no temporary left behind


def test_onnx_parity_detects_a_different_model(tmp_path):
    dep = _deployed()
    x = torch.randn(2, 3, 32, 32)
    path = export_onnx(dep, x, tmp_path / "m.onnx")
    other = _deployed(seed=5)
    assert onnx_parity(other, path, x) > 1e-3
    with pytest.raises(ValueError, match="inputs must be"):
        onnx_parity(dep, path, "not a tensor")
