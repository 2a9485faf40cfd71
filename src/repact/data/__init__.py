"""Datasets for training and evaluation: ``build_datasets(name, data_dir, ...) -> (train, val, DataInfo)``.

=================  ==========================================================================
``digits``         scikit-learn's bundled 8x8 digits (no download; the embedded default)
``mnist``          ``<data-dir>/MNIST/raw/`` IDX files (torchvision layout)
``fashion_mnist``  ``<data-dir>/FashionMNIST/raw/`` IDX files
``cifar10``        ``<data-dir>/cifar-10-batches-py/`` python pickles (torchvision layout)
``cifar100``       ``<data-dir>/cifar-100-python/`` python pickles
``imagefolder``    ``<data-dir>/train/<class>/*`` and ``<data-dir>/val/<class>/*``
``imagenet100``    an ImageNet folder (train/ + val/ by WordNet id) restricted to the RepAct list
=================  ==========================================================================
"""

from __future__ import annotations

from pathlib import Path

from .cache import CACHE_MODES
from .common import DataError, DataInfo, TensorImageDataset, UnreadableImage
from .subsets import balanced_indices, balanced_subset
from .transforms import AUGMENTS, build_transforms, resolve_augment

__all__ = ["DATASETS", "AUGMENTS", "CACHE_MODES", "DataError", "UnreadableImage", "DataInfo", "TensorImageDataset",
           "build_datasets", "dataset_channels", "list_datasets", "imagenet100_classes", "balanced_indices",
           "balanced_subset"]

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder", "imagenet100")

_STATS = {
    "digits": ((0.305,), (0.376,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def list_datasets() -> list[str]:
    return list(DATASETS)


def normalize_name(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    key = {"fashionmnist": "fashion_mnist", "cifar_10": "cifar10", "cifar_100": "cifar100",
           "image_folder": "imagefolder", "imagenet_100": "imagenet100"}.get(key, key)
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")
    return key


def dataset_channels(name: str) -> int:
    """Channels of the dataset's images (1 for the digit datasets, 3 otherwise)."""
    return 1 if normalize_name(name) in ("digits", "mnist", "fashion_mnist") else 3


def imagenet100_classes() -> list[str]:
    from .folders import imagenet100_classes as _f

    return _f()


def build_datasets(
    name: str,
    data_dir: str | Path | None = None,
    *,
    img_size: int | None = None,
    augment: str = "auto",
    download: bool = False,
    channels: int | None = None,
    cache: str = "auto",
    skip_bad_images: bool = False,
    train_subset: int | None = None,
):
    """(train dataset, val dataset, :class:`DataInfo`) for a dataset name.

    ``data_dir`` defaults to ``./data`` (unused by ``digits``). ``img_size`` defaults to the native
    size (8, 28, 32; the first image's size for folders of images up to 64 px, else 224).
    ``channels=3`` repeats gray images to three channels for RGB-only models.
    Missing or malformed folders raise :class:`DataError` naming the path and the expected layout.
    Image folders only: ``cache`` (auto/on/off) decodes each split once into a memory-mapped file
    (:mod:`repact.data.cache`); ``skip_bad_images`` leaves unreadable files out (listed in
    ``DataInfo.skipped``) instead of failing on them. ``train_subset`` keeps a fixed class-balanced
    subset of that many training images (:func:`balanced_indices`, the same for every seed).
    """
    key = normalize_name(name)
    root = Path(data_dir) if data_dir is not None else Path("data")
    if img_size is not None and (int(img_size) < 1 or int(img_size) != img_size):
        raise DataError(f"img_size must be a positive integer, got {img_size!r}")
    native_ch = dataset_channels(key)
    if channels not in (None, native_ch) and not (native_ch == 1 and channels == 3):
        raise DataError(f"{key} has {native_ch}-channel images; a model taking {channels} channels cannot use it")
    if str(cache) not in CACHE_MODES:
        raise DataError(f"unknown cache mode {cache!r}; accepted: {', '.join(CACHE_MODES)}")
    if train_subset is not None and (int(train_subset) < 1 or int(train_subset) != train_subset):
        raise DataError(f"train_subset must be a positive integer, got {train_subset!r}")
    if key in ("imagefolder", "imagenet100"):
        train, val, info = _folders(key, root, img_size, augment, cache, skip_bad_images)
    else:
        train, val, info = _arrays(key, root, img_size, augment, download, channels, native_ch)
    if train_subset is not None and train_subset < len(train):
        train = balanced_subset(train, int(train_subset))
        info.train_size = len(train)
    return train, val, info


def _arrays(key: str, root: Path, img_size: int | None, augment: str, download: bool, channels: int | None,
            native_ch: int):
    from . import arrays

    if key == "digits":
        xt, yt, xv, yv, classes = arrays.load_digits_arrays()
        family, src = "digits", None
    elif key in ("mnist", "fashion_mnist"):
        xt, yt, xv, yv, classes = arrays.load_mnist_arrays(root, key == "fashion_mnist", download)
        family, src = "digits", str(root)
    else:
        xt, yt, xv, yv, classes = arrays.load_cifar_arrays(key, root, download)
        family, src = "cifar", str(root)
    native = int(xt.shape[-1])
    size = int(img_size or native)
    mean, std = _STATS[key]
    policy = resolve_augment(augment, family, size)
    t_train, t_val = build_transforms(policy, size, mean, std, native_size=native, repeat_to=channels)
    train = TensorImageDataset(xt, yt, t_train)
    val = TensorImageDataset(xv, yv, t_val)
    info = DataInfo(key, len(classes), channels or native_ch, size, classes, mean, std, len(train), len(val), src)
    return train, val, info


def _folders(key: str, root: Path, img_size: int | None, augment: str, cache: str, skip_bad_images: bool):
    from .folders import first_image_size, imagenet100_classes, load_folder_pair

    classes = imagenet100_classes() if key == "imagenet100" else None
    train, val, classes = load_folder_pair(root, classes, what=key, cache=cache, skip_bad_images=skip_bad_images)
    size = img_size
    if size is None:
        first = first_image_size(train)
        size = first if first is not None and first <= 64 else 224
    mean, std = _STATS["imagenet"]
    policy = resolve_augment(augment, "folder", int(size))
    train.transform, val.transform = build_transforms(policy, int(size), mean, std)
    info = DataInfo(key, len(classes), 3, int(size), classes, mean, std, len(train), len(val), str(root),
                    skipped=[*train.skipped, *val.skipped])
    return train, val, info
