"""repact._hooks: one hooked call, hooks removed afterwards even when the call fails."""

import pytest
import torch
from torch import nn

from repact._hooks import example_args, run_hooked


def test_example_args_wraps_a_single_input_and_keeps_a_tuple():
    x = torch.zeros(1)
    assert example_args(x) == (x,)
    assert example_args((x, x)) == (x, x)


def test_run_hooked_calls_once_inside_the_contexts_and_removes_the_hooks():
    model = nn.Linear(3, 2)
    seen = []
    handles = [model.register_forward_hook(lambda m, i, o: seen.append(torch.is_grad_enabled()))]
    out = run_hooked(model, torch.ones(4, 3), handles, torch.no_grad())
    assert out.shape == (4, 2) and not out.requires_grad
    assert seen == [False]
    model(torch.ones(1, 3))
    assert seen == [False]  # the hook is gone


def test_run_hooked_removes_the_hooks_when_the_call_fails():
    model = nn.Linear(3, 2)
    seen = []
    handles = [model.register_forward_pre_hook(lambda m, i: seen.append(1))]
    with pytest.raises(RuntimeError):
        run_hooked(model, torch.ones(4, 5), handles)
    assert seen == [1]
    model(torch.ones(1, 3))
    assert seen == [1]


def test_run_hooked_passes_a_tuple_as_several_arguments():
    class Two(nn.Module):
        def forward(self, a, b):
            return a + b

    assert torch.equal(run_hooked(Two(), (torch.ones(2), torch.ones(2)), []), torch.full((2,), 2.0))
