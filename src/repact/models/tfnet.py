"""TFNet, ACON's toy funnel network: pointwise convolutions and ACON-FReLU activations only.

Written from the ACON paper's description (arXiv 2009.04759, section "TFNet"):

* **Funnel activation** ``FunnelAct(C, stride)``: ``a = x`` (3x3/2 max-pool when ``stride=2``),
  ``b = BN(dw3x3(x))`` (stride, with bias); output ``BN(g(a - b) + b)``. With ``g = x*sigmoid(x)``
  (SiLU) this is ACON-FReLU with beta fixed at 1, the smooth maximum of ``x`` and ``T(x)``;
  with ``g = relu`` it is FReLU's ``max(x, T(x))``. The builders' ``act`` sets ``g``, so
  ``act="repact"`` gives a funnel whose gate re-parameterizes exactly.
* **Block** ``TFBlock(C, stride)``: main branch pw1x1+BN, FunnelAct, pw1x1+BN; stride 1:
  ``FunnelAct(x + main)``; stride 2: ``FunnelAct(concat(x, main))`` with stride 2, which doubles the
  channels and down-samples inside the activation.
* **Network**: stem 3x3/2 conv (16 x size channels) + BN + ReLU; stages of [2, 3, 8, 3] blocks,
  the first of each with stride 2; 1x1 conv to 1024 + BN + FunnelAct; global average pool;
  dropout 0.2 when size > 0.5; linear classifier. Sizes 0.5, 1.0, 1.5, 2.0.
* **Init**: convs N(0, 1/C_in), the stem and funnel convs N(0, 0.01), biases 0; BN weight 1,
  bias 1e-4; linear N(0, 0.01).

``act=None`` is the paper's network (``g`` = SiLU). ``small_input=True`` makes the stem stride 1
for 32x32 images.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..registry import create_act
from .registry import flag, register_model

__all__ = ["FunnelAct", "TFBlock", "TFNet", "TFNET_SIZES"]

TFNET_SIZES = (0.5, 1.0, 1.5, 2.0)
_STAGES = (2, 3, 8, 3)


def _gate(act: Any, channels: int) -> nn.Module:
    if act is None:
        return nn.SiLU()
    module = create_act(act, channels=channels)
    return module if module is not None else nn.Identity()


class FunnelAct(nn.Module):
    """``BN(g(a - b) + b)`` with ``a = x`` (max-pooled when strided) and ``b = BN(dw3x3(x))``."""

    def __init__(self, channels: int, stride: int = 1, act: Any = None) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"FunnelAct stride must be 1 or 2, got {stride}")
        self.stride = stride
        self.funnel = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=True)
        self.funnel_bn = nn.BatchNorm2d(channels)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.gate = _gate(act, channels)
        self.out_bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pool(x)
        b = self.funnel_bn(self.funnel(x))
        return self.out_bn(self.gate(a - b) + b)


class TFBlock(nn.Module):
    """pw-BN, funnel, pw-BN, merged with the input by a funnel (add, or concat when strided)."""

    def __init__(self, channels: int, stride: int, act: Any = None) -> None:
        super().__init__()
        self.stride = stride
        self.main = nn.Sequential(
            nn.Conv2d(channels, channels, 1, bias=True),
            nn.BatchNorm2d(channels),
            FunnelAct(channels, 1, act),
            nn.Conv2d(channels, channels, 1, bias=True),
            nn.BatchNorm2d(channels),
        )
        self.merge = FunnelAct(channels * stride, stride, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.main(x)
        joined = x + y if self.stride == 1 else torch.cat((x, y), dim=1)
        return self.merge(joined)


class TFNet(nn.Module):
    """TFNet of ``size`` in (0.5, 1.0, 1.5, 2.0)."""

    def __init__(self, size: float = 1.0, num_classes: int = 1000, act: Any = None, small_input: bool = False,
                 last_channels: int = 1024) -> None:
        super().__init__()
        if size not in TFNET_SIZES:
            raise ValueError(f"TFNet size must be one of {', '.join(map(str, TFNET_SIZES))}, got {size!r}")
        width = int(16 * size)
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=1 if small_input else 2, padding=1, bias=True),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        blocks = []
        for n in _STAGES:
            for i in range(n):
                stride = 2 if i == 0 else 1
                blocks.append(TFBlock(width, stride, act))
                width *= stride
        self.features = nn.Sequential(*blocks)
        self.last = nn.Sequential(
            nn.Conv2d(width, last_channels, 1, bias=True),
            nn.BatchNorm2d(last_channels),
            FunnelAct(last_channels, 1, act),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2) if size > 0.5 else nn.Identity()
        self.classifier = nn.Linear(last_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                std = 0.01 if (name.startswith("stem") or name.endswith("funnel")) else 1.0 / m.weight.shape[1]
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.constant_(m.bias, 1e-4)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.last(self.features(self.stem(x)))
        x = self.dropout(self.pool(x).flatten(1))
        return self.classifier(x)


def _register(size: float) -> None:
    name = f"tfnet_{str(size).replace('.', '_')}"

    def builder(act: Any = None, num_classes: int = 1000, *, small_input: bool = False, **kwargs: Any) -> TFNet:
        if kwargs:
            raise ValueError(f"{name} does not take {', '.join(sorted(kwargs))}")
        flag(name, "small_input", small_input)
        return TFNet(size, num_classes=num_classes, act=act, small_input=small_input)

    builder.__name__ = name
    builder.__doc__ = f"TFNet {size} (ACON's funnel network); act is the funnel gate (default SiLU = ACON-FReLU)."
    register_model(name, family="tfnet")(builder)
    globals()[name] = builder


for _size in TFNET_SIZES:
    _register(_size)
