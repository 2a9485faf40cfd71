"""Small on-disk datasets written by the training tests, in the exact formats users have:
torchvision's CIFAR python pickles and ImageFolder trees of real image files."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np


def write_cifar(root: Path, kind: str = "cifar100", n_train: int = 40, n_test: int = 20, seed: int = 0) -> dict:
    """A tiny CIFAR-10/100 copy in torchvision's layout; returns the arrays written."""
    rng = np.random.RandomState(seed)
    classes = 100 if kind == "cifar100" else 10
    train_x = rng.randint(0, 256, size=(n_train, 3072), dtype=np.uint8)
    test_x = rng.randint(0, 256, size=(n_test, 3072), dtype=np.uint8)
    train_y = [int(v) for v in rng.randint(0, classes, size=n_train)]
    test_y = [int(v) for v in rng.randint(0, classes, size=n_test)]
    if kind == "cifar100":
        base = root / "cifar-100-python"
        base.mkdir(parents=True)
        for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            _dump(base / name, {"filenames": [f"{i}.png" for i in range(len(y))], "batch_label": name,
                                "fine_labels": y, "coarse_labels": [v // 5 for v in y], "data": x})
        _dump(base / "meta", {"fine_label_names": [f"class{i:03d}" for i in range(100)],
                              "coarse_label_names": [f"super{i:02d}" for i in range(20)]})
    else:
        base = root / "cifar-10-batches-py"
        base.mkdir(parents=True)
        chunks = np.array_split(np.arange(n_train), 5)
        for i, idx in enumerate(chunks, 1):
            _dump(base / f"data_batch_{i}", {"data": train_x[idx], "labels": [train_y[j] for j in idx],
                                             "batch_label": f"training batch {i} of 5"})
        _dump(base / "test_batch", {"data": test_x, "labels": test_y, "batch_label": "testing batch 1 of 1"})
        _dump(base / "batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                                      "frog", "horse", "ship", "truck"], "num_vis": 3072})
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y, "base": base}


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def write_image_folder(root: Path, classes=("cat", "dog", "owl"), per_class: int = 6, val_per_class: int = 3,
                       size: int = 32, seed: int = 0, ext: str = ".png") -> Path:
    """train/<class>/*.png and val/<class>/*.png with class-dependent colors (learnable)."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.zeros((size, size, 3), dtype=np.float64)
                base[..., ci % 3] = 200
                img = np.clip(base + rng.normal(0, 30, size=base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:04d}{ext}")
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (to show that a failed command changed nothing)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------
# running the command line: in-process through repact.cli.main, or as `python -m repact`
# ------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
#: one quick epoch on digits
FAST = ["--epochs", "1", "--batch-size", "32", "--limit-batches", "2", "--quiet"]


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``repact ARGV`` run in this process."""
    from repact.cli import main

    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse's --help
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a ``python -m repact`` subprocess: this checkout's sources, one thread."""
    import os

    return dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", **extra)


def run_cli(*argv: str, env: dict[str, str] | None = None, preexec_fn=None, **kw):
    """``repact ARGV`` in a child process of its own (text output captured; :mod:`cli_process`), or,
    with a ``preexec_fn`` (limits set on the new process), as ``python -m repact`` in a subprocess."""
    import subprocess
    import sys

    import cli_process

    if preexec_fn is not None:
        return subprocess.run([sys.executable, "-m", "repact", *argv], env=env or cli_env(), capture_output=True,
                              text=True, timeout=600, preexec_fn=preexec_fn, **kw)
    return cli_process.run(argv, env=env or cli_env(), **kw)
