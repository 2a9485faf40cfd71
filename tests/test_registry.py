"""The activation registry: names, aliases, classes, callables, registration and errors."""

import pytest
from torch import nn

import repact
from repact.registry import get_act_spec, register_act, unregister_act


def test_names_aliases_and_case():
    assert repact.create_act("RePAct").variant == "origin"
    assert get_act_spec("repact1").name == "repact"
    assert get_act_spec("repact-softmax").name == "repact_softmax"
    names = repact.list_acts()
    assert names == sorted(names) and {"repact", "repact_softmax", "repact_bn"} <= set(names)
    assert repact.list_acts(family="repact") == ["repact", "repact_bn", "repact_softmax"]
    assert "repact" in repact.list_acts(deployable=True)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="unknown activation 'repactt'.*Did you mean: repact"):
        repact.create_act("repactt")


def test_none_gives_no_activation_and_an_empty_name_is_an_error():
    assert repact.create_act(None) is None
    for empty in ("", "   "):
        with pytest.raises(ValueError, match="activation name is empty.*'identity'"):
            repact.create_act(empty)


def test_channels_last_goes_only_to_factories_that_take_it():
    assert repact.create_act("repact", channels=4, granularity="channel", channels_last=True).channels_last
    assert isinstance(repact.create_act("gelu", channels_last=True), nn.GELU)  # fixed functions ignore the hint


def test_classes_and_callables():
    assert isinstance(repact.create_act(nn.ReLU, inplace=True), nn.ReLU)  # inplace passed when accepted
    assert isinstance(repact.create_act(nn.Tanh, inplace=True), nn.Tanh)  # and dropped when not
    m = repact.create_act(repact.RepAct, channels=6, granularity="channel")
    assert m.channels == 6
    seen = {}

    def factory(channels=None):
        seen["channels"] = channels
        return nn.Identity()

    repact.create_act(factory, channels=3)
    assert seen["channels"] == 3
    with pytest.raises(TypeError, match="module instance"):
        repact.create_act(nn.ReLU())
    with pytest.raises(TypeError, match="returned int"):
        repact.create_act(lambda: 3)


def test_register_new_names():
    @register_act("test_square_act", aliases=("tsq",), family="test", description="x squared")
    class Square(nn.Module):
        def forward(self, x):
            return x * x

    try:
        assert isinstance(repact.create_act("tsq"), Square)
        assert "test_square_act" in repact.list_acts(family="test")
        with pytest.raises(ValueError, match="already registered"):
            register_act("test_square_act", nn.Identity)
        register_act("test_square_act", nn.Identity, overwrite=True, family="test")
        assert isinstance(repact.create_act("test_square_act"), nn.Identity)
    finally:
        unregister_act("test_square_act")
    assert "test_square_act" not in repact.list_acts()
    with pytest.raises(ValueError):
        repact.create_act("tsq")
