"""AReLU, DyReLU-A, PDELU and SRS: formulas, inits, guards and shapes."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import repact
from repact.activations.adaptive import PDELU, SRS, AReLU, DyReLUA

floats = st.floats(-60, 60, allow_nan=False, allow_subnormal=False, width=32)


# --- AReLU ----------------------------------------------------------------------------------------------
def test_arelu_init_and_formula():
    m = repact.create_act("arelu", channels=4)
    assert m.alpha.shape == m.beta.shape == (1,)
    assert m.alpha.item() == pytest.approx(0.9) and m.beta.item() == 2.0
    x = torch.randn(2, 4, 3, 3)
    up = 1 + 1 / (1 + math.exp(-2.0))
    expect = torch.clamp(x, min=0) * up - torch.clamp(-x, min=0) * 0.9
    assert torch.allclose(m(x), expect, atol=1e-6)


def test_arelu_alpha_is_clamped():
    x = torch.tensor([-2.0, -1.0, 1.0])
    m = AReLU(alpha=5.0)
    assert torch.allclose(m(x)[:2], torch.tensor([-2.0, -1.0]) * 0.99)
    m = AReLU(alpha=-1.0)
    assert torch.allclose(m(x)[:2], torch.tensor([-2.0, -1.0]) * 0.01)


@settings(max_examples=50, deadline=None)
@given(st.lists(floats, min_size=1, max_size=16), st.floats(-5, 5), st.floats(-5, 5))
def test_arelu_keeps_the_sign(values, alpha, beta):
    x = torch.tensor(values)
    y = AReLU(alpha=alpha, beta=beta)(x)
    assert torch.equal(torch.sign(y), torch.sign(x))


def test_arelu_channelwise_option():
    m = AReLU(granularity="channel")
    m(torch.randn(2, 3, 4))
    assert m.alpha.shape == (3,) and torch.allclose(m.alpha, torch.full((3,), 0.9))


# --- DyReLU-A -------------------------------------------------------------------------------------------
def dyrelu_ref(x, m, mean):
    theta = m.fc2(torch.relu(m.fc1(mean)))
    theta = 2 * torch.sigmoid(theta) - 1
    k = m.k
    a = [theta[:, j] * 1.0 + (1.0 if j == 0 else 0.0) for j in range(k)]
    b = [theta[:, k + j] * 0.5 for j in range(k)]
    view = [-1] + [1] * (x.dim() - 1)
    pieces = [a[j].view(view) * x + b[j].view(view) for j in range(k)]
    out = pieces[0]
    for p in pieces[1:]:
        out = torch.maximum(out, p)
    return out


def test_dyrelu_structure():
    m = repact.create_act("dyrelu_a")
    assert m.needs_channels and not list(m.parameters())
    m(torch.randn(2, 16, 3, 3))
    assert m.fc1.weight.shape == (4, 16) and m.fc2.weight.shape == (4, 4)
    assert DyReLUA(2).fc1.weight.shape == (1, 2)  # hidden width at least 1
    assert DyReLUA(8, k=3).fc2.weight.shape == (6, 2)


def test_dyrelu_initial_function_is_close_to_relu_shape():
    # coefficients are init + lambda * theta with theta in (-1, 1): a_1 in (0, 2), a_2 in (-1, 1), |b| < 0.5
    m = DyReLUA(8)
    coefs = m.coefficients(torch.randn(5, 8, 4, 4))
    assert coefs.shape == (5, 4)
    assert torch.all((coefs[:, 0] > 0) & (coefs[:, 0] < 2)) and torch.all(coefs[:, 1].abs() < 1)
    assert torch.all(coefs[:, 2:].abs() < 0.5)


@pytest.mark.parametrize("shape", [(3, 8), (3, 8, 5), (3, 8, 4, 5)])
def test_dyrelu_formula(shape):
    m = DyReLUA(8)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.7)
    x = torch.randn(shape)
    mean = x if x.dim() == 2 else x.mean(dim=tuple(range(2, x.dim())))
    with torch.no_grad():
        assert torch.allclose(m(x), dyrelu_ref(x, m, mean), atol=1e-6)
        tok = DyReLUA(channels_last=True)
        tok.load_state_dict(m.state_dict())
        xt = x.movedim(1, -1)
        assert torch.allclose(tok(xt), m(x).movedim(1, -1), atol=1e-6)


def test_dyrelu_gradcheck_and_bad_args():
    m = DyReLUA(4).double()
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))
    with pytest.raises(ValueError, match="k .* got 0"):
        DyReLUA(k=0)
    with pytest.raises(ValueError, match="reduction must be a positive integer, got -2"):
        DyReLUA(reduction=-2)


# --- PDELU ----------------------------------------------------------------------------------------------
def test_pdelu_init_and_formula():
    m = repact.create_act("pdelu")
    assert m.alpha.shape == (1,) and m.alpha.item() == 1.0 and m.t == 0.9
    with torch.no_grad():
        m.alpha.fill_(0.7)
    x = torch.linspace(-9.9, 5, 301)
    expect = torch.where(x > 0, x, 0.7 * ((1 + 0.1 * x) ** 10 - 1))
    assert torch.allclose(m(x), expect, atol=1e-6)


def test_pdelu_guard_below_the_base_root():
    m = PDELU(alpha=1.3)
    x = torch.tensor([-10.0, -20.0, -1e4], requires_grad=True)
    y = m(x)
    assert torch.allclose(y, torch.full((3,), -1.3))  # the base is clamped at 0: y = -alpha
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


@settings(max_examples=50, deadline=None)
@given(st.lists(floats, min_size=2, max_size=16))
def test_pdelu_is_monotone_and_bounded_below(values):
    x = torch.tensor(sorted(values))
    y = PDELU()(x)
    assert torch.all(y[1:] >= y[:-1])
    assert torch.all(y >= -1.0 - 1e-6)


def test_pdelu_other_t_and_validation():
    m = PDELU(t=1.5)  # deformation the other way: base grows, exponent negative
    x = torch.tensor([-3.0, -0.5])
    assert torch.allclose(m(x), (1 - 0.5 * x) ** (1 / -0.5) - 1, atol=1e-6)
    for t in (1.0, 0.0, -2.0, float("inf")):
        with pytest.raises(ValueError, match="t must be a positive number other than 1"):
            PDELU(t=t)


# --- SRS ------------------------------------------------------------------------------------------------
def test_srs_init_and_formula():
    m = repact.create_act("srs")
    assert m.alpha.item() == 5.0 and m.beta.item() == 3.0
    x = torch.linspace(-6, 30, 401, dtype=torch.float64)
    m = m.double()
    expect = x / (x / 5.0 + torch.exp(-x / 3.0))
    assert torch.allclose(m(x), expect, atol=1e-10)


def test_srs_is_stable_far_out_and_has_slope_one_at_zero():
    m = SRS().double()
    x = torch.tensor([-1e4, -800.0, 0.0, 800.0, 1e4], dtype=torch.float64, requires_grad=True)
    y = m(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert abs(y[0].item()) < 1e-100 and y[-1].item() == pytest.approx(5.0, rel=1e-3)  # bounded by alpha
    assert x.grad[2].item() == pytest.approx(1.0)  # d/dx x / (x/alpha + e^(-x/beta)) at 0


def test_srs_pole_region_is_clamped():
    m = SRS(alpha=1.0, beta=5.0)  # beta / alpha > e: the exact denominator crosses 0
    x = torch.linspace(-50, 50, 2001, requires_grad=True)
    y = m(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


def test_srs_channelwise_and_gradcheck():
    m = SRS(granularity="channel").double()
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    m(x)
    assert m.alpha.shape == (3,) and m.beta.shape == (3,)
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize("cls", [AReLU, DyReLUA, PDELU, SRS])
def test_input_untouched_with_inplace(cls):
    x = torch.randn(2, 4, 3, 3)
    before = x.clone()
    cls(inplace=True)(x)
    assert torch.equal(x, before)


def test_pdelu_slope_at_zero_is_alpha():
    m = PDELU(alpha=0.6)
    x = torch.zeros(1, requires_grad=True)
    m(x).sum().backward()
    assert x.grad.item() == pytest.approx(0.6)  # the left derivative alpha (1 - t) / (1 - t)
