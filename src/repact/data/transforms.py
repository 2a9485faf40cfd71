"""Train/val transforms (torchvision ``transforms.v2``), including the RepAct paper's recipe.

Policies (``augment=``):

* ``none``: resize to the requested size when it differs from the native one; no augmentation.
* ``crop-flip``: CIFAR-style random crop with padding size/8 and a horizontal flip.
* ``imagenet``: RandomResizedCrop + flip; val resizes to size/0.875 and center-crops.
* ``repact-paper``: RandomResizedCrop + ColorJitter 0.4 + flip + rotation 15 degrees; val resizes to
  size*256/224 and center-crops (224 -> 256/224, as in the official ``train.py``).
* ``auto``: ``none`` for the digit datasets, ``crop-flip`` for CIFAR and small folders, ``imagenet``
  for folders at more than 64 px.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.transforms import v2

from .common import DataError

__all__ = ["AUGMENTS", "RepeatChannels", "build_transforms", "resolve_augment"]

AUGMENTS = ("auto", "none", "crop-flip", "imagenet", "repact-paper")


class RepeatChannels(nn.Module):
    """Repeat a 1-channel image to ``channels`` channels (grayscale data into an RGB model)."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(self.channels, *x.shape[1:]).clone() if x.shape[0] == 1 else x


def resolve_augment(augment: str, family: str, img_size: int) -> str:
    """The concrete policy for ``augment`` (``auto`` picks one by dataset family and size)."""
    aug = str(augment).strip().lower().replace("_", "-")
    if aug not in AUGMENTS:
        raise DataError(f"unknown augmentation {augment!r}; accepted: {', '.join(AUGMENTS)}")
    if aug != "auto":
        return aug
    if family == "digits":
        return "none"
    if family == "cifar" or img_size <= 64:
        return "crop-flip"
    return "imagenet"


def build_transforms(
    augment: str,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    native_size: int | None = None,
    repeat_to: int | None = None,
) -> tuple[v2.Compose, v2.Compose]:
    """(train, val) transforms taking a PIL image or a uint8 (C, H, W) tensor.

    ``native_size`` is the dataset's own square size when known (in-memory data): no resize is
    added when it equals ``img_size``. ``repeat_to`` repeats gray images to that many channels
    (mean/std are repeated to match).
    """
    if augment == "auto":
        raise ValueError("resolve 'auto' with resolve_augment() first")
    s = int(img_size)
    same = native_size is not None and native_size == s
    resize = [] if same else [v2.Resize(s, antialias=True), v2.CenterCrop(s)]
    if augment == "none":
        train_geo: list = list(resize)
        val_geo: list = list(resize)
    elif augment == "crop-flip":
        train_geo = [*resize, v2.RandomCrop(s, padding=max(1, s // 8)), v2.RandomHorizontalFlip()]
        val_geo = list(resize)
    elif augment == "imagenet":
        train_geo = [v2.RandomResizedCrop(s, antialias=True), v2.RandomHorizontalFlip()]
        val_geo = [v2.Resize(round(s / 0.875), antialias=True), v2.CenterCrop(s)]
    elif augment == "repact-paper":
        train_geo = [v2.RandomResizedCrop(s, antialias=True), v2.ColorJitter(0.4, 0.4, 0.4),
                     v2.RandomHorizontalFlip(), v2.RandomRotation(15)]
        val_geo = [v2.Resize(round(s * 256 / 224), antialias=True), v2.CenterCrop(s)]
    else:
        raise DataError(f"unknown augmentation {augment!r}; accepted: {', '.join(AUGMENTS)}")
    mean, std = list(mean), list(std)
    tail: list = [v2.ToDtype(torch.float32, scale=True)]
    if repeat_to and len(mean) == 1 and repeat_to != 1:
        tail.append(RepeatChannels(repeat_to))
        mean, std = mean * repeat_to, std * repeat_to
    tail.append(v2.Normalize(mean, std))
    head = [v2.ToImage()]
    return v2.Compose(head + train_geo + tail), v2.Compose(head + val_geo + tail)
