"""Stochastic activations: which activation runs in training (per forward, per element) and at eval, the
random stream under a seed, lazy and learnable members, and refused settings."""

import pytest
import torch
import torch.nn.functional as F

import repact
from repact.activations.stochastic import Stochastic, set_stochastic


def test_eval_and_fixed_training_use_the_inference_activation():
    x = torch.randn(3, 4, 5, 5)
    for inference, fn in (("second", F.relu), ("first", F.silu)):
        m = Stochastic(inference=inference).eval()
        state = torch.get_rng_state()
        assert torch.equal(m(x), fn(x))
        m.train()
        m.fixed = True
        assert torch.equal(m(x), fn(x))
        assert torch.equal(torch.get_rng_state(), state)  # nothing drawn


def test_per_forward_choice_follows_p_and_the_seed():
    x = torch.randn(2, 3, 4, 4)
    m = Stochastic(p=0.3).train()
    torch.manual_seed(5)
    picks = []
    for _ in range(2000):
        y = m(x)
        first = torch.equal(y, F.silu(x))
        assert first or torch.equal(y, F.relu(x))
        picks.append(first)
    share = sum(picks) / len(picks)
    assert abs(share - 0.3) < 4 * (0.3 * 0.7 / 2000) ** 0.5
    assert m.counts == [sum(picks), 2000 - sum(picks)]
    torch.manual_seed(5)
    again = [torch.equal(m(x), F.silu(x)) for _ in range(2000)]
    assert again == picks


def test_per_element_choice_follows_p_and_the_seed():
    m = repact.create_act("stochastic_element").train()
    m.p = 0.8
    x = torch.randn(64, 8, 16, 16)
    torch.manual_seed(1)
    y = m(x)
    a, b = F.silu(x), F.relu(x)
    from_first = (y == a) & (a != b)
    assert ((y == a) | (y == b)).all()
    share = from_first.sum() / (a != b).sum()
    assert abs(float(share) - 0.8) < 0.01
    torch.manual_seed(1)
    assert torch.equal(m(x), y)


def test_a_coin_is_drawn_whatever_p_is():
    x = torch.randn(2, 3)
    states = []
    for p in (0.0, 0.5, 1.0):
        torch.manual_seed(0)
        Stochastic(p=p).train()(x)
        states.append(torch.get_rng_state())
    assert all(torch.equal(states[0], s) for s in states[1:])
    torch.manual_seed(0)
    assert torch.equal(Stochastic(p=1.0).train()(x), F.silu(x))


def test_lazy_members_are_built_by_the_first_forward_even_in_eval():
    m = Stochastic(first="acon_c", second="prelu").eval()
    with torch.no_grad():
        m(torch.randn(2, 6, 3, 3))
    assert m.first.p1.shape == (6,)
    names = {n for n, _ in m.named_parameters()}
    assert {"first.p1", "first.p2", "first.beta", "second.weight"} <= names


def test_the_member_not_drawn_gets_zero_gradients():
    m = Stochastic(first="repact", second="relu", p=0.0).train()  # always ReLU
    x = torch.randn(4, 3, requires_grad=True)
    m(x).sum().backward()
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in m.first.parameters())
    assert torch.equal(x.grad, (x > 0).float())


def test_set_stochastic_reaches_every_module():
    model = torch.nn.Sequential(Stochastic(), torch.nn.Linear(3, 3), Stochastic(mode="element"))
    assert set_stochastic(model, p=0.25, fixed=True) == 2
    assert all(m.p == 0.25 and m.fixed for m in (model[0], model[2]))


def test_bad_settings_are_refused_with_the_value():
    with pytest.raises(ValueError, match=r"must be a number in \[0, 1\], got 1.5"):
        Stochastic(p=1.5)
    with pytest.raises(ValueError, match=r"unknown stochastic mode 'batch'; choose one of 'forward', 'element'"):
        Stochastic(mode="batch")
    with pytest.raises(ValueError, match=r"unknown inference activation 'third'"):
        Stochastic(inference="third")
    with pytest.raises(ValueError, match="unknown activation 'silo'"):
        Stochastic(first="silo")
    with pytest.raises(ValueError, match="got True"):
        set_stochastic(torch.nn.Sequential(Stochastic()), p=True)


def test_reparameterize_replaces_it_with_its_inference_activation():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), Stochastic(), torch.nn.Conv2d(4, 4, 1),
                                Stochastic(first="relu", second="repact", inference="second", mode="element"))
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        model[3].second.branch_weight.copy_(torch.tensor([0.2, 0.5, 0.1, 0.3]))
        model.eval()
        expect = model(x)
        deployed = repact.reparameterize(model, inplace=False)
        assert isinstance(deployed[1], torch.nn.ReLU) and isinstance(deployed[3], repact.PiecewiseQuadratic)
        torch.testing.assert_close(deployed(x), expect, rtol=1e-6, atol=1e-6)
    assert set(repact.list_acts("stochastic", deployable=True)) == {"stochastic", "stochastic_element"}
