"""Detection- and segmentation-safe transforms (torchvision ``transforms.v2``) and collate functions.

Boxes (``tv_tensors.BoundingBoxes``) and masks (``tv_tensors.Mask``) follow every geometric
transform; masks are resized with nearest neighbours and padded with 255 (ignore).

Detection policies (``augment=``): ``none`` (resize only), ``flip``, ``light`` (photometric
distortion + flip, the default), ``ssd`` (torchvision's SSDlite recipe: photometric distortion,
zoom-out, IoU crop, flip). Resize: ``"square"`` warps to SxS (SSD's fixed input),
``"short"`` scales the shorter side to S with the longer at most 2S (Faster R-CNN's rule). Training
pipelines end with ``SanitizeBoundingBoxes`` (boxes under 1 px after augmentation are removed with
their labels and difficult flags). Images come out as float32 in [0, 1]: torchvision's detectors
normalize inside the model.

Segmentation policies: ``none`` (longest side to S, padded to SxS), ``flip``, ``light`` (random
scale of the shorter side in [S/2, 2S], random SxS crop, flip, colour jitter; the default).
Images come out normalized with the ImageNet statistics, masks as int64.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from .common import DataError

__all__ = ["DETECTION_AUGMENTS", "SEGMENTATION_AUGMENTS", "IMAGENET_MEAN", "IMAGENET_STD", "PadTo",
           "detection_transforms", "segmentation_transforms", "detection_collate", "segmentation_collate"]

DETECTION_AUGMENTS = ("none", "flip", "light", "ssd")
SEGMENTATION_AUGMENTS = ("none", "flip", "light")
RESIZE_MODES = ("square", "short")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MASK_FILL = {tv_tensors.Image: 0, tv_tensors.Mask: 255}


def _check(value: str, choices: Sequence[str], what: str) -> str:
    key = str(value).strip().lower()
    if key not in choices:
        raise DataError(f"unknown {what} {value!r}; accepted: {', '.join(choices)}")
    return key


def _check_size(img_size: int) -> int:
    if not isinstance(img_size, int) or img_size < 8:
        raise DataError(f"img_size must be an integer >= 8, got {img_size!r}")
    return img_size


class PadTo(v2.Transform):
    """Pad images and masks on the right and bottom to ``size`` x ``size`` (images with 0, masks with 255)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = int(size)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return inpt
        h, w = v2.functional.get_size(inpt)
        pad_w, pad_h = max(0, self.size - w), max(0, self.size - h)
        if not (pad_w or pad_h):
            return inpt
        fill = 255 if isinstance(inpt, tv_tensors.Mask) else 0
        return v2.functional.pad(inpt, [0, 0, pad_w, pad_h], fill=fill)


def _detection_resize(img_size: int, resize: str) -> v2.Transform:
    if _check(resize, RESIZE_MODES, "resize mode") == "square":
        return v2.Resize((img_size, img_size), antialias=True)
    return v2.Resize(img_size, max_size=2 * img_size, antialias=True)


def _sanitize_getter(inputs: Any):
    target = inputs[1]
    return target["labels"], target["difficult"]


def detection_transforms(augment: str, img_size: int, *, train: bool, resize: str = "square") -> v2.Compose:
    """A v2 pipeline taking ``(image, target)`` of :class:`~repact.data.voc.VOCDetection`."""
    aug = _check(augment, DETECTION_AUGMENTS, "detection augmentation")
    size = _check_size(img_size)
    steps: list = []
    if train and aug == "ssd":
        steps += [v2.RandomZoomOut(fill={tv_tensors.Image: (123, 117, 104), "others": 0}, side_range=(1.0, 2.0)),
                  v2.RandomIoUCrop()]
    if train and aug != "none":
        steps.append(v2.RandomHorizontalFlip())
    steps.append(_detection_resize(size, resize))
    if train and aug in ("light", "ssd"):
        steps.append(v2.RandomPhotometricDistort(p=0.5))  # after the resize: 4x cheaper on 640x480 images
    if train:
        steps.append(v2.SanitizeBoundingBoxes(labels_getter=_sanitize_getter))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


def segmentation_transforms(augment: str, img_size: int, *, train: bool, mean: Sequence[float] = IMAGENET_MEAN,
                            std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """A v2 pipeline taking ``(image, mask)`` of :class:`~repact.data.voc.VOCSegmentation`; SxS out."""
    aug = _check(augment, SEGMENTATION_AUGMENTS, "segmentation augmentation")
    size = _check_size(img_size)
    if train and aug == "light":
        steps: list = [v2.RandomResize(size // 2, 2 * size, antialias=True),
                       v2.RandomCrop(size, pad_if_needed=True, fill=_MASK_FILL),
                       v2.RandomHorizontalFlip(), v2.ColorJitter(0.2, 0.2, 0.2)]
    else:
        steps = [v2.Resize(size=None, max_size=size, antialias=True), PadTo(size)]
        if train and aug == "flip":
            steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
              v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(torch.Tensor)


def detection_collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]):
    """``(images, targets)``: a list of 3xHxW float tensors and a list of plain-tensor target dicts."""
    images = [_plain(img) for img, _ in batch]
    targets = [{k: (_plain(v) if torch.is_tensor(v) else v) for k, v in t.items()} for _, t in batch]
    return images, targets


def segmentation_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]):
    """``(images, masks)``: Nx3xSxS float and NxSxS int64 (255 = ignore)."""
    images = torch.stack([_plain(img) for img, _ in batch])
    masks = torch.stack([_plain(m).long() for _, m in batch])
    return images, masks
