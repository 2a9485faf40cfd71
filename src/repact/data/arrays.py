"""In-memory datasets: scikit-learn's digits, MNIST / Fashion-MNIST (raw IDX) and CIFAR-10/100 (python pickles)."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import DataError, require_dir

__all__ = ["load_digits_arrays", "load_mnist_arrays", "load_cifar_arrays", "resolve_root"]

Arrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]


def _digits_table() -> np.ndarray:
    """scikit-learn's ``digits.csv.gz`` (64 pixels + label per row), read without importing all of sklearn."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the 'digits' dataset is scikit-learn's bundled copy: pip install 'repact[data]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if path.is_file():
        with gzip.open(path, "rt") as fh:
            return np.loadtxt(fh, delimiter=",", dtype=np.float64)
    from sklearn.datasets import load_digits  # a layout this reader does not know: the public API

    d = load_digits()
    return np.concatenate([d.data, d.target[:, None]], axis=1)


def _stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    tr, va = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * val_fraction))
        va.append(idx[:k])
        tr.append(idx[k:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


def load_digits_arrays(val_fraction: float = 0.2) -> Arrays:
    """scikit-learn's bundled 8x8 digits (1,797 images) as uint8, split 80/20 per class with a fixed seed.

    The split does not depend on the training seed, so runs with different seeds share one val set.
    """
    table = _digits_table()
    if table.ndim != 2 or table.shape[1] != 65:
        raise DataError(f"scikit-learn's digits table has shape {table.shape}, expected (N, 65)")
    pixels, target = table[:, :64], table[:, 64].astype(np.int64)
    images = np.clip(np.round(pixels * (255.0 / 16.0)), 0, 255).astype(np.uint8).reshape(-1, 1, 8, 8)
    tr, va = _stratified_split(target, val_fraction, seed=0)
    x = torch.from_numpy(images)
    y = torch.from_numpy(target)
    return x[tr], y[tr], x[va], y[va], [str(c) for c in range(10)]


# ---------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST
# ---------------------------------------------------------------------------------------------

_DOWNLOAD_HINT = "pass --download on a machine with internet access to fetch it"
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")


def resolve_root(data_dir: Path, folder: str) -> Path:
    """torchvision's ``root`` for a dataset kept in ``root/<folder>``; ``data_dir`` may also name
    ``<folder>`` itself or its ``raw`` subfolder."""
    data_dir = Path(data_dir)
    if data_dir.name == "raw" and data_dir.parent.name == folder:
        return data_dir.parent.parent
    if data_dir.name == folder and not (data_dir / folder).exists():
        return data_dir.parent
    return data_dir


def load_mnist_arrays(data_dir: Path, fashion: bool, download: bool) -> Arrays:
    """MNIST or Fashion-MNIST read by torchvision from ``<root>/<MNIST|FashionMNIST>/raw``."""
    from torchvision import datasets

    cls = datasets.FashionMNIST if fashion else datasets.MNIST
    folder = cls.__name__
    name = "fashion_mnist" if fashion else "mnist"
    root = resolve_root(data_dir, folder)
    raw = root / folder / "raw"
    layout = f"<data-dir>/{folder}/raw/ holding {', '.join(_MNIST_FILES)} (uncompressed IDX files)"
    if not download:
        require_dir(raw, f"{name} data folder", layout, _DOWNLOAD_HINT)
        missing = [f for f in _MNIST_FILES if not (raw / f).is_file()]
        if missing:
            raise DataError(f"{name}: {raw} lacks {', '.join(missing)}. Expected layout: {layout}; "
                            "pass --download on a machine with internet access to fetch them")
    try:
        tr = cls(str(root), train=True, download=download)
        va = cls(str(root), train=False, download=download)
    except Exception as exc:  # torchvision raises RuntimeError/AssertionError/ValueError on bad files
        raise DataError(f"{name}: could not read the IDX files in {raw}: {exc}. Expected layout: {layout}") from None
    classes = [str(c) for c in tr.classes]
    return tr.data.unsqueeze(1), tr.targets.long(), va.data.unsqueeze(1), va.targets.long(), classes


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 in torchvision's python-pickle layout
# ---------------------------------------------------------------------------------------------

_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    meta="batches.meta", label_key="labels", names_key="label_names", classes=10),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     label_key="fine_labels", names_key="fine_label_names", classes=100),
}

# what a CIFAR pickle may reference: numpy arrays and dtypes, nothing else
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds only plain containers and numpy arrays (no arbitrary code)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = _ArrayUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, ValueError, TypeError) as exc:
        raise DataError(f"{path} is not a readable CIFAR python pickle: {exc}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, expected a dict with 'data' and labels")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _read_batches(root: Path, files: list[str], label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for f in files:
        path = root / f
        d = _read_pickle(path)
        if "data" not in d or label_key not in d:
            raise DataError(f"{path} lacks the keys 'data' and {label_key!r} (has: {', '.join(map(str, d))})")
        data = np.asarray(d["data"])
        labels = np.asarray(d[label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            raise DataError(f"{path}: 'data' must be uint8 of shape (N, 3072) with N labels, got {data.dtype} "
                            f"{data.shape} and {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{path}: labels must lie in [0, {num_classes - 1}], found {labels.min()}..{labels.max()}")
        xs.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        ys.append(torch.from_numpy(labels))
    return torch.cat(xs), torch.cat(ys)


def load_cifar_arrays(name: str, data_dir: Path, download: bool) -> Arrays:
    """CIFAR-10/100 from torchvision's on-disk pickles (``<root>/cifar-10-batches-py`` or
    ``<root>/cifar-100-python``). ``download`` fetches them first with torchvision (checksummed);
    local files are read without checksums, so subsets in the same format work too."""
    spec = _CIFAR[name]
    folder = spec["folder"]
    root = resolve_root(data_dir, folder)
    if download:
        from torchvision import datasets

        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        try:
            cls(str(root), train=True, download=True)
        except Exception as exc:
            raise DataError(f"{name}: download into {root} failed: {exc}") from None
    base = root / folder
    files = [*spec["train"], *spec["test"], spec["meta"]]
    layout = f"<data-dir>/{folder}/ holding {', '.join(files)} (torchvision's python pickles)"
    require_dir(base, f"{name} data folder", layout, _DOWNLOAD_HINT)
    missing = [f for f in files if not (base / f).is_file()]
    if missing:
        raise DataError(f"{name}: {base} lacks {', '.join(missing)}. Expected layout: {layout}; pass --download "
                        "on a machine with internet access to fetch them")
    xt, yt = _read_batches(base, spec["train"], spec["label_key"], spec["classes"])
    xv, yv = _read_batches(base, spec["test"], spec["label_key"], spec["classes"])
    meta = _read_pickle(base / spec["meta"])
    names = meta.get(spec["names_key"])
    if not isinstance(names, (list, tuple)) or len(names) != spec["classes"]:
        raise DataError(f"{base / spec['meta']}: {spec['names_key']!r} must list {spec['classes']} class names")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return xt, yt, xv, yv, classes
