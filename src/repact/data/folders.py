"""Image folders: any ``train/`` + ``val/`` tree, and ImageNet-100 (the RepAct class list)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .common import DataError, require_dir

__all__ = ["ClassFolder", "imagenet100_classes", "load_folder_pair", "first_image_size"]

_LAYOUT = "<data-dir>/train/<class>/<image> and <data-dir>/val/<class>/<image> (ImageFolder)"


class ClassFolder(ImageFolder):
    """ImageFolder with a fixed class list (index = position), so train and val share one mapping.
    Class folders absent on disk are allowed here and checked by the caller."""

    def __init__(self, root: str, classes: list[str], transform=None) -> None:
        self._fixed = list(classes)
        super().__init__(root, transform=transform, allow_empty=True)

    def find_classes(self, directory):
        return list(self._fixed), {c: i for i, c in enumerate(self._fixed)}


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


def load_folder_pair(data_dir: Path, classes: list[str] | None = None, what: str = "imagefolder"
                     ) -> tuple[ClassFolder, ClassFolder, list[str]]:
    """(train, val, classes) for ``data_dir/train`` and ``data_dir/val``.

    Without ``classes`` the train subfolders define them (sorted); a val class missing from train is
    an error. With ``classes`` every listed class must be present in both splits; other folders are ignored.
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
    return _open_split(train_dir, classes, what), _open_split(val_dir, classes, what), list(classes)


def imagenet100_classes() -> list[str]:
    """The 100 ImageNet synsets of the RepAct experiments, in label order (shipped with the package)."""
    text = resources.files("repact.data").joinpath("imagenet100_repact_classes.json").read_text(encoding="utf-8")
    table = json.loads(text)
    return [table[str(i)] for i in range(len(table))]


def first_image_size(ds: ClassFolder) -> int | None:
    """The larger side of the first image (to pick a default input size), or None if unreadable."""
    try:
        img = ds.loader(ds.samples[0][0])
        return max(img.size)
    except Exception:
        return None
