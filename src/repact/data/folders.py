"""Image folders: any ``train/`` + ``val/`` tree, and ImageNet-100 (the RepAct class list).

Images are read as uint8 tensors, from the files or from the decoded-image cache
(:mod:`repact.data.cache`), and transformed a batch at a time; an unreadable file is named in an
error, or left out (and counted) with ``skip_bad_images``, the same with and without the cache.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Callable

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .cache import DecodedImages, _say, open_decoded, scan_unreadable
from .common import DataError, require_dir
from .images import read_image, unreadable

__all__ = ["ClassFolder", "imagenet100_classes", "load_folder_pair", "first_image_size"]

_LAYOUT = "<data-dir>/train/<class>/<image> and <data-dir>/val/<class>/<image> (ImageFolder)"


class ClassFolder(ImageFolder):
    """ImageFolder with a fixed class list (index = position), so train and val share one mapping.
    Class folders absent on disk are allowed here and checked by the caller.

    Items are ``(transform(uint8 image), label)``; a DataLoader fetches whole batches through
    ``__getitems__`` (one batched transform). :meth:`use_pixels` switches to the decoded cache and
    leaves out unreadable files.
    """

    def __init__(self, root: str, classes: list[str], transform=None) -> None:
        self._fixed = list(classes)
        super().__init__(root, transform=transform, allow_empty=True)
        self.decoded: DecodedImages | None = None
        self.source_index = list(range(len(self.samples)))  # item -> position in the folder's file list
        self.skipped: list[str] = []

    def find_classes(self, directory):
        return list(self._fixed), {c: i for i, c in enumerate(self._fixed)}

    def use_pixels(self, cache: str, skip_bad_images: bool, say: Callable[[str], None] = _say) -> None:
        """Attach the decoded-image cache (``cache``: auto/on/off) and apply the unreadable-file rule."""
        self.decoded = open_decoded(Path(self.root), self.samples, self._fixed, cache, say)
        if self.decoded is not None:
            bad = self.decoded.bad
        elif skip_bad_images:
            bad = scan_unreadable([p for p, _ in self.samples], say)
        else:
            return  # an unreadable file is named when a batch reaches it
        if not bad:
            return
        names = [self.samples[i][0] for i in sorted(bad)]
        if not skip_bad_images:
            raise unreadable([(self.samples[i][0], bad[i]) for i in sorted(bad)], self.root)
        keep = [i for i in range(len(self.samples)) if i not in bad]
        self.source_index = keep
        self.samples = [self.samples[i] for i in keep]
        self.imgs = self.samples
        self.targets = [s[1] for s in self.samples]
        self.skipped = names
        say(f"left out {len(names)} unreadable image(s) of {self.root} (--skip-bad-images): "
            f"{', '.join(names[:3])}{' ...' if len(names) > 3 else ''}")

    def pixels(self, indices: list[int]):
        """uint8 images of the items: a (N, C, H, W) tensor from the cache, or a list of (C, H, W)."""
        if self.decoded is not None:
            return self.decoded.batch([self.source_index[i] for i in indices])
        return [read_image(self.samples[i][0]) for i in indices]

    def __getitem__(self, index: int):
        if hasattr(self.transform, "batch"):
            return self.__getitems__([index])[0]
        x = self.pixels([index])[0]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.samples[index][1]

    def __getitems__(self, indices: list[int]) -> list:
        if not hasattr(self.transform, "batch"):
            return [self[i] for i in indices]
        x = self.transform.batch(self.pixels(indices), keys=list(indices))
        return list(zip(x, (self.samples[i][1] for i in indices)))


def _class_dirs(split: Path) -> list[str]:
    return sorted(e.name for e in split.iterdir() if e.is_dir() and not e.name.startswith("."))


def _open_split(split: Path, classes: list[str], what: str) -> ClassFolder:
    try:
        ds = ClassFolder(str(split), classes)
    except (OSError, FileNotFoundError) as exc:
        raise DataError(f"{what}: cannot read {split}: {exc}. Expected layout: {_LAYOUT}") from None
    if len(ds) == 0:
        raise DataError(f"{what}: {split} holds no images ({', '.join(sorted(IMG_EXTENSIONS))}) in its class "
                        f"folders. Expected layout: {_LAYOUT}")
    return ds


def load_folder_pair(data_dir: Path, classes: list[str] | None = None, what: str = "imagefolder", *,
                     cache: str = "auto", skip_bad_images: bool = False
                     ) -> tuple[ClassFolder, ClassFolder, list[str]]:
    """(train, val, classes) for ``data_dir/train`` and ``data_dir/val``.

    Without ``classes`` the train subfolders define them (sorted); a val class missing from train is
    an error. With ``classes`` every listed class must be present in both splits; other folders are ignored.
    ``cache`` and ``skip_bad_images``: see :meth:`ClassFolder.use_pixels`.
    """
    data_dir = Path(data_dir)
    require_dir(data_dir, f"{what} data folder", _LAYOUT)
    train_dir = require_dir(data_dir / "train", f"{what} train split", _LAYOUT)
    val_dir = require_dir(data_dir / "val", f"{what} val split", _LAYOUT)
    train_classes, val_classes = _class_dirs(train_dir), _class_dirs(val_dir)
    if classes is None:
        if not train_classes:
            raise DataError(f"{what}: {train_dir} has no class subfolders. Expected layout: {_LAYOUT}")
        extra = sorted(set(val_classes) - set(train_classes))
        if extra:
            raise DataError(f"{what}: {val_dir} has classes that {train_dir} lacks: {', '.join(extra[:10])}"
                            f"{' ...' if len(extra) > 10 else ''}. Both splits must use the same class folders")
        classes = train_classes
    else:
        for split, have in ((train_dir, train_classes), (val_dir, val_classes)):
            missing = [c for c in classes if c not in set(have)]
            if missing:
                raise DataError(f"{what}: {len(missing)} of the {len(classes)} classes are missing under {split}: "
                                f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}. Expected layout: "
                                f"{_LAYOUT}, with one folder per class (WordNet id)")
    splits = _open_split(train_dir, classes, what), _open_split(val_dir, classes, what)
    for ds in splits:
        ds.use_pixels(cache, skip_bad_images)
    return splits[0], splits[1], list(classes)


def imagenet100_classes() -> list[str]:
    """The 100 ImageNet synsets of the RepAct experiments, in label order (shipped with the package)."""
    text = resources.files("repact.data").joinpath("imagenet100_repact_classes.json").read_text(encoding="utf-8")
    table = json.loads(text)
    return [table[str(i)] for i in range(len(table))]


def first_image_size(ds: ClassFolder) -> int | None:
    """The larger side of the first image (to pick a default input size), or None if unreadable."""
    try:
        return max(ds.pixels([0])[0].shape[1:])
    except Exception:
        return None
