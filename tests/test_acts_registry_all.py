"""Every registered activation: builds lazily and with channels, runs forward and backward on 2-D and
4-D input, accepts ``inplace``, round-trips its state dict and has a FLOP count."""

import pytest
import torch
from torch import nn

import repact
from repact.activations import Activation
from repact.activations.flops import activation_flops
from repact.registry import get_act_spec

NAMES = repact.list_acts()
C = 6
SHAPES = [(4, C), (2, C, 5, 4)]
FAMILIES = {"classic", "acon", "frelu", "adaptive", "rational", "repact", "stochastic"}


def test_the_zoo_is_registered():
    expected = {
        "identity", "relu", "relu6", "leaky_relu", "prelu", "elu", "selu", "celu", "gelu", "silu", "swish",
        "mish", "softplus", "hardswish", "hardsigmoid", "tanh", "sigmoid", "elliott", "lisht", "abrelu",
        "acon_a", "acon_b", "acon_c", "acon_c_layer", "meta_acon", "frelu", "acon_frelu",
        "arelu", "dyrelu_a", "pdelu", "srs", "pau", "stochastic", "stochastic_element",
    }
    assert expected <= set(NAMES)
    for name in NAMES:
        assert get_act_spec(name).family in FAMILIES, name


def _perturb_(m):
    """Move every parameter and BN statistic off its init so a round trip has something to carry."""
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
                mod.running_mean.uniform_(-0.3, 0.3)
                mod.running_var.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [None, C])
@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "4d"])
def test_forward_backward_finite(name, channels, shape):
    m = repact.create_act(name, channels=channels).train()
    x = torch.randn(shape, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname}"


@pytest.mark.parametrize("name", NAMES)
def test_inplace_is_accepted(name):
    ref = repact.create_act(name, channels=C).eval()
    m = repact.create_act(name, channels=C, inplace=True).eval()
    m.load_state_dict(ref.state_dict())
    x = torch.randn(2, C, 3, 3)
    with torch.no_grad():
        expect = ref(x.clone())
        xin = x.clone()
        y = m(xin)
    assert torch.allclose(y, expect, atol=1e-6)
    if isinstance(m, Activation):  # only torch's own modules may write into their input
        assert torch.equal(xin, x)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_into_a_lazy_instance(name):
    x = torch.randn(3, C, 4, 4)
    m = repact.create_act(name)
    m(x)  # build lazily
    _perturb_(m).eval()
    with torch.no_grad():
        y = m(x)
    fresh = repact.create_act(name)
    fresh.load_state_dict(m.state_dict())
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh(x), y, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_every_name_has_a_flop_count(name):
    m = repact.create_act(name, channels=C)
    shape = (2, C, 5, 4)
    f = activation_flops(m, shape)
    assert isinstance(f, int)
    if name == "identity":
        assert f == 0
    else:
        assert f >= 2 * C * 5 * 4 // 2  # at least about one op per output element


@pytest.mark.parametrize("name", NAMES)
def test_aliases_build_the_same_thing(name):
    spec = get_act_spec(name)
    base = type(repact.create_act(name, channels=C))
    for alias in spec.aliases:
        assert type(repact.create_act(alias, channels=C)) is base, alias


@pytest.mark.parametrize(
    "bad,hint", [("acon_cc", "acon_c"), ("hardswsh", "hardswish"), ("frelu2", "frelu"), ("pdelo", "pdelu")]
)
def test_unknown_names_suggest_close_matches(bad, hint):
    with pytest.raises(ValueError, match=rf"unknown activation '{bad}'\. Did you mean: .*\b{hint}\b"):
        repact.create_act(bad)


@pytest.mark.parametrize("name", NAMES)
def test_channelwise_flag_matches_the_default_build(name):
    """``channelwise`` in the registry means: per-channel state by default (so channels matter)."""
    m = repact.create_act(name)
    assert get_act_spec(name).channelwise == bool(getattr(m, "needs_channels", False))


INT_DTYPES = [torch.int64, torch.int32, torch.uint8, torch.bool]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", INT_DTYPES, ids=str)
def test_integer_input_raises_or_is_exact(name, dtype):
    """repact's activations refuse non-float input, naming the dtype (as F.hardswish refuses it);
    torch's own modules registered by name either raise too or compute the float function exactly."""
    x = torch.tensor([-5, -3, -1, 0, 1, 3, 5]).reshape(1, 7, 1, 1).repeat(2, 1, 2, 2).to(dtype)
    m = repact.create_act(name, channels=7).eval()
    if isinstance(m, Activation):
        with pytest.raises(TypeError, match=rf"{type(m).__name__} takes a floating-point input.*{dtype}"):
            m(x)
        if getattr(m, "deployable", False):  # the deploy form refuses too, or (a torch module) is exact
            deployed = repact.reparameterize(m, inplace=False)
            try:
                y = deployed(x)
            except (TypeError, RuntimeError):
                return
            assert not isinstance(deployed, Activation) and torch.equal(y.float(), deployed(x.float())), name
        return
    try:
        with torch.no_grad():
            y = m(x)
    except (RuntimeError, TypeError):  # NotImplementedError is a RuntimeError
        return
    with torch.no_grad():
        expect = m(x.float())
    assert torch.equal(y.float(), expect), f"{name} on {dtype} is neither refused nor exact"


def test_integer_input_error_is_the_one_hardswish_would_give_a_user():
    with pytest.raises(RuntimeError):
        torch.nn.functional.hardswish(torch.arange(4))
    with pytest.raises(TypeError, match="RepAct takes a floating-point input.*torch.int64.*x.float"):
        repact.create_act("repact")(torch.arange(4))
