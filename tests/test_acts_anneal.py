"""repact.anneal: (1 - lam) act(x) + lam x, its deploy forms, and wrapping a model's activations."""

import pytest
import torch
from torch import nn

import repact
from repact import Annealed, PiecewiseQuadratic, RepAct
from repact.activations.anneal import anneal_activations, annealed_modules, piece_table_of
from repact.models import create_model
from repact.reparam import dense_grid


def _rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("make", [nn.ReLU, nn.GELU, nn.Hardswish, lambda: RepAct(variant="bn")])
@pytest.mark.parametrize("lam", [0.0, 0.25, 0.7, 1.0])
def test_forward_is_the_blend(make, lam):
    act = make()
    repact.randomize_activations_(act, seed=3)
    a = repact.anneal(act, lam).eval()
    x = torch.randn(4, 6) * 4
    with torch.no_grad():
        want = (1 - lam) * act.eval()(x).double() + lam * x.double()
        got = a(x)
    assert _rel(got, want) <= 1e-6
    if lam == 0.0:
        assert torch.equal(got, act(x))  # exactly the activation: annealing has not started
    if lam == 1.0:
        assert torch.equal(got, x)  # exactly the identity


def test_gradients_reach_the_wrapped_activation():
    a = repact.anneal(RepAct(), 0.4)
    x = torch.randn(8, requires_grad=True)
    a(x).sum().backward()
    assert a.act.branch_weight.grad is not None and x.grad is not None
    assert "lam" in dict(a.named_buffers(recurse=False))  # a buffer, no parameter: the optimizer never moves it
    assert list(a.parameters()) == list(a.act.parameters())


def test_lam_one_reparameterizes_to_nothing():
    for act in (nn.GELU(), RepAct(), nn.SiLU()):
        a = repact.anneal(act, 1.0)
        assert isinstance(repact.reparameterize(a, inplace=False), nn.Identity)
    model = nn.Sequential(nn.Linear(3, 4), repact.anneal(nn.GELU(), 1.0), nn.Linear(4, 2))
    deployed = repact.reparameterize(model, inplace=False)
    assert isinstance(deployed[1], nn.Identity)


@pytest.mark.parametrize("make", [nn.ReLU, nn.Hardswish, nn.ReLU6, lambda: nn.LeakyReLU(0.2), nn.Hardtanh,
                                  nn.Hardsigmoid, lambda: RepAct(), lambda: RepAct(4, variant="bn",
                                                                                      granularity="channel")])
def test_piecewise_activation_deploys_exactly_at_any_lam(make):
    act = make()
    repact.randomize_activations_(act, seed=1)
    repact.randomize_batchnorm_(act, seed=2)
    a = repact.anneal(act, 0.35)
    res, deployed = repact.verify_reparameterization(a, randomize_bn=False)
    assert isinstance(deployed, PiecewiseQuadratic)
    assert res.ok(1e-6), res
    # the grid holds every knot: the check covers the corners of the blended table
    knots = piece_table_of(act)[0]
    assert set(knots.tolist()) <= set(dense_grid(knots.tolist()).tolist())


def test_lam_zero_deploys_as_the_activation_and_others_refuse_clearly():
    assert isinstance(repact.reparameterize(repact.anneal(nn.GELU(), 0.0), inplace=False), nn.GELU)
    assert isinstance(repact.reparameterize(repact.anneal(RepAct(), 0.0), inplace=False), PiecewiseQuadratic)
    a = repact.anneal(nn.GELU(), 0.5)
    assert not a.deployable
    model = nn.Sequential(nn.Linear(2, 2), a)
    assert repact.reparameterize(model, inplace=False)[1] is not a  # a copy: GELU at 0.5 stays annealed
    assert isinstance(repact.reparameterize(model, inplace=False)[1], Annealed)
    with pytest.raises(repact.NotDeployableError, match="GELU annealed at lam=0.5 has no exact single-branch form"):
        a.to_deploy()


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"lam must lie in \[0, 1\], got 1.5"):
        repact.anneal(nn.ReLU(), 1.5)
    with pytest.raises(ValueError, match="annealed already"):
        repact.anneal(repact.anneal(nn.ReLU()))
    with pytest.raises(ValueError, match="unknown activation 'reluu'"):
        repact.anneal("reluu")
    with pytest.raises(TypeError, match="activation module or name"):
        repact.anneal(3)
    assert isinstance(repact.anneal("hardswish").act, nn.Hardswish)


def test_lam_is_saved_and_loaded_with_the_weights():
    a = repact.anneal(RepAct(), 0.6)
    b = repact.anneal(RepAct())
    b.load_state_dict(a.state_dict())
    assert b.lam_value == pytest.approx(0.6) and torch.equal(b.act.branch_weight, a.act.branch_weight)


def test_flops_follow_lam():
    a = repact.anneal(nn.ReLU(), 0.0)
    assert a.flops((2, 10)) == 20  # ReLU alone
    a.set_lam(0.5)
    assert a.flops((2, 10)) == 20 + 60  # ReLU plus the blend
    assert a.flops((2, 10), deploy=True) == PiecewiseQuadratic(*piece_table_of(a)).flops((2, 10))
    a.set_lam(1.0)
    assert a.flops((2, 10)) == 0 and a.flops((2, 10), deploy=True) == 0


def test_anneal_activations_wraps_by_path_once_per_module():
    model = create_model("mobilenet_v3_small", act="repact", num_classes=5, small_input=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model.eval()(x)
    paths = anneal_activations(model, include=r"^classifier")
    assert paths == ["classifier.1"]  # the Hardswish between the two Linear layers
    wrapped = anneal_activations(model, include=r"block\.1\.2$")  # the depthwise activations of blocks 2-11
    assert len(wrapped) == 10 and all(isinstance(model.get_submodule(p), Annealed) for p in wrapped)
    with torch.no_grad():
        assert torch.equal(model(x), before)  # at lam 0 nothing changes
    assert len(annealed_modules(model)) == 11
    shared = nn.ReLU()
    seq = nn.Sequential(nn.Linear(2, 2), shared, nn.Linear(2, 2), shared)
    anneal_activations(seq)
    assert seq[1] is seq[3] and isinstance(seq[1], Annealed)  # one wrapper for the shared module


def test_anneal_activations_errors_name_what_exists():
    model = create_model("small_cnn", act="relu", num_classes=3)
    with pytest.raises(ValueError, match=r"no activation module matching 'nothing'.*features\.2"):
        anneal_activations(model, include="nothing")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        anneal_activations(model, include="(")
