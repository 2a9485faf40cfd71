"""The classic activations by name, and the survey's extras (Elliott, LiSHT, ABReLU).

Fixed functions that PyTorch has are registered as torch's own modules (``create_act("relu")``
returns ``nn.ReLU``); the learnable or non-standard ones are :class:`Activation` subclasses:

* ``prelu``: max(x, 0) + a min(x, 0), one slope per layer (0.25, the paper) or per channel.
* ``swish``: x sigmoid(beta x) with a learnable beta starting at 0.25 (the RepAct tables' Swish;
  ``silu`` is the fixed beta = 1 function).
* ``elliott``: 0.5 x / (1 + |x|) + 0.5.
* ``lisht``: x tanh(x).
* ``abrelu``: relu(x - mean), the mean of each sample's channel over its spatial dims.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_act
from ._common import GranularActivation
from .acon import AconA
from .base import Activation

__all__ = ["PReLU", "Swish", "Elliott", "LiSHT", "ABReLU"]


class PReLU(GranularActivation):
    """PReLU: x for x >= 0, a x below; one learnable slope per layer (default) or per channel.

    Args:
        channels: channel count for ``granularity="channel"`` (inferred on first forward if None).
        granularity: ``"layer"`` (one slope, as ``nn.PReLU()`` and the papers) or ``"channel"``.
        init: initial slope (0.25).
        channels_last: channels on the last dim (token tensors).
        inplace: accepted and ignored; the input is never modified.
    """

    param_names = ("weight",)
    flops_train = 2.0

    def __init__(self, channels=None, *, granularity="layer", init=0.25, channels_last=False, inplace=False):
        super().__init__(channels, granularity=granularity, channels_last=channels_last)
        self.init = float(init)
        self._finish_init()

    def _build(self, channels):
        self.weight = self._new_param(channels, self.init)

    def forward(self, x):
        self.infer_channels(x)
        self.check_channels(x)
        if self.weight.numel() == 1 or (x.dim() >= 2 and not self.channels_last):
            return F.prelu(x, self.weight)
        return torch.where(x >= 0, x, x * self.pview("weight", x))


class Swish(AconA):
    """Swish: x sigmoid(beta x) with a learnable beta (0.25 as in the RepAct tables).

    ACON-A with the tables' defaults: one beta per layer (``granularity="channel"`` for one per
    channel), starting at 0.25. Unlike ``silu`` (beta fixed at 1), beta trains.
    """

    def __init__(self, channels=None, *, granularity="layer", beta_init=0.25, channels_last=False, inplace=False):
        super().__init__(channels, granularity=granularity, beta_init=beta_init, channels_last=channels_last)


class _Pointwise(Activation):
    """A fixed pointwise function; ``channels`` and ``inplace`` are accepted and ignored."""

    def __init__(self, channels=None, *, channels_last=False, inplace=False):
        super().__init__(None, channels_last=channels_last)
        self._finish_init()


class Elliott(_Pointwise):
    """Elliott: 0.5 x / (1 + |x|) + 0.5, a cheap sigmoid-like squashing to (0, 1)."""

    flops_train = 5.0

    def forward(self, x):
        self.infer_channels(x)
        return 0.5 * x / (1 + x.abs()) + 0.5


class LiSHT(_Pointwise):
    """LiSHT: x tanh(x)."""

    flops_train = 2.0

    def forward(self, x):
        self.infer_channels(x)
        return x * torch.tanh(x)


class ABReLU(_Pointwise):
    """Average-biased ReLU: relu(x - m), m the mean of the input feature map.

    We take m per sample and per channel over the spatial dims (dims 2.. of (N, C, ...), or
    1..-2 of a ``channels_last`` (N, ..., C) tensor), so a sample's output does not depend on the
    rest of the batch. Inputs without spatial dims ((N, C)) use each sample's mean over its
    channels, and a 1-D input its overall mean. The survey's and RepAct's code subtract one mean
    over the whole batch tensor instead.
    """

    flops_train = 3.0

    def forward(self, x):
        self.infer_channels(x)
        if x.dim() <= 2:
            m = x.mean(dim=-1, keepdim=True)
        elif self.channels_last:
            m = x.mean(dim=tuple(range(1, x.dim() - 1)), keepdim=True)
        else:
            m = x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
        return F.relu(x - m)


# --- registry ----------------------------------------------------------------------------------
_FAMILY = {"family": "classic"}

register_act("identity", nn.Identity, aliases=("linear", "none"), description="identity (no activation)", **_FAMILY)
register_act("relu", nn.ReLU, description="max(x, 0)", **_FAMILY)
register_act("relu6", nn.ReLU6, description="min(max(x, 0), 6)", **_FAMILY)
register_act(
    "leaky_relu", nn.LeakyReLU, aliases=("lrelu", "leakyrelu"), description="max(x, 0.01 x)", **_FAMILY
)
register_act(
    "prelu", PReLU, learnable=True,
    description="PReLU, one learnable slope per layer (init 0.25); granularity='channel' for one per channel",
    **_FAMILY,
)
register_act("elu", nn.ELU, description="x if x > 0 else exp(x) - 1", **_FAMILY)
register_act("selu", nn.SELU, description="scaled ELU (self-normalizing)", **_FAMILY)
register_act("celu", nn.CELU, description="continuously differentiable ELU", **_FAMILY)
register_act("gelu", nn.GELU, description="x * Phi(x) (exact erf form)", **_FAMILY)
register_act(
    "gelu_tanh", nn.GELU, description="GELU, tanh approximation", approximate="tanh", **_FAMILY
)
register_act("silu", nn.SiLU, description="x * sigmoid(x) (fixed Swish-1)", **_FAMILY)
register_act(
    "swish", Swish, learnable=True,
    description="x * sigmoid(beta x), learnable beta (init 0.25), as in the RepAct tables", **_FAMILY,
)
register_act("mish", nn.Mish, description="x * tanh(softplus(x))", **_FAMILY)
register_act("softplus", nn.Softplus, description="log(1 + exp(x))", **_FAMILY)
register_act(
    "hardswish", nn.Hardswish, aliases=("hard_swish", "hswish"), description="x * relu6(x + 3) / 6", **_FAMILY
)
register_act(
    "hardsigmoid", nn.Hardsigmoid, aliases=("hard_sigmoid", "hsigmoid"), description="relu6(x + 3) / 6",
    **_FAMILY,
)
register_act("tanh", nn.Tanh, description="tanh(x)", **_FAMILY)
register_act("sigmoid", nn.Sigmoid, aliases=("logistic",), description="1 / (1 + exp(-x))", **_FAMILY)
register_act("elliott", Elliott, description="0.5 x / (1 + |x|) + 0.5", **_FAMILY)
register_act("lisht", LiSHT, description="x * tanh(x)", **_FAMILY)
register_act(
    "abrelu", ABReLU, description="relu(x - mean over the sample's spatial dims, per channel)", **_FAMILY
)
