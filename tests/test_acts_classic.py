"""Classic activations: torch modules by name, PReLU, learnable Swish, Elliott, LiSHT, ABReLU."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import repact
from repact.activations.classic import ABReLU, Elliott, LiSHT, PReLU, Swish

BUILTINS = {
    "identity": nn.Identity, "linear": nn.Identity, "none": nn.Identity,
    "relu": nn.ReLU, "relu6": nn.ReLU6,
    "leaky_relu": nn.LeakyReLU, "lrelu": nn.LeakyReLU,
    "elu": nn.ELU, "selu": nn.SELU, "celu": nn.CELU, "gelu": nn.GELU, "gelu_tanh": nn.GELU,
    "silu": nn.SiLU, "mish": nn.Mish, "softplus": nn.Softplus,
    "hardswish": nn.Hardswish, "hard_swish": nn.Hardswish, "hswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid, "hard_sigmoid": nn.Hardsigmoid,
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
}

finite = st.floats(-50, 50, allow_nan=False, allow_subnormal=False, width=32)


@pytest.mark.parametrize("name,cls", sorted(BUILTINS.items()))
def test_fixed_functions_are_torch_modules(name, cls):
    m = repact.create_act(name, channels=8)
    assert type(m) is cls


def test_builtin_options_pass_through():
    assert repact.create_act("relu", inplace=True).inplace is True
    assert repact.create_act("leaky_relu").negative_slope == 0.01
    assert repact.create_act("gelu_tanh").approximate == "tanh"
    assert repact.create_act("gelu").approximate == "none"
    assert isinstance(repact.create_act("tanh", inplace=True), nn.Tanh)  # inplace dropped


def test_swish_is_learnable_and_not_silu():
    m = repact.create_act("swish")
    assert isinstance(m, Swish) and not isinstance(m, nn.SiLU)
    assert [p.shape for p in m.parameters()] == [torch.Size([1])]
    assert m.beta.item() == 0.25
    x = torch.linspace(-6, 6, 101)
    assert torch.allclose(m(x), x * torch.sigmoid(0.25 * x), atol=1e-6)
    assert not torch.allclose(m(x), F.silu(x), atol=1e-2)
    m(x).sum().backward()
    assert m.beta.grad is not None and m.beta.grad.abs().item() > 0


def test_swish_channelwise_is_lazy_and_per_channel():
    m = Swish(granularity="channel")
    assert m.needs_channels and not list(m.parameters())
    x = torch.randn(2, 3, 4, 5)
    m(x)
    assert m.beta.shape == (3,) and torch.all(m.beta == 0.25)
    with torch.no_grad():
        m.beta.copy_(torch.tensor([0.5, -1.0, 2.0]))
    b = torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1)
    assert torch.allclose(m(x), x * torch.sigmoid(b * x), atol=1e-6)


def test_swish_gradcheck_float64():
    for gran in ("layer", "channel"):
        m = Swish(4, granularity=gran).double()
        with torch.no_grad():
            m.beta.uniform_(-2, 2)
        x = torch.randn(3, 4, 2, 2, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(m, (x,))
        # beta's gradient against d/dbeta [x sigmoid(beta x)] = x^2 s (1 - s), written out
        (gb,) = torch.autograd.grad(m(x).sum(), m.beta)
        b = m.beta.detach().view(1, -1, 1, 1) if gran == "channel" else m.beta.detach()
        s = torch.sigmoid(b * x.detach())
        expect = x.detach() ** 2 * s * (1 - s)
        expect = expect.sum(dim=(0, 2, 3)) if gran == "channel" else expect.sum().reshape(1)
        assert torch.allclose(gb, expect)


def test_prelu_layerwise_default():
    m = repact.create_act("prelu", channels=16)
    assert isinstance(m, PReLU) and m.weight.shape == (1,) and m.weight.item() == 0.25
    x = torch.randn(2, 16, 3, 3)
    assert torch.equal(m(x), torch.where(x >= 0, x, 0.25 * x))


def test_prelu_channelwise_lazy_and_token_layout():
    m = repact.create_act("prelu", granularity="channel", channels_last=True)
    x = torch.randn(2, 7, 5)  # (N, L, C) tokens
    y = m(x)
    assert m.weight.shape == (5,) and m.channels == 5
    with torch.no_grad():
        m.weight.copy_(torch.arange(5.0) / 10)
    y = m(x)
    a = (torch.arange(5.0) / 10).view(1, 1, 5)
    assert torch.allclose(y, torch.where(x >= 0, x, a * x))
    m2 = PReLU(5, granularity="channel")
    with torch.no_grad():
        m2.weight.copy_(torch.arange(5.0) / 10)
    assert torch.allclose(m2(x.transpose(1, 2)).transpose(1, 2), y)
    with pytest.raises(ValueError, match="built for 5 channels but got 4"):
        m(torch.randn(2, 7, 4))


def test_elliott_lisht_values():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 4.0])
    assert torch.allclose(Elliott()(x), torch.tensor([0.125, 0.25, 0.5, 0.75, 0.9]))
    t = [math.tanh(v) for v in x.tolist()]
    assert torch.allclose(LiSHT()(x), torch.tensor([v * tv for v, tv in zip(x.tolist(), t)]))


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=16))
def test_elliott_in_unit_interval_and_lisht_even(values):
    x = torch.tensor(values)
    e = Elliott()(x)
    assert torch.all((e >= 0) & (e <= 1))
    assert torch.allclose(e + Elliott()(-x), torch.ones_like(x), atol=1e-6)  # point symmetric about (0, 0.5)
    assert torch.allclose(LiSHT()(x), LiSHT()(-x))
    assert torch.all(LiSHT()(x) >= 0)


def test_abrelu_per_sample_per_channel_mean():
    x = torch.randn(3, 4, 5, 6)
    y = ABReLU()(x)
    for n in range(3):
        for c in range(4):
            m = x[n, c].sum() / 30
            assert torch.allclose(y[n, c], torch.clamp(x[n, c] - m, min=0), atol=1e-6)
    # a sample's output does not depend on the rest of the batch
    assert torch.allclose(ABReLU()(x[1:2]), y[1:2])


def test_abrelu_layouts():
    x = torch.randn(2, 5, 7)  # (N, C, L)
    y = ABReLU()(x)
    assert torch.allclose(y, F.relu(x - x.mean(dim=2, keepdim=True)))
    y_tok = ABReLU(channels_last=True)(x.transpose(1, 2))
    assert torch.allclose(y_tok.transpose(1, 2), y, atol=1e-6)
    v = torch.randn(4, 6)  # (N, C): no spatial dims, each sample's feature vector
    assert torch.allclose(ABReLU()(v), F.relu(v - v.mean(dim=1, keepdim=True)))


@pytest.mark.parametrize("cls", [PReLU, Swish, Elliott, LiSHT, ABReLU])
def test_inplace_flag_never_touches_the_input(cls):
    x = torch.randn(2, 3, 4, 4)
    before = x.clone()
    cls(inplace=True)(x)
    assert torch.equal(x, before)


def test_bad_granularity_is_named():
    with pytest.raises(ValueError, match="unknown granularity 'pixel'.*'layer', 'channel'"):
        PReLU(granularity="pixel")
    with pytest.raises(ValueError, match="positive integer"):
        Swish(0, granularity="channel")


def test_flops_of_classic_modules():
    from repact.activations.flops import activation_flops

    shape = (2, 3, 4, 5)
    n = 2 * 3 * 4 * 5
    assert activation_flops(nn.ReLU(), shape) == n
    assert activation_flops(nn.Hardswish(), shape) == 5 * n
    assert activation_flops(nn.SiLU(), shape) == 2 * n
    assert activation_flops(nn.GELU(approximate="tanh"), shape) > activation_flops(nn.GELU(), shape)
    assert activation_flops(Swish(), shape) == 3 * n
    assert activation_flops(nn.Linear(3, 3), shape) is None

    class MyReLU(nn.ReLU):
        pass

    assert activation_flops(MyReLU(), shape) is None  # a subclass may compute more: unknown
    with pytest.raises(ValueError, match="non-negative"):
        activation_flops(nn.ReLU(), (2, -1))
