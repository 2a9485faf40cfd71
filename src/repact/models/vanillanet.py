"""A small VanillaNet-style network (arXiv 2305.12972) for the annealing and merging of ``repact.merge``.

Every stage is ``conv 1x1 - BN - anneal(act) - conv 1x1 - BN - max-pool - act``, after a stem
``conv kxk - BN - anneal(act) - conv 1x1 - BN - act`` and before a head ``avg-pool - conv 1x1 - BN -
anneal(act) - conv 1x1``, all in ``nn.Sequential`` containers. The annealed activations start as
``act`` (``lam = 0``); ``repact train --anneal-acts START:END`` moves them to the identity (VanillaNet's
deep training strategy: its leaky ReLU with a slope going from 0 to 1 is ``anneal(relu)``), after
which every ``conv - BN - identity - conv`` pair merges into one convolution
(``repact deploy --merge``): half the convolutions. The other activations stay nonlinear.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..activations.anneal import anneal
from ..registry import create_act
from .registry import flag, positive_int, probability, register_model

__all__ = ["VanillaNetMini", "vanillanet_mini"]


def _act(act: Any, channels: int) -> nn.Module:
    module = create_act(act, channels=channels)
    return module if module is not None else nn.Identity()


def _pair(cin: int, cmid: int, cout: int, act: Any, kernel: int = 1, stride: int = 1) -> list[nn.Module]:
    """conv (kernel) - BN - anneal(act) - conv 1x1 - BN."""
    return [nn.Conv2d(cin, cmid, kernel, stride=stride, padding=kernel // 2 if stride == 1 else 0),
            nn.BatchNorm2d(cmid), anneal(_act(act, cmid)), nn.Conv2d(cmid, cout, 1), nn.BatchNorm2d(cout)]


class VanillaNetMini(nn.Module):
    """Stem, ``depth`` stages doubling the width and halving the size, and a head; see the module docstring."""

    def __init__(self, act: Any = "relu", num_classes: int = 10, in_channels: int = 3, width: int = 16,
                 depth: int = 3, small_input: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        act = "relu" if act is None else act
        if small_input:  # 3x3 stride 1 for 8x8 to 64x64 images; VanillaNet's 4x4 stride-4 patchify otherwise
            stem = _pair(in_channels, width, width, act, kernel=3)
        else:
            stem = _pair(in_channels, width, width, act, kernel=4, stride=4)
        self.stem = nn.Sequential(*stem, _act(act, width))
        stages = []
        cin = width
        for _ in range(depth):
            cout = cin * 2
            stages.append(nn.Sequential(*_pair(cin, cin, cout, act), nn.MaxPool2d(2, ceil_mode=True),
                                        _act(act, cout)))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
                                  *_pair(cin, num_classes, num_classes, act)[:4], nn.Flatten(1))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


@register_model("vanillanet_mini", family="small")
def vanillanet_mini(act: Any = None, num_classes: int = 10, in_channels: int = 3, width: int = 16, depth: int = 3,
                    small_input: bool = False, dropout: float = 0.0, **kwargs: Any) -> VanillaNetMini:
    """A VanillaNet-style network with annealable activations between its paired 1x1 convolutions."""
    if kwargs:
        raise ValueError(f"vanillanet_mini does not take {', '.join(sorted(kwargs))}; it takes in_channels, width, "
                         "depth, small_input, dropout")
    positive_int("vanillanet_mini", "in_channels", in_channels)
    positive_int("vanillanet_mini", "width", width, most=4096)
    positive_int("vanillanet_mini", "depth", depth, most=8)
    flag("vanillanet_mini", "small_input", small_input)
    dropout = probability("vanillanet_mini", "dropout", dropout)
    return VanillaNetMini(act=act, num_classes=num_classes, in_channels=in_channels, width=width, depth=depth,
                          small_input=small_input, dropout=dropout)
