"""Funnel activations: FReLU and TFNet's ACON-FReLU.

* ``frelu``: max(x, BN(dwconv3x3(x))), the depthwise conv without bias since a BN follows.
* ``acon_frelu``: with eta_a = x (max-pooled 3x3/2 when ``stride=2``) and
  eta_b = BN(dwconv3x3(x, stride, with bias)), out = BN(S(eta_a, eta_b)) where
  S(a, b) = (a - b) sigmoid(a - b) + b is ACON's smooth maximum with beta fixed at 1.

Both are spatial, so they view other input ranks as images: (N, C) as (N, C, 1, 1) and (N, C, L)
as (N, C, L, 1), where the 3x3 kernel then acts as a length-3 1-D kernel (its middle column).
With ``channels_last=True`` they take token tensors (N, C), (N, L, C) or (N, H, W, C); other
ranks raise a ``ValueError``. The BNs use their running statistics when a training batch holds
one value per channel (batch size 1 on (N, C) input).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_act
from ._common import BatchNorm2dSafe, as_nchw
from .base import Activation

__all__ = ["FReLU", "AconFReLU"]


def _conv_flops_per_output(kernel_size: int, bias: bool) -> int:
    k2 = kernel_size * kernel_size
    return k2 + (k2 - 1) + (1 if bias else 0)  # multiplies, adds, bias


class _Funnel(Activation):
    """Lazy depthwise-conv plumbing shared by the funnel activations."""

    def __init__(self, channels, *, kernel_size, channels_last):
        kernel_size = int(kernel_size)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        super().__init__(channels, channels_last=channels_last)
        self.kernel_size = kernel_size

    @property
    def needs_channels(self) -> bool:
        return True

    def _channels_from_state(self, state_dict, prefix):
        w = state_dict.get(prefix + "conv.weight")
        return int(w.shape[0]) if torch.is_tensor(w) else None

    def _dwconv(self, channels: int, stride: int, bias: bool) -> nn.Conv2d:
        k = self.kernel_size
        return nn.Conv2d(channels, channels, k, stride=stride, padding=k // 2, groups=channels, bias=bias)

    def _prepare(self, x: torch.Tensor):
        self.infer_channels(x)
        self.check_channels(x)
        return as_nchw(x, self.channels_last, type(self).__name__)


class FReLU(_Funnel):
    """FReLU: max(x, BN(dwconv_kxk(x))); see the module docstring for the accepted shapes.

    Args:
        channels: channel count (inferred on first forward if None).
        kernel_size: funnel window (3).
        channels_last: channels on the last dim (token tensors).
        inplace: accepted and ignored; the input is never modified.
    """

    def __init__(self, channels=None, *, kernel_size=3, channels_last=False, inplace=False):
        super().__init__(channels, kernel_size=kernel_size, channels_last=channels_last)
        self.flops_train = float(_conv_flops_per_output(self.kernel_size, bias=False) + 2 + 1)  # conv, BN, max
        self._finish_init()

    def _build(self, channels):
        self.conv = self._dwconv(channels, 1, bias=False)
        self.bn = BatchNorm2dSafe(channels)
        self.train(self.training)  # submodules built lazily follow the module's mode

    def forward(self, x):
        x4, back = self._prepare(x)
        return back(torch.maximum(x4, self.bn(self.conv(x4))))


class AconFReLU(_Funnel):
    """ACON-FReLU (TFNet): BN(S(eta_a, eta_b)) with beta = 1; see the module docstring.

    Args:
        channels: channel count (inferred on first forward if None).
        stride: 1 (default) or 2; with 2 the activation halves the spatial size.
        kernel_size: depthwise window (3).
        channels_last: channels on the last dim (token tensors).
        inplace: accepted and ignored; the input is never modified.
    """

    def __init__(self, channels=None, *, stride=1, kernel_size=3, channels_last=False, inplace=False):
        if stride not in (1, 2):
            raise ValueError(f"AconFReLU stride must be 1 or 2, got {stride!r}")
        super().__init__(channels, kernel_size=kernel_size, channels_last=channels_last)
        self.stride = int(stride)
        self._finish_init()

    def _build(self, channels):
        self.conv = self._dwconv(channels, self.stride, bias=True)
        self.bn1 = BatchNorm2dSafe(channels)
        self.bn2 = BatchNorm2dSafe(channels)
        self.train(self.training)

    def forward(self, x):
        x4, back = self._prepare(x)
        eta_a = x4 if self.stride == 1 else F.max_pool2d(x4, 3, stride=2, padding=1)
        eta_b = self.bn1(self.conv(x4))
        return back(self.bn2(F.silu(eta_a - eta_b) + eta_b))

    def output_shape(self, input_shape: Sequence[int]) -> list[int]:
        """Shape of the output for an input of ``input_shape`` (smaller spatially when stride is 2)."""
        shape = [int(s) for s in input_shape]
        if self.stride == 1 or len(shape) == 2:
            return shape
        spatial = range(1, len(shape) - 1) if self.channels_last else range(2, len(shape))
        for d in spatial:
            shape[d] = (shape[d] - 1) // 2 + 1
        return shape

    def flops(self, input_shape: Sequence[int], deploy: bool = False) -> int:
        out = math.prod(self.output_shape(input_shape))
        per = _conv_flops_per_output(self.kernel_size, bias=True) + 2  # conv + BN
        per += 1 + 2 + 1 + 2  # a - b, silu (sigmoid, multiply), + b, BN
        if self.stride == 2:
            per += 8  # 3x3 max pool: 8 comparisons per output
        return out * per

    def extra_repr(self) -> str:
        base = super().extra_repr()
        return ", ".join([f"stride={self.stride}"] + ([base] if base else []))


register_act(
    "frelu", FReLU, aliases=("funnel_relu",), family="frelu", learnable=True, channelwise=True,
    description="FReLU: max(x, BN(depthwise conv3x3(x)))",
)
register_act(
    "acon_frelu", AconFReLU, family="frelu", learnable=True, channelwise=True,
    description="ACON-FReLU (TFNet): BN(smooth max(x, BN(dwconv3x3(x)))), beta fixed at 1",
)
