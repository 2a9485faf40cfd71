"""Exact re-parameterization: deploy form vs the literal branch sum, whole models, verify, the deploy module."""

import copy
import io
import itertools
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import repact
from repact import PiecewiseQuadratic, RepAct
from repact.models import create_model
from repact.reparam import NonFiniteError, branch_reference, check_finite, dense_grid

VARIANTS = ["origin", "softmax", "bn"]
GRANULARITIES = ["layer", "channel"]


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def _dense_input(rank, channels, channels_last):
    """Every channel sees the whole dense grid (which holds -3, 0, 3 exactly and their neighbours)."""
    grid = dense_grid()  # (n,)
    n = grid.numel()
    if rank == 2:
        return grid.unsqueeze(1).expand(n, channels).contiguous()
    if rank == 3:
        x = grid.reshape(1, 1, n).expand(2, channels, n)
        return x.transpose(1, 2).contiguous() if channels_last else x.contiguous()
    x = grid[: (n // 100) * 100].reshape(1, 1, 100, -1).expand(2, channels, 100, n // 100)
    return x.permute(0, 2, 3, 1).contiguous() if channels_last else x.contiguous()


@pytest.mark.parametrize("variant,granularity,channels_last", list(itertools.product(VARIANTS, GRANULARITIES, [False, True])))
@pytest.mark.parametrize("rank", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deploy_form_equals_branch_sum(variant, granularity, channels_last, rank, seed):
    c = 3
    m = RepAct(c if granularity == "channel" else None, variant=variant, granularity=granularity, channels_last=channels_last)
    repact.randomize_activations_(m, seed=seed)
    repact.randomize_batchnorm_(m, seed=seed + 10)
    m.eval()
    x = _dense_input(rank, c, channels_last)
    deployed = repact.reparameterize(m, inplace=False)
    assert isinstance(deployed, PiecewiseQuadratic)
    ref = m.forward_branches(x)
    assert _rel(deployed(x), ref) <= 1e-5
    for k in (-3.0, 0.0, 3.0):  # the official fused code was wrong exactly here
        at = x == k
        assert at.any()
        torch.testing.assert_close(deployed(x)[at], ref[at], rtol=1e-6, atol=1e-6)


weights = st.lists(st.floats(-4, 4, allow_nan=False), min_size=4, max_size=4)


@settings(max_examples=40, deadline=None)
@given(weights, st.floats(-2, 2), st.floats(-2, 2), st.floats(0.05, 4), st.floats(-3, 3), st.floats(-2, 2),
       st.sampled_from(VARIANTS))
def test_property_exact_for_any_parameters(w, slope, mean, var, gamma, beta, variant):
    m = RepAct(variant=variant).eval()
    with torch.no_grad():
        m.branch_weight.copy_(torch.tensor(w))
        m.prelu_weight.fill_(slope)
        if variant == "bn":
            m.bn.running_mean.fill_(mean)
            m.bn.running_var.fill_(var)
            m.bn.weight.fill_(gamma)
            m.bn.bias.fill_(beta)
    x = dense_grid()
    ref = m.forward_branches(x)
    got = repact.reparameterize(m, inplace=False)(x)
    scale = float(ref.detach().abs().max())
    assert float((got - ref).detach().abs().max()) <= 1e-5 * max(scale, 1e-3)


@pytest.mark.parametrize("act,kw", [("repact", {}), ("repact_softmax", {}), ("repact_bn", {}),
                                    ("repact_bn", {"granularity": "channel"}), ("repact", {"granularity": "channel"})])
def test_whole_model_deploys_exactly(act, kw):
    model = create_model("small_cnn", act=lambda channels=None: repact.create_act(act, channels=channels, **kw), num_classes=10)
    repact.randomize_batchnorm_(model, seed=4)
    repact.randomize_activations_(model, seed=4)
    model.eval()
    x = torch.randn(8, 1, 8, 8) * 2
    reference = branch_reference(model)
    deployed = repact.reparameterize(model, inplace=False)
    assert not any(isinstance(m, RepAct) for m in deployed.modules())
    assert sum(isinstance(m, PiecewiseQuadratic) for m in deployed.modules()) == 3
    result = repact.verify(reference, deployed, x)
    assert result.max_rel <= 1e-5, str(result)
    assert result.ok(1e-5)


def test_verify_reparameterization_randomizes_bn_first():
    model = create_model("small_cnn", act="repact_bn", num_classes=10)
    before = model.features[1].running_var.clone()
    result, deployed = repact.verify_reparameterization(model, torch.randn(4, 1, 8, 8))
    assert not torch.equal(before, model.features[1].running_var)
    assert result.max_rel <= 1e-5
    assert isinstance(deployed.features[2], PiecewiseQuadratic)
    assert isinstance(model.features[2], RepAct)  # the model itself keeps its training form


def test_verify_reparameterization_against_the_literal_branch_sum():
    """reference="branches" catches a wrong table that the fused eval forward shares with the deploy form."""
    model = create_model("small_cnn", act="repact_bn", num_classes=10)
    repact.randomize_activations_(model, seed=1)
    x = torch.randn(4, 1, 8, 8)
    for reference in ("module", "branches"):
        res, _ = repact.verify_reparameterization(copy.deepcopy(model), x, reference=reference)
        assert res.ok(1e-5), (reference, str(res))
    broken = copy.deepcopy(model)
    for m in broken.modules():
        if isinstance(m, RepAct):
            m._basis.add_(0.05)  # as if fuse.linear_basis were wrong: eval forward and deploy form agree
    res_module, _ = repact.verify_reparameterization(copy.deepcopy(broken), x, reference="module")
    res_branches, _ = repact.verify_reparameterization(copy.deepcopy(broken), x, reference="branches")
    assert res_module.ok(1e-5) and res_module.max_abs == 0.0
    assert not res_branches.ok(1e-5) and res_branches.max_rel > 1e-3
    with pytest.raises(ValueError, match="reference must be one of module, branches"):
        repact.verify_reparameterization(model, x, reference="branch")
    with pytest.raises(ValueError, match="has no RepAct"):
        repact.verify_reparameterization(create_model("small_cnn", act="acon_c"), x, reference="branches")
    act = RepAct(variant="softmax")  # a lone activation is its own branch reference
    res, deployed = repact.verify_reparameterization(act, reference="branches")
    assert res.ok(1e-5) and isinstance(deployed, PiecewiseQuadratic)


def test_non_finite_weights_and_outputs_never_pass():
    model = create_model("small_cnn", act="repact", num_classes=10).eval()
    check_finite(model)  # finite: no error
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.features[2].branch_weight[1] = float("nan")
        bad.classifier.bias[0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"parameter features\.2\.branch_weight holds 1 NaN/inf value\(s\) of 4 "
                                            r"\(and 1 more tensor"):
        check_finite(bad)
    bn_bad = copy.deepcopy(model)
    bn_bad.features[1].running_var.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=r"buffer features\.1\.running_var"):
        check_finite(bn_bad)
    # NaN at the same places in both outputs used to be skipped (and an all-NaN pair was "OK")
    x = torch.randn(2, 1, 8, 8)
    res = repact.verify(bad, repact.reparameterize(bad, inplace=False), x)
    assert not res.ok(1e-5) and "reference output 0 holds" in res.nonfinite and "NOT FINITE" in str(res)
    res = repact.verify(model, repact.reparameterize(model, inplace=False), x)
    assert res.ok(1e-5) and res.nonfinite == ""


def test_verify_detects_a_wrong_candidate_and_restores_modes():
    a = RepAct()
    b = RepAct()
    with torch.no_grad():
        b.branch_weight[3] += 0.01
    a.train()
    b.train()
    r = repact.verify(a, b)
    assert r.max_abs > 1e-3 and not r.ok(1e-5)
    assert a.training and b.training
    assert r.numel == dense_grid().numel()


def test_verify_errors_are_clear():
    with pytest.raises(ValueError, match="needs inputs="):
        repact.verify(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="output shapes differ"):
        repact.verify(nn.Linear(2, 2), nn.Linear(2, 3), torch.randn(1, 2))


def test_reparameterize_in_place_shared_and_copy_semantics():
    shared = RepAct()
    model = nn.Sequential(nn.Linear(4, 4), shared, nn.Linear(4, 4), shared)
    copy_ = repact.reparameterize(model, inplace=False)
    assert isinstance(model[1], RepAct)
    assert isinstance(copy_[1], PiecewiseQuadratic) and copy_[1] is copy_[3]
    model.train()
    same = repact.reparameterize(model)
    assert same is model and isinstance(model[1], PiecewiseQuadratic) and model[1].training
    assert repact.reparameterize(nn.Linear(2, 2)).__class__ is nn.Linear


def test_unbuilt_lazy_activation_cannot_deploy():
    with pytest.raises(repact.NotDeployableError, match="run one forward pass"):
        repact.reparameterize(RepAct(granularity="channel"))


# --- the deploy module ------------------------------------------------------------------------------


def _deployed(channels=3, seed=0):
    m = RepAct(channels, variant="bn", granularity="channel")
    repact.randomize_activations_(m, seed=seed)
    repact.randomize_batchnorm_(m, seed=seed)
    return m.eval(), repact.reparameterize(m, inplace=False)


def test_table_lives_in_buffers():
    _, d = _deployed()
    sd = d.state_dict()
    assert set(sd) == {"knots", "coeffs"}
    assert sd["coeffs"].shape == (3, 4, 3)
    d64 = copy.deepcopy(d).to(torch.float64)
    assert d64.coeffs.dtype == torch.float64 and d64.knots.dtype == torch.float64
    # a placeholder deploy module takes its table (and shape) from a state dict
    fresh = PiecewiseQuadratic([0.0], torch.zeros(1, 2, 3))
    fresh.load_state_dict(sd)
    x = torch.randn(4, 3, 5)
    torch.testing.assert_close(fresh(x), d(x))
    assert fresh.channels == 3


def test_deploy_module_validates_its_table():
    with pytest.raises(ValueError, match="shape \\(Cc, 3, 3\\)"):
        PiecewiseQuadratic([0.0, 1.0], torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="strictly increasing"):
        PiecewiseQuadratic([1.0, 0.0], torch.zeros(1, 3, 3))
    _, d = _deployed()
    with pytest.raises(ValueError, match="built for 3 channels"):
        d(torch.randn(2, 4))


def test_torchscript_script_and_trace():
    m, d = _deployed()
    x = torch.randn(2, 3, 6, 6) * 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks fold to constants
        scripted = torch.jit.script(d)
        traced = torch.jit.trace(d, x)
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
        buf.seek(0)
        loaded = torch.jit.load(buf)
    ref = m.forward_branches(x)
    for mod in (scripted, traced, loaded):
        assert _rel(mod(x), ref) <= 1e-5
    x2 = torch.randn(5, 3, 2, 2)
    torch.testing.assert_close(traced(x2), d(x2))  # trace is not specialised to the example's shape


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    m, d = _deployed()
    x = torch.randn(2, 3, 8, 8) * 4
    path = tmp_path / "act.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(d, (x,), str(path), opset_version=17, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    onnx.checker.check_model(onnx.load(str(path)))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        xb = torch.randn(batch, 3, 8, 8) * 4
        xb[0, 0, 0, :3] = torch.tensor([-3.0, 0.0, 3.0])
        (out,) = sess.run(None, {"x": xb.numpy()})
        assert _rel(torch.from_numpy(out), m.forward_branches(xb)) <= 1e-5


def test_deploy_module_built_under_inference_mode():
    _, d = _deployed()
    with torch.inference_mode():
        fresh = PiecewiseQuadratic(d.knots, d.coeffs)
        y = fresh(torch.randn(2, 3, 4))
    assert y.shape == (2, 3, 4)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(fresh(x), d(x))


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_compiled_deploy_module_uses_the_hardswish_form_exactly(granularity):
    m, d = _deployed() if granularity == "channel" else (None, None)
    if d is None:
        m = RepAct(variant="bn")
        repact.randomize_activations_(m, seed=3)
        repact.randomize_batchnorm_(m, seed=3)
        m.eval()
        d = repact.reparameterize(m, inplace=False)
    assert d.hardswish_form
    x = torch.randn(2, 3, 8, 8) * 4
    x[0, 0, 0, :3] = torch.tensor([-3.0, 0.0, 3.0])
    compiled = torch.compile(d, dynamic=False)
    assert _rel(compiled(x), m.forward_branches(x)) <= 1e-5
    other = PiecewiseQuadratic([-1.0, 2.0], torch.randn(1, 3, 3))
    assert not other.hardswish_form


@pytest.mark.skipif(not repact.ops.native_available(), reason="native kernels unavailable (no C compiler)")
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eager_deploy_runs_the_basis_kernel_and_matches_the_table(granularity, dtype):
    from repact.fuse import _basis_table

    gen = torch.Generator().manual_seed(7)
    cc = 3 if granularity == "channel" else 1
    row = [torch.randn(cc, generator=gen, dtype=torch.float64) for _ in range(4)]
    d = PiecewiseQuadratic([-3.0, 0.0, 3.0], _basis_table(*row).to(dtype))
    assert d.hardswish_form
    x = torch.cat([_dense_input(4, 3, False), torch.full((1, 3, 100, 200), float("inf"))]).to(dtype)
    x[-1, :, 0] = float("-inf")
    with torch.no_grad():
        y = d(x)
        assert torch.is_tensor(d._table_cache[1]) and d._table_cache[1].shape == (4, cc)
        with repact.ops.backend("torch"):
            ref = d(x)
    tol = 1e-14 if dtype == torch.float64 else 1e-6
    assert torch.equal(torch.isinf(y), torch.isinf(ref)) and torch.equal(y[torch.isinf(y)], ref[torch.isinf(ref)])
    fin = torch.isfinite(ref)
    assert _rel(y[fin], ref[fin]) <= tol
    # a table edited out of the basis runs the table kernel (the cache notices the edit), and so
    # does a float32 table evaluated in float64 (in the basis only to float32's precision)
    with torch.no_grad():
        d.coeffs[:, 0, 2] = 0.5
        y2 = d(x[:1])
        assert not torch.is_tensor(d._table_cache[1])
        with repact.ops.backend("torch"):
            assert _rel(y2, d(x[:1])) <= tol
        m = RepAct(3, variant="bn", granularity=granularity)
        repact.randomize_activations_(m, seed=5)
        wide = repact.reparameterize(m.eval(), inplace=False).to(torch.float64)
        wide(x[:1].double())
        assert not torch.is_tensor(wide._table_cache[1])
