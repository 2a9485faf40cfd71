"""Train/val transforms on uint8 images, applied a batch at a time (torchvision ``transforms.v2``).

A dataset hands its decoded uint8 images to :meth:`ImagePipeline.batch`, which resizes them
(deterministic ``v2`` ops, on the whole batch when the images share one size), applies the random
augmentation, and converts the batch to normalized float32 once. Random crops with padding and
horizontal flips are drawn per image and applied to the whole batch in one indexing op; random
resized crops, jitter and rotations run per image (``v2``). The pipeline does not care where the
uint8 pixels came from (a file, the decoded-image cache, an in-memory array), so the same seed gives
the same batches from each.

Randomness: once :func:`reseed_augmentation` has given the training set's pipeline (seed, epoch),
every image's random draws come from its own seed, :func:`sample_seeds` of (seed, epoch, sample
index). An image is augmented the same whichever loader worker, batch or DDP rank draws it, so
``--workers 0`` and ``--workers 4`` train bitwise alike and a run may resume with other ``--workers``.
A pipeline not reseeded (or called without sample indices) draws one number per batch from torch's
global generator instead.

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

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .common import DataError

__all__ = ["AUGMENTS", "ImagePipeline", "build_transforms", "random_crop_flip", "resolve_augment", "to_uint8_image",
           "sample_seeds", "reseed_augmentation"]

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


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's step on uint64 values: a bijective scramble (counter-based random numbers)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def sample_seeds(seed: int, epoch: int, keys: Sequence[int]) -> np.ndarray:
    """One uint64 seed per sample index in ``keys``, a function of (seed, epoch, index) alone."""
    h = _mix64(np.uint64(int(seed) % 2**64))
    h = _mix64(h ^ np.uint64(int(epoch) % 2**64))
    return _mix64(h ^ np.asarray(keys, dtype=np.int64).astype(np.uint64))


def _uniforms(seeds: np.ndarray, k: int) -> np.ndarray:
    """(N, k) float64 numbers in [0, 1), the j-th of image i a function of ``seeds[i]`` and j alone."""
    with np.errstate(over="ignore"):
        counters = seeds[:, None] + np.arange(1, k + 1, dtype=np.uint64)[None, :] * _GOLDEN
    return (_mix64(counters) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def random_crop_flip(batch: torch.Tensor, padding: int, seeds: np.ndarray) -> torch.Tensor:
    """Per image: a random ``H x W`` crop of the zero-padded image and a horizontal flip with p=0.5.

    ``batch`` is (N, C, H, W); image i's offsets and flip follow from ``seeds[i]`` alone (see
    :func:`sample_seeds`), and the crops are applied in one ``gather``.
    """
    n, c, h, w = batch.shape
    padded = torch.nn.functional.pad(batch, (padding, padding, padding, padding))
    u = _uniforms(np.asarray(seeds, dtype=np.uint64).reshape(n), 3)
    span = 2 * padding + 1
    top, left = (torch.from_numpy(np.minimum((u[:, j] * span).astype(np.int64), span - 1)) for j in (0, 1))
    flip = torch.from_numpy(u[:, 2] < 0.5)
    cols = torch.arange(w).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + left[:, None]
    rows = top[:, None] + torch.arange(h)
    flat = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return padded.reshape(n, c, -1).gather(2, flat).reshape(n, c, h, w)


def reseed_augmentation(dataset, seed: int, epoch: int) -> bool:
    """Give the pipeline of ``dataset`` (or of the dataset a ``Subset`` wraps) the (seed, epoch) its
    per-sample random draws follow; False when it has no :class:`ImagePipeline`."""
    from torch.utils.data import Subset

    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    pipeline = getattr(dataset, "transform", None)
    if not isinstance(pipeline, ImagePipeline):
        return False
    pipeline.reseed(seed, epoch)
    return True


class ImagePipeline:
    """uint8 images -> a normalized float32 batch.

    ``prep``: deterministic ``v2`` ops (resize, center crop), run on the stacked batch when the
    images share one size, else per image. ``per_image``: random ``v2`` ops run on each image (random
    resized crop, jitter, rotation). ``crop_padding``: the batched random crop + flip of
    :func:`random_crop_flip`. Then: to float in [0, 1], gray repeated to ``repeat_to`` channels,
    normalized with ``mean``/``std``. Random draws: see the module's docstring.
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
        self.epoch_seed: tuple[int, int] | None = None

    def reseed(self, seed: int, epoch: int) -> None:
        """From now on image ``k`` of a batch draws from :func:`sample_seeds` (seed, epoch, k)."""
        self.epoch_seed = (int(seed), int(epoch))

    def _seeds(self, n: int, keys: Sequence[int] | None) -> np.ndarray:
        if self.epoch_seed is not None and keys is not None:
            if len(keys) != n:
                raise ValueError(f"{n} images but {len(keys)} sample indices")
            return sample_seeds(*self.epoch_seed, keys)
        base = int(torch.randint(0, 2**62, (1,)))  # not reseeded: one draw from torch's generator per batch
        return sample_seeds(base, 0, range(n))

    def __repr__(self) -> str:
        return (f"ImagePipeline(prep={self.prep}, per_image={self.per_image}, crop_padding={self.crop_padding}, "
                f"repeat_to={self.repeat_to}, mean={self.mean}, std={self.std})")

    def __call__(self, img) -> torch.Tensor:
        """One image (PIL or uint8 tensor) -> its (C, H, W) float32 model input."""
        return self.batch([to_uint8_image(img)])[0]

    def batch(self, images: torch.Tensor | Sequence[torch.Tensor], keys: Sequence[int] | None = None) -> torch.Tensor:
        """A (N, C, H, W) uint8 tensor or a list of (C, H, W) uint8 tensors -> (N, C', S, S) float32.
        ``keys``: the images' sample indices (their random draws follow them once reseeded)."""
        if isinstance(images, torch.Tensor):
            stack, items = images.as_subclass(torch.Tensor), None
        else:
            items = [to_uint8_image(im) for im in images]
            same = len({tuple(im.shape) for im in items}) == 1
            stack = torch.stack(items) if same else None
        n = len(stack) if stack is not None else len(items)
        seeds = self._seeds(n, keys) if self.per_image is not None or self.crop_padding else None
        if self.prep is not None:
            stack = self.prep(stack) if stack is not None else torch.stack([self.prep(im) for im in items])
        if self.per_image is not None:
            rows = stack.unbind(0) if stack is not None else items
            out = []
            with torch.random.fork_rng(devices=[]):  # v2's random ops draw from torch's generator: seed it per image
                for im, s in zip(rows, seeds):
                    torch.default_generator.manual_seed(int(s))  # the CPU generator only: ~us, not ~ms
                    out.append(self.per_image(im).as_subclass(torch.Tensor))
            stack = torch.stack(out)
        if stack is None:
            sizes = sorted({tuple(im.shape[1:]) for im in items})
            raise DataError(f"a batch holds images of different sizes ({', '.join(map(str, sizes[:4]))}) and the "
                            "transform has no resize; pass --img-size")
        stack = stack.as_subclass(torch.Tensor)
        if self.crop_padding:
            stack = random_crop_flip(stack, self.crop_padding, seeds)
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
