"""Small networks for small images (8x8 digits, 28x28 MNIST, 32x32 CIFAR): fast enough for the demo and tests."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import create_act
from .registry import positive_int, probability, register_model

__all__ = ["SmallCNN", "small_cnn"]


class SmallCNN(nn.Module):
    """conv-BN-act x3 (the last two with stride 2), global average pool, linear classifier."""

    def __init__(self, act: Any = "relu", num_classes: int = 10, in_channels: int = 1, width: int = 32,
                 dropout: float = 0.0) -> None:
        super().__init__()
        act = "relu" if act is None else act
        w = [width, width * 2, width * 4]
        layers: list[nn.Module] = []
        cin = in_channels
        for i, cout in enumerate(w):
            layers += [
                nn.Conv2d(cin, cout, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                create_act(act, channels=cout),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


@register_model("small_cnn", family="small")
def small_cnn(act: Any = None, num_classes: int = 10, in_channels: int = 1, width: int = 32, dropout: float = 0.0,
              **kwargs: Any) -> SmallCNN:
    """A 3-layer CNN for 8x8 to 32x32 images (digits, MNIST, CIFAR)."""
    if kwargs:
        raise ValueError(f"small_cnn does not take {', '.join(sorted(kwargs))}; it takes in_channels, width, dropout")
    positive_int("small_cnn", "in_channels", in_channels)
    positive_int("small_cnn", "width", width)
    dropout = probability("small_cnn", "dropout", dropout)
    return SmallCNN(act=act, num_classes=num_classes, in_channels=in_channels, width=width, dropout=dropout)
