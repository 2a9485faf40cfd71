"""Shared by the analysis tests: short real training runs on the bundled digits data, digit image
files, and checks that a picture file holds a picture."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np


def train_run(out: Path, act: str = "repact", model: str = "small_cnn", epochs: int = 2, limit: int = 3,
              **extra) -> Path:
    """A real ``repact.train`` run on digits, a few steps per epoch; returns its folder."""
    from repact.train import TrainConfig, train

    kwargs = {"model_kwargs": {"width": 8}} if model == "small_cnn" else {}
    kwargs.update(extra)
    cfg = TrainConfig(model=model, act=act, dataset="digits", epochs=epochs, batch_size=32, limit_batches=limit,
                      quiet=True, out=str(out), **kwargs)
    train(cfg, overwrite=True, keep_model=False)
    return out


@functools.lru_cache(maxsize=None)
def shared_run(kind: str) -> Path:
    """One run per kind per test process, shared by the analysis test modules (read-only for them):
    ``"small"`` small_cnn with RepAct-I (3 epochs), ``"hardswish"`` the same with HardSwish,
    ``"mnv3"`` torchvision's MobileNetV3-Small with RepAct-III (2 epochs)."""
    root = Path(tempfile.mkdtemp(prefix=f"repact-analysis-{kind}-"))
    atexit.register(shutil.rmtree, root, True)
    if kind == "small":
        return train_run(root / "run", "repact", epochs=3)
    if kind == "hardswish":
        return train_run(root / "run", "hardswish", epochs=2)
    if kind == "mnv3":
        return train_run(root / "run", "repact_bn", model="mobilenet_v3_small", epochs=2, limit=2)
    raise ValueError(kind)


def digit_png(path: Path, index: int = 0) -> tuple[Path, int]:
    """A validation digit written as an 8x8 grayscale PNG; returns (path, its label)."""
    from PIL import Image

    from repact.data import build_datasets

    _, val, _ = build_datasets("digits")
    Image.fromarray(val.images[index, 0].numpy()).save(path)
    return path, int(val.targets[index])


def rgb_png(path: Path, size: int = 40, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.RandomState(seed)
    Image.fromarray(rng.randint(0, 256, size=(size, size, 3), dtype=np.uint8)).save(path)
    return path


def assert_picture(path: Path) -> None:
    """The file exists and is not blank: a PNG with ink on more than 1% of its pixels and more than 20
    colours, an SVG with drawn paths, or a PDF with content."""
    path = Path(path)
    assert path.is_file(), f"{path} was not written"
    kind = path.suffix.lower()
    if kind == ".png":
        from matplotlib.image import imread

        img = imread(path)[..., :3]
        ink = (np.abs(img - 1.0).max(axis=-1) > 0.02).mean()
        colours = len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0))
        assert ink > 0.01 and colours > 20, f"{path} looks blank (ink {ink:.4f}, {colours} colours)"
    elif kind == ".svg":
        paths = [e for e in ET.parse(path).iter() if e.tag.endswith("path") or e.tag.endswith("use")]
        assert len(paths) > 20, f"{path} holds only {len(paths)} drawn elements"
    elif kind == ".pdf":
        data = path.read_bytes()
        assert data.startswith(b"%PDF") and len(data) > 5000, f"{path} is not a PDF with content"
    else:
        raise AssertionError(f"unexpected picture type {kind}")
