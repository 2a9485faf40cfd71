"""PAU: the safe rational form, its least-squares initialisation and construction cost."""

import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import repact
from repact.activations.rational import PAU, fit_rational, rational_safe


def safe_rational_ref(x, a, b):
    p = sum(a[i] * x**i for i in range(len(a)))
    q = sum(b[j - 1] * x**j for j in range(1, len(b) + 1))
    return p / (1 + abs(q))


def test_pau_parameters_are_layerwise():
    m = repact.create_act("pau", channels=64)
    assert isinstance(m, PAU)
    assert m.numerator.shape == (6,) and m.denominator.shape == (4,)
    assert sum(p.numel() for p in m.parameters()) == 10


def test_pau_starts_close_to_leaky_relu():
    m = PAU()
    x = torch.linspace(-3, 3, 6001)
    err = (m(x) - F.leaky_relu(x, 0.01)).abs()
    # a (5, 4) rational cannot follow the kink exactly; 0.05 is rational_activations' own tolerance
    assert err.max().item() < 0.05
    assert err.mean().item() < 0.01


def test_pau_forward_matches_the_written_out_form():
    m = PAU()
    with torch.no_grad():
        m.numerator.normal_()
        m.denominator.normal_()
    x = torch.randn(2, 3, 4, 5)
    a, b = m.numerator.detach().tolist(), m.denominator.detach().tolist()
    assert torch.allclose(m(x), safe_rational_ref(x, a, b), rtol=1e-5, atol=1e-5)


def test_fit_recovers_an_exact_safe_rational():
    # (1 + 2x - 0.5x^2) / (1 + |0.3x + 0.5x^2|) is in the family for x >= 0 where the inner
    # polynomial is positive; fit on [0, 3] with degrees (2, 2)
    target = lambda x: (1 + 2 * x - 0.5 * x**2) / (1 + (0.3 * x + 0.5 * x**2).abs())  # noqa: E731
    a, b = fit_rational(target, degrees=(2, 2), lo=0.0, hi=3.0)
    assert a.dtype == b.dtype == torch.float64
    assert torch.allclose(a, torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(b, torch.tensor([0.3, 0.5], dtype=torch.float64), atol=1e-6)


def test_fit_smooth_functions_closely():
    x = torch.linspace(-3, 3, 2001, dtype=torch.float64)
    a, b = fit_rational(torch.tanh)
    assert (rational_safe(x, a, b) - torch.tanh(x)).abs().max().item() < 1e-3
    a, b = fit_rational(F.gelu, degrees=(5, 4))
    assert (rational_safe(x, a, b) - F.gelu(x)).abs().max().item() < 1e-2


def test_construction_is_cached():
    PAU()  # the first one may fit
    t = time.perf_counter()
    for _ in range(5):
        PAU()
    assert (time.perf_counter() - t) / 5 < 0.05
    m1, m2 = PAU(), PAU()
    assert torch.equal(m1.numerator, m2.numerator)
    with torch.no_grad():
        m1.numerator.add_(1.0)  # instances own their coefficients
    assert not torch.equal(m1.numerator, m2.numerator)
    assert not torch.equal(PAU().numerator, m1.numerator)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-2, 2), min_size=6, max_size=6),
    st.lists(st.floats(-2, 2), min_size=4, max_size=4),
    st.lists(st.floats(-10, 10), min_size=1, max_size=8),
)
def test_safe_form_never_amplifies_the_numerator(a, b, xs):
    x = torch.tensor(xs, dtype=torch.float64)
    at, bt = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    y = rational_safe(x, at, bt)
    p = rational_safe(x, at, torch.zeros(0, dtype=torch.float64))
    assert torch.isfinite(y).all()
    assert torch.all(y.abs() <= p.abs() + 1e-9)


def test_gradients_reach_both_coefficient_sets():
    m = PAU().double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))
    m(x).square().sum().backward()
    assert m.numerator.grad.abs().sum() > 0 and m.denominator.grad.abs().sum() > 0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="degrees must be a pair of integers"):
        PAU(degrees=5)
    with pytest.raises(ValueError, match="non-negative"):
        PAU(degrees=(5, -1))
    with pytest.raises(ValueError, match="unknown PAU approx 'swishy'"):
        PAU(approx="swishy")
    with pytest.raises(ValueError, match="lo < hi"):
        fit_rational(torch.tanh, lo=1.0, hi=1.0)


def test_other_initial_functions():
    x = torch.linspace(-3, 3, 601)
    m = PAU(approx="tanh")
    assert (m(x) - torch.tanh(x)).abs().max().item() < 1e-3
    assert m.flops((10,)) == 10 * 20
