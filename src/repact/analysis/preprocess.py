"""What a model expects of an image (size, channels, normalization, the val resize/crop), recorded in
its checkpoint's ``model_config["preprocess"]``, and loading a plain image file with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["preprocess_record", "preprocess_from", "imagenet_preprocess", "check_image_file", "load_image",
           "LoadedImage"]


def preprocess_record(info, augment: str = "auto") -> dict[str, Any]:
    """The record a checkpoint keeps from a dataset's :class:`~repact.data.DataInfo`: input size and
    channels, the image's own channels, mean/std, the augmentation policy whose val transform
    (resize and center crop) the model was evaluated with, and the class names."""
    from ..data.transforms import resolve_augment

    image_channels = len(info.mean) or info.in_channels
    family = ("digits" if image_channels == 1 else "cifar" if str(info.name).startswith("cifar") else "folder")
    return {"img_size": int(info.img_size), "channels": int(info.in_channels), "image_channels": int(image_channels),
            "mean": [float(v) for v in info.mean], "std": [float(v) for v in info.std],
            "augment": resolve_augment(augment, family, int(info.img_size)), "dataset": info.name,
            "classes": [str(c) for c in info.classes]}


def imagenet_preprocess(img_size: int = 224, channels: int = 3) -> dict[str, Any]:
    """torchvision's ImageNet convention, for a model built by name (no checkpoint to ask)."""
    from ..data import _STATS

    mean, std = _STATS["imagenet"]
    return {"img_size": int(img_size), "channels": int(channels), "image_channels": 3, "mean": list(mean),
            "std": list(std), "augment": "imagenet", "dataset": None, "classes": []}


def preprocess_from(model_config: Mapping[str, Any], state: Mapping[str, Any] | None = None,
                    img_size: int | None = None) -> dict[str, Any]:
    """A checkpoint's preprocessing: its ``preprocess`` record, else what its training state says
    (``data`` and ``config.augment``, checkpoints written before the record existed), else ImageNet's
    at ``img_size`` (or the recorded input shape, or 224). ``img_size`` overrides the size."""
    pre = model_config.get("preprocess")
    if not pre and state and isinstance(state.get("data"), Mapping):
        from ..data.common import DataInfo

        d = dict(state["data"])
        fields = {k: d[k] for k in ("name", "num_classes", "in_channels", "img_size") if k in d}
        if len(fields) == 4:
            info = DataInfo(**fields, classes=list(d.get("classes", [])), mean=tuple(d.get("mean", ())),
                            std=tuple(d.get("std", ())))
            pre = preprocess_record(info, dict(state.get("config", {})).get("augment", "auto"))
    if not pre:
        shape = model_config.get("input_shape") or [3, 224, 224]
        pre = imagenet_preprocess(int(shape[-1]), int(shape[0]))
    pre = dict(pre)
    if img_size is not None:
        if img_size < 1:
            raise ValueError(f"the image size must be a positive integer, got {img_size}")
        pre["img_size"] = int(img_size)
    return pre


class LoadedImage:
    """A model input (1, C, S, S) and the same crop for display ((S, S, 3) floats in [0, 1])."""

    def __init__(self, path: Path, tensor: torch.Tensor, display: np.ndarray) -> None:
        self.path, self.tensor, self.display = path, tensor, display


def check_image_file(path: str | Path) -> Path:
    """``path`` when it names a file; ``FileNotFoundError`` / ``IsADirectoryError`` saying which it is not."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"image {path} is a folder; give an image file (png, jpg, ...)")
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    return path


def load_image(path: str | Path, pre: Mapping[str, Any]) -> LoadedImage:
    """Read an image file and apply the recorded val transform (resize, center crop, normalize)."""
    from PIL import Image, UnidentifiedImageError

    from ..data.transforms import build_transforms

    path = check_image_file(path)
    try:
        with Image.open(path) as im:
            img = im.convert("L" if int(pre["image_channels"]) == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read {path} as an image: {exc}") from None
    ic, ch, size = int(pre["image_channels"]), int(pre["channels"]), int(pre["img_size"])
    repeat = ch if ch != ic else None
    _, val = build_transforms(pre["augment"], size, pre["mean"], pre["std"], repeat_to=repeat)
    _, geometry = build_transforms(pre["augment"], size, [0.0] * ic, [1.0] * ic)
    x = val(img).unsqueeze(0)
    if x.shape[1] != ch:
        raise ValueError(f"{path} gives a {x.shape[1]}-channel input but the model takes {ch} channels")
    shown = geometry(img).clamp(0, 1)
    shown = shown.expand(3, *shown.shape[1:]) if shown.shape[0] == 1 else shown
    return LoadedImage(path, x, shown.permute(1, 2, 0).numpy().astype(np.float32).copy())
