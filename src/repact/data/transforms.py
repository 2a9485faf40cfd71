"""Train/val transforms on uint8 images, applied a batch at a time (torchvision ``transforms.v2``).

A dataset hands its decoded uint8 images to :meth:`ImagePipeline.batch`, which resizes them
(deterministic ``v2`` ops, on the whole batch when the images share one size), applies the random
augmentation, and converts the batch to normalized float32 once. Random crops with padding and
horizontal flips are drawn per image and applied to the whole batch in one indexing op; random
resized crops, jitter and rotations run per image (``v2``). The pipeline does not care where the
uint8 pixels came from (a file, the decoded-image cache, an in-memory array), so the same seed gives
the same batches from each.

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
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .common import DataError

__all__ = ["AUGMENTS", "ImagePipeline", "build_transforms", "random_crop_flip", "resolve_augment", "to_uint8_image"]

AUGMENTS = ("auto", "none", "crop-flip", "imagenet", "repact-paper")


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


def to_uint8_image(img) -> torch.Tensor:
    """A PIL image or a (C, H, W) / (H, W) uint8 tensor as a plain (C, H, W) uint8 tensor."""
    if isinstance(img, torch.Tensor):
        x = img.as_subclass(torch.Tensor)
        return x.unsqueeze(0) if x.dim() == 2 else x
    return TF.pil_to_tensor(img)


def random_crop_flip(batch: torch.Tensor, padding: int) -> torch.Tensor:
    """Per image: a random ``H x W`` crop of the zero-padded image and a horizontal flip with p=0.5.

    ``batch`` is (N, C, H, W); the offsets and flips are drawn from torch's global generator (two
    ``randint`` and one ``rand`` call per batch) and applied in one ``gather``.
    """
    n, c, h, w = batch.shape
    padded = torch.nn.functional.pad(batch, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (n,))
    left = torch.randint(0, 2 * padding + 1, (n,))
    flip = torch.rand(n) < 0.5
    cols = torch.arange(w).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + left[:, None]
    rows = top[:, None] + torch.arange(h)
    flat = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return padded.reshape(n, c, -1).gather(2, flat).reshape(n, c, h, w)


class ImagePipeline:
    """uint8 images -> a normalized float32 batch.

    ``prep``: deterministic ``v2`` ops (resize, center crop), run on the stacked batch when the
    images share one size, else per image. ``per_image``: random ``v2`` ops run on each image (random
    resized crop, jitter, rotation). ``crop_padding``: the batched random crop + flip of
    :func:`random_crop_flip`. Then: to float in [0, 1], gray repeated to ``repeat_to`` channels,
    normalized with ``mean``/``std``.
    """

    def __init__(self, *, prep: Sequence = (), per_image: Sequence = (), crop_padding: int | None = None,
                 mean: Sequence[float], std: Sequence[float], repeat_to: int | None = None) -> None:
        self.prep = v2.Compose(list(prep)) if prep else None
        self.per_image = v2.Compose(list(per_image)) if per_image else None
        self.crop_padding = crop_padding
        self.repeat_to = repeat_to if repeat_to and len(mean) == 1 and repeat_to != 1 else None
        mean, std = list(mean), list(std)
        if self.repeat_to:
            mean, std = mean * self.repeat_to, std * self.repeat_to
        self.mean, self.std = mean, std

    def __repr__(self) -> str:
        return (f"ImagePipeline(prep={self.prep}, per_image={self.per_image}, crop_padding={self.crop_padding}, "
                f"repeat_to={self.repeat_to}, mean={self.mean}, std={self.std})")

    def __call__(self, img) -> torch.Tensor:
        """One image (PIL or uint8 tensor) -> its (C, H, W) float32 model input."""
        return self.batch([to_uint8_image(img)])[0]

    def batch(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """A (N, C, H, W) uint8 tensor or a list of (C, H, W) uint8 tensors -> (N, C', S, S) float32."""
        if isinstance(images, torch.Tensor):
            stack, items = images.as_subclass(torch.Tensor), None
        else:
            items = [to_uint8_image(im) for im in images]
            same = len({tuple(im.shape) for im in items}) == 1
            stack = torch.stack(items) if same else None
        if self.prep is not None:
            stack = self.prep(stack) if stack is not None else torch.stack([self.prep(im) for im in items])
        if self.per_image is not None:
            rows = stack.unbind(0) if stack is not None else items
            stack = torch.stack([self.per_image(im).as_subclass(torch.Tensor) for im in rows])
        if stack is None:
            sizes = sorted({tuple(im.shape[1:]) for im in items})
            raise DataError(f"a batch holds images of different sizes ({', '.join(map(str, sizes[:4]))}) and the "
                            "transform has no resize; pass --img-size")
        stack = stack.as_subclass(torch.Tensor)
        if self.crop_padding:
            stack = random_crop_flip(stack, self.crop_padding)
        x = TF.to_dtype(stack, torch.float32, scale=True)
        if self.repeat_to and x.shape[1] == 1:
            x = x.expand(-1, self.repeat_to, -1, -1)
        return TF.normalize(x, self.mean, self.std)


def build_transforms(
    augment: str,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    native_size: int | None = None,
    repeat_to: int | None = None,
) -> tuple[ImagePipeline, ImagePipeline]:
    """(train, val) pipelines taking uint8 images (PIL images one at a time, tensors also in batches).

    ``native_size`` is the dataset's own square size when known (in-memory data): no resize is
    added when it equals ``img_size``. ``repeat_to`` repeats gray images to that many channels
    (mean/std are repeated to match).
    """
    if augment == "auto":
        raise ValueError("resolve 'auto' with resolve_augment() first")
    s = int(img_size)
    same = native_size is not None and native_size == s
    resize = [] if same else [v2.Resize(s, antialias=True), v2.CenterCrop(s)]
    common = dict(mean=mean, std=std, repeat_to=repeat_to)
    if augment == "none":
        return ImagePipeline(prep=resize, **common), ImagePipeline(prep=resize, **common)
    if augment == "crop-flip":
        return (ImagePipeline(prep=resize, crop_padding=max(1, s // 8), **common),
                ImagePipeline(prep=resize, **common))
    if augment == "imagenet":
        return (ImagePipeline(per_image=[v2.RandomResizedCrop(s, antialias=True), v2.RandomHorizontalFlip()],
                              **common),
                ImagePipeline(prep=[v2.Resize(round(s / 0.875), antialias=True), v2.CenterCrop(s)], **common))
    if augment == "repact-paper":
        return (ImagePipeline(per_image=[v2.RandomResizedCrop(s, antialias=True), v2.ColorJitter(0.4, 0.4, 0.4),
                                         v2.RandomHorizontalFlip(), v2.RandomRotation(15)], **common),
                ImagePipeline(prep=[v2.Resize(round(s * 256 / 224), antialias=True), v2.CenterCrop(s)], **common))
    raise DataError(f"unknown augmentation {augment!r}; accepted: {', '.join(AUGMENTS)}")
