"""Train/eval flags handed back as they were: the helpers, and the functions that run a model in eval mode."""

import pytest
import torch
from torch import nn

from repact._modes import eval_mode, kept_modes
from repact.train.evaluate import evaluate_pair


def _mixed():
    """A model whose parts are in different modes (a frozen BatchNorm inside a training model)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))
    model.train()
    model[1].eval()
    return model


def _flags(model):
    return [m.training for m in model.modules()]


def test_eval_mode_sets_every_part_and_restores_each_own_flag_after_an_error():
    a, b = _mixed(), _mixed().eval()
    before_a, before_b = _flags(a), _flags(b)
    with pytest.raises(RuntimeError, match="inside"):
        with eval_mode(a, b):
            assert not any(_flags(a)) and not any(_flags(b))
            raise RuntimeError("inside")
    assert _flags(a) == before_a and _flags(b) == before_b
    assert before_a[0] and not before_a[2]  # the fixture really is mixed


def test_kept_modes_undoes_what_the_block_changed():
    model = _mixed()
    before = _flags(model)
    with kept_modes(model):
        model.train()
        model[0].eval()
    assert _flags(model) == before


def test_evaluate_pair_leaves_a_mixed_model_as_it_was():
    reference, candidate = _mixed(), _mixed()
    x = torch.randn(4, 3, 8, 8)
    reference(x), candidate(x)  # build the lazy layers
    candidate.load_state_dict(reference.state_dict())
    before = _flags(reference)
    out = evaluate_pair(reference, candidate, [(x, torch.tensor([0, 1, 2, 3]))])
    assert out["max_abs_logit_error"] == 0.0 and out["top1_flips"] == 0
    assert _flags(reference) == before and _flags(candidate) == before
