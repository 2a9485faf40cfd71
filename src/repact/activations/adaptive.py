"""Adaptive activations from the RepAct baselines and the activation survey.

* ``arelu`` (AReLU): x (1 + sigmoid(beta)) for x >= 0, clamp(alpha, 0.01, 0.99) x below;
  alpha starts at 0.9 and beta at 2.0 (the RepAct code's values).
* ``dyrelu_a`` (DyReLU-A): y = max_k(a_k x + b_k) with coefficients shared over space and
  channels, generated per sample by global average pool -> fc C->C/r -> relu -> fc -> 2k ->
  2 sigmoid - 1, then a = theta * lambda + init (lambda = [1]*k + [0.5]*k, init = [1, 0, ...]);
  k = 2, r = 4.
* ``pdelu`` (PDELU): x for x > 0, alpha ((1 + (1 - t) x)^(1 / (1 - t)) - 1) below, t = 0.9. For
  t < 1 the base is clamped at 0, where the exact curve reaches -alpha (at x = -1 / (1 - t)), so
  it stays flat there instead of turning back up (the survey code's pow(1 + 0.1 x, 10) does).
  alpha starts at 1.0, the value in RepAct's ``model/activations.py`` (the survey's zoo).
* ``srs`` (Soft-Root-Sign): x / (x / alpha + exp(-x / beta)), alpha = 5.0 and beta = 3.0 at init,
  the general default listed in the same file (it uses 10, 10 for SENet18).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_act
from ._common import GranularActivation, per_sample_mean
from .base import Activation

__all__ = ["AReLU", "DyReLUA", "PDELU", "SRS"]


class AReLU(GranularActivation):
    """AReLU: relu(x) (1 + sigmoid(beta)) - relu(-x) clamp(alpha, 0.01, 0.99).

    Args:
        channels: channel count for ``granularity="channel"`` (inferred on first forward if None).
        granularity: ``"layer"`` (default, the RepAct code) or ``"channel"``.
        alpha, beta: initial values (0.9, 2.0).
        channels_last: channels on the last dim (token tensors).
        inplace: accepted and ignored; the input is never modified.
    """

    param_names = ("alpha", "beta")
    flops_train = 4.0  # compare, two multiplies, select

    def __init__(self, channels=None, *, granularity="layer", alpha=0.9, beta=2.0, channels_last=False, inplace=False):
        super().__init__(channels, granularity=granularity, channels_last=channels_last)
        self.alpha_init = float(alpha)
        self.beta_init = float(beta)
        self._finish_init()

    def forward(self, x):
        self.infer_channels(x)
        self.check_channels(x)
        neg = self.pview("alpha", x).clamp(0.01, 0.99)
        pos = 1 + torch.sigmoid(self.pview("beta", x))
        return torch.where(x >= 0, x * pos, x * neg)


class DyReLUA(Activation):
    """DyReLU-A: max over k of (a_k x + b_k), coefficients generated per sample from the input.

    Args:
        channels: channel count (inferred on first forward if None).
        k: number of linear pieces (2).
        reduction: hidden width of the generator is max(1, C // reduction) (4).
        channels_last: channels on the last dim (token tensors (N, ..., C)).
        inplace: accepted and ignored; the input is never modified.
    """

    def __init__(self, channels=None, *, k=2, reduction=4, channels_last=False, inplace=False):
        k, reduction = int(k), int(reduction)
        if k < 1:
            raise ValueError(f"DyReLU k (number of pieces) must be a positive integer, got {k}")
        if reduction < 1:
            raise ValueError(f"DyReLU reduction must be a positive integer, got {reduction}")
        super().__init__(channels, channels_last=channels_last)
        self.k = k
        self.reduction = reduction
        self.register_buffer("lambdas", torch.tensor([1.0] * k + [0.5] * k), persistent=False)
        self.register_buffer("init_v", torch.tensor([1.0] + [0.0] * (2 * k - 1)), persistent=False)
        self.flops_train = float(3 * k - 1)  # k multiply-adds, k - 1 maxima
        self._finish_init()

    @property
    def needs_channels(self) -> bool:
        return True

    def hidden_width(self, channels: int) -> int:
        return max(1, channels // self.reduction)

    def _build(self, channels):
        hidden = self.hidden_width(channels)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, 2 * self.k)
        self.train(self.training)  # submodules built lazily follow the module's mode

    def _channels_from_state(self, state_dict, prefix):
        w = state_dict.get(prefix + "fc1.weight")
        return int(w.shape[1]) if torch.is_tensor(w) else None

    def coefficients(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2k) coefficients: slopes a_1..a_k then intercepts b_1..b_k."""
        theta = self.fc2(F.relu(self.fc1(per_sample_mean(x, self.channels_last))))
        theta = 2 * torch.sigmoid(theta) - 1
        return theta * self.lambdas + self.init_v

    def forward(self, x):
        if x.dim() < 2:
            raise ValueError(f"DyReLUA needs a batch dim, (N, C, ...) input; got shape {tuple(x.shape)}")
        self.infer_channels(x)
        self.check_channels(x)
        coefs = self.coefficients(x)
        shape = [x.shape[0]] + [1] * (x.dim() - 1)
        out = None
        for j in range(self.k):
            piece = torch.addcmul(coefs[:, self.k + j].reshape(shape), x, coefs[:, j].reshape(shape))
            out = piece if out is None else torch.maximum(out, piece)
        return out

    def extra_flops(self, input_shape: Sequence[int]) -> int:
        shape = [int(s) for s in input_shape]
        c = shape[-1] if self.channels_last else shape[1]
        h, m = self.hidden_width(c), 2 * self.k
        per_sample = 2 * c * h + h + h + 2 * h * m + m + 3 * m + 2 * m  # fc1, relu, fc2, 2s-1, affine
        return math.prod(shape) + shape[0] * per_sample  # spatial mean + generator

    def extra_repr(self) -> str:
        base = super().extra_repr()
        return ", ".join([f"k={self.k}", f"reduction={self.reduction}"] + ([base] if base else []))


class PDELU(GranularActivation):
    """PDELU: x for x > 0, alpha ((1 + (1 - t) x)^(1 / (1 - t)) - 1) for x <= 0.

    Args:
        channels: channel count for ``granularity="channel"`` (inferred on first forward if None).
        granularity: ``"layer"`` (default) or ``"channel"``.
        t: deformation (0.9); any t > 0 other than 1 (t -> 1 is the ELU).
        alpha: initial alpha (1.0).
        channels_last: channels on the last dim (token tensors).
        inplace: accepted and ignored; the input is never modified.
    """

    param_names = ("alpha",)
    flops_train = 9.0

    def __init__(self, channels=None, *, granularity="layer", t=0.9, alpha=1.0, channels_last=False, inplace=False):
        t = float(t)
        if not (t > 0 and t != 1 and math.isfinite(t)):
            raise ValueError(f"PDELU t must be a positive number other than 1, got {t}")
        super().__init__(channels, granularity=granularity, channels_last=channels_last)
        self.t = t
        self.alpha_init = float(alpha)
        self._finish_init()

    def forward(self, x):
        self.infer_channels(x)
        self.check_channels(x)
        k = 1.0 - self.t
        pos = F.relu(x)
        base = (1 + k * (x - pos)).clamp(min=0)  # 1 for x > 0, never negative
        # x - relu(x) has slope 1 at 0 (clamp's would be 0), so the slope at 0 is alpha, not 0
        return pos + self.pview("alpha", x) * (base.pow(1.0 / k) - 1)

    def extra_repr(self) -> str:
        return f"t={self.t}, " + super().extra_repr()


class SRS(GranularActivation):
    """Soft-Root-Sign: x / (x / alpha + exp(-x / beta)), computed in a stable form.

    For x < 0 the fraction is rewritten as x e^(x/beta) / (x e^(x/beta) / alpha + 1), so the
    exponential never overflows. alpha and beta are used as |.| (at least ``eps``). The exact
    function has a pole when beta / alpha > e; the denominator is then clamped at ``eps``.

    Args:
        channels: channel count for ``granularity="channel"`` (inferred on first forward if None).
        granularity: ``"layer"`` (default) or ``"channel"``.
        alpha, beta: initial values (5.0, 3.0).
        eps: floor of |alpha|, |beta| and of the negative-side denominator (1e-4).
        channels_last: channels on the last dim (token tensors).
        inplace: accepted and ignored; the input is never modified.
    """

    param_names = ("alpha", "beta")
    flops_train = 15.0

    def __init__(
        self, channels=None, *, granularity="layer", alpha=5.0, beta=3.0, eps=1e-4, channels_last=False, inplace=False
    ):
        super().__init__(channels, granularity=granularity, channels_last=channels_last)
        self.alpha_init = float(alpha)
        self.beta_init = float(beta)
        self.eps = float(eps)
        self._finish_init()

    def forward(self, x):
        self.infer_channels(x)
        self.check_channels(x)
        a = self.pview("alpha", x).abs().clamp_min(self.eps)
        b = self.pview("beta", x).abs().clamp_min(self.eps)
        xp = F.relu(x)  # slope 0 at x = 0 and xn's slope 1 there: the two halves count once
        xn = x - xp
        pos = xp / (xp / a + torch.exp(-xp / b))
        en = xn * torch.exp(xn / b)
        neg = en / (en / a + 1).clamp_min(self.eps)
        return pos + neg


register_act(
    "arelu", AReLU, family="adaptive", learnable=True,
    description="AReLU: x(1+sigmoid(beta)) for x>=0, clamp(alpha,0.01,0.99)x below",
)
register_act(
    "dyrelu_a", DyReLUA, aliases=("dyrelu",), family="adaptive", learnable=True, channelwise=True,
    description="DyReLU-A: max_k(a_k x + b_k), coefficients from the input (k=2, r=4)",
)
register_act(
    "pdelu", PDELU, family="adaptive", learnable=True,
    description="PDELU: parametric deformable ELU, t=0.9, learnable alpha",
)
register_act(
    "srs", SRS, aliases=("soft_root_sign",), family="adaptive", learnable=True,
    description="Soft-Root-Sign: x / (x/alpha + exp(-x/beta)), learnable alpha, beta",
)
