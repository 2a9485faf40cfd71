"""Pointwise FLOPs of one activation call, for cost reports.

Convention (the same as :class:`~repact.activations.base.Activation`): every elementary operation
on one element counts 1: a multiply, an add or subtract, a comparison, a select (``where``,
``max`` with a constant), an ``abs``, and one transcendental or division (``exp``, ``log``,
``tanh``, ``sigmoid``, ``erf``, ``/``). A clamp to [lo, hi] is two comparisons. So
ReLU = 1, HardSwish = x * clamp(x + 3, 0, 6) / 6 = add + 2 + multiply + scale = 5 and
SiLU = sigmoid + multiply = 2.

For repact :class:`Activation` subclasses the count comes from the module's own
``flops(shape, deploy)``, generator networks included. Torch's built-in activation modules use
:data:`BUILTIN_FLOPS_PER_ELEMENT`; anything else gives ``None`` (unknown, not zero).
"""

from __future__ import annotations

import math
from typing import Sequence

from torch import nn

from .base import Activation

__all__ = ["activation_flops", "BUILTIN_FLOPS_PER_ELEMENT"]

#: ops per element of torch's built-in activations, with the expression counted
BUILTIN_FLOPS_PER_ELEMENT: dict[type[nn.Module], int] = {
    nn.Identity: 0,
    nn.ReLU: 1,  # max(x, 0)
    nn.ReLU6: 2,  # clamp(x, 0, 6)
    nn.LeakyReLU: 2,  # max(x, a x): multiply, max
    nn.PReLU: 2,  # same with a learned slope
    nn.RReLU: 2,  # eval form: a fixed slope
    nn.ELU: 4,  # x > 0 ? x : a (exp(x) - 1): exp, subtract, multiply, select
    nn.CELU: 5,  # ELU with exp(x / a): + divide
    nn.SELU: 5,  # scale * ELU
    nn.SiLU: 2,  # sigmoid, multiply
    nn.Mish: 5,  # x tanh(log(1 + exp(x))): exp, add, log, tanh, multiply
    nn.Softplus: 4,  # log(1 + exp(x)) plus the threshold select (beta = 1; +2 otherwise)
    nn.Hardswish: 5,  # x * clamp(x + 3, 0, 6) / 6
    nn.Hardsigmoid: 4,  # clamp(x + 3, 0, 6) / 6
    nn.Hardtanh: 2,  # clamp
    nn.Tanh: 1,
    nn.Sigmoid: 1,
    nn.LogSigmoid: 2,  # -softplus(-x) in a stable form, counted as sigmoid + log
    nn.Softsign: 3,  # x / (1 + |x|)
    nn.Tanhshrink: 2,  # x - tanh(x)
    nn.Threshold: 2,  # compare, select
    nn.Hardshrink: 3,  # |x|, compare, select
    nn.Softshrink: 4,  # |x|, compare, subtract towards 0, select
}

_GELU = {"none": 5, "tanh": 9}  # erf: x/sqrt2, erf, +1, *x, *0.5; tanh: x^3 (2), *c, +x, *k, tanh, +1, *x, *0.5


def _builtin_per_element(module: nn.Module) -> int | None:
    if isinstance(module, nn.GELU):
        return _GELU.get(getattr(module, "approximate", "none"), 5)
    if isinstance(module, nn.Softplus):
        return 4 if float(module.beta) == 1.0 else 6
    return BUILTIN_FLOPS_PER_ELEMENT.get(type(module))  # exact type: a subclass may compute more


def activation_flops(module: nn.Module, input_shape: Sequence[int], deploy: bool = False) -> int | None:
    """FLOPs of one call of ``module`` on an input of ``input_shape``; None for an unknown module.

    ``deploy=True`` counts the re-parameterized (single-branch) form where one exists.
    """
    shape = [int(s) for s in input_shape]
    if any(s < 0 for s in shape):
        raise ValueError(f"input_shape must hold non-negative sizes, got {tuple(input_shape)}")
    if isinstance(module, Activation):
        return int(module.flops(shape, deploy))
    per = _builtin_per_element(module)
    if per is None:
        return None
    return per * math.prod(shape)
