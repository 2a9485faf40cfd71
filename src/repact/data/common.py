"""Shared pieces of the dataset builders: the error type, the dataset description, an in-memory dataset."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset

__all__ = ["DataError", "UnreadableImage", "DataInfo", "TensorImageDataset", "require_dir", "dataset_targets"]


class DataError(ValueError):
    """A data folder is missing or malformed, or a dataset name/option is unknown."""


class UnreadableImage(DataError):
    """An image file that cannot be decoded; the message names the file.

    Raised inside a DataLoader worker, torch re-raises it in the main process as
    ``UnreadableImage("Caught UnreadableImage in DataLoader worker process 0. Original Traceback ...")``;
    the constructor keeps only the original one-line message.
    """

    def __init__(self, message: str) -> None:
        text = str(message)
        if text.startswith("Caught "):
            tag = f"{type(self).__name__}: "
            lines = [ln for ln in text.splitlines() if tag in ln]
            if lines:
                text = lines[-1].split(tag, 1)[1]
        super().__init__(text)


@dataclass
class DataInfo:
    """What a model and the engine need to know about a dataset."""

    name: str
    num_classes: int
    in_channels: int
    img_size: int
    classes: list[str] = field(default_factory=list)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    train_size: int = 0
    val_size: int = 0
    root: str | None = None
    skipped: list[str] = field(default_factory=list)  # unreadable images left out (--skip-bad-images)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


class TensorImageDataset(Dataset):
    """Images held in memory as a uint8 tensor (N, C, H, W) with integer labels; ``transform`` gets
    one (C, H, W) uint8 tensor and returns the model input."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | Sequence[int],
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.targets = torch.as_tensor(labels, dtype=torch.long)
        if len(self.targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(self.targets)} labels")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        if hasattr(self.transform, "batch"):
            return self.__getitems__([i])[0]
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[i])

    def __getitems__(self, indices: list[int]) -> list:
        """A DataLoader batch: one call of the transform's batched form (given the sample indices, which
        its random draws follow) when it has one."""
        if not hasattr(self.transform, "batch"):
            return [self[i] for i in indices]
        idx = torch.as_tensor(indices, dtype=torch.long)
        return list(zip(self.transform.batch(self.images[idx], keys=list(indices)), self.targets[idx].tolist()))


def dataset_targets(ds) -> list[int]:
    """The class label of every sample of ``ds`` (ours, an ImageFolder, or a ``Subset`` of one)."""
    from torch.utils.data import Subset

    if isinstance(ds, Subset):
        inner = dataset_targets(ds.dataset)
        return [inner[i] for i in ds.indices]
    targets = getattr(ds, "targets", None)
    if targets is None:
        raise TypeError(f"{type(ds).__name__} has no 'targets'; a class-balanced subset needs the labels")
    return [int(t) for t in (targets.tolist() if isinstance(targets, torch.Tensor) else targets)]


def require_dir(path: Path, what: str, layout: str, hint: str = "") -> Path:
    """``path`` if it is a folder; a :class:`DataError` naming it and the expected layout otherwise."""
    hint = f"; {hint}" if hint else ""
    if not path.exists():
        raise DataError(f"{what}: {path} does not exist. Expected layout: {layout}{hint}")
    if not path.is_dir():
        raise DataError(f"{what}: {path} is not a folder. Expected layout: {layout}{hint}")
    return path
