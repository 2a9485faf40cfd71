"""Reading image files into uint8 tensors: one file (naming it when it cannot be decoded), or every
file of a list in parallel processes (for the decoded-image cache and the ``--skip-bad-images`` scan)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .common import UnreadableImage

__all__ = ["read_image", "decode_files", "unreadable", "SKIP_HINT"]

SKIP_HINT = "pass --skip-bad-images to leave unreadable images out"


def _decode(path: str | Path) -> np.ndarray:
    """(3, H, W) uint8 pixels of an image file, as torchvision's ImageFolder loader reads it (PIL, RGB)."""
    from PIL import Image

    with open(path, "rb") as fh:
        img = Image.open(fh)
        img = img.convert("RGB")  # decodes the whole file: truncated data fails here
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")


def unreadable(files: Sequence[tuple[str, str]], folder: str | Path) -> UnreadableImage:
    """The one error for unreadable images ``(path, reason)`` of ``folder``: the same words whether a
    batch meets the file or the decoded-image cache found it (up to five named)."""
    if len(files) == 1:
        path, why = files[0]
        return UnreadableImage(f"cannot read image {path} ({why}); {SKIP_HINT}")
    listed = "; ".join(f"{p} ({why})" for p, why in files[:5])
    return UnreadableImage(f"cannot read {len(files)} images under {folder}: {listed}"
                           f"{' ...' if len(files) > 5 else ''}; {SKIP_HINT}")


def read_image(path: str | Path) -> torch.Tensor:
    """The (3, H, W) uint8 tensor of an image file; :class:`UnreadableImage` naming the file otherwise."""
    try:
        return torch.from_numpy(_decode(path))
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError ...
        raise unreadable([(str(path), _reason(exc))], Path(path).parent) from None


class _DecodeJob(Dataset):
    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, _decode(self.paths[i]), None
        except Exception as exc:
            return i, None, _reason(exc)


def _workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(0, min(8, cores))


def decode_files(paths: Sequence[str], workers: int | None = None,
                 progress: Callable[[int], None] | None = None) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """``(index, pixels or None, error or None)`` for every path, in order, decoded by ``workers``
    processes (default: the usable cores, at most 8; none for short lists).

    Draws no number from torch's global generator: the loader's own generator gives its workers'
    seed, so a run that builds the decoded-image cache seeds its model exactly as one that reads it.
    """
    if workers is None:
        workers = _workers() if len(paths) >= 512 else 0
    loader = DataLoader(_DecodeJob(paths), batch_size=64, num_workers=workers, collate_fn=list,
                        prefetch_factor=4 if workers else None, generator=torch.Generator())
    done = 0
    for chunk in loader:
        yield from chunk
        done += len(chunk)
        if progress is not None:
            progress(done)
