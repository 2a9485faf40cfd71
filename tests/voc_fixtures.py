"""Small VOC-format folders written by the tests: detection XML + JPEG, segmentation palette PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

SEG_CLASSES = ["background", "disc", "square", "triangle"]
_SHAPE_COLOURS = {1: (220, 40, 40), 2: (40, 200, 60), 3: (50, 80, 230)}


def voc_palette() -> list[int]:
    """The Pascal VOC colour map (index -> RGB), flattened for PIL's putpalette."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def save_palette_png(mask: np.ndarray, path: Path) -> None:
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(voc_palette())
    im.save(path)


def _draw_shape(draw: ImageDraw.ImageDraw, cls: int, cx: int, cy: int, r: int, fill) -> None:
    if cls == 1:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif cls == 2:
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def write_segmentation_set(root: Path, n_train: int = 48, n_val: int = 16, size: int = 64, seed: int = 0) -> Path:
    """A VOC segmentation folder: coloured discs, squares and triangles on noisy backgrounds, each
    shape outlined by a 1-pixel ring of 255 (ignore), as VOC's object borders."""
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n_train + n_val):
        base = rng.integers(60, 170, size=3)
        img = np.clip(base + rng.normal(0, 18, size=(size, size, 3)), 0, 255).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        pil_img, pil_mask = Image.fromarray(img), Image.fromarray(mask)
        draw_img, draw_mask = ImageDraw.Draw(pil_img), ImageDraw.Draw(pil_mask)
        for _ in range(int(rng.integers(1, 3))):
            cls = int(rng.integers(1, 4))
            r = int(rng.integers(size // 7, size // 4))
            cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
            colour = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in _SHAPE_COLOURS[cls])
            _draw_shape(draw_mask, cls, cx, cy, r + 1, 255)  # the ignore ring
            _draw_shape(draw_mask, cls, cx, cy, r, cls)
            _draw_shape(draw_img, cls, cx, cy, r, colour)
        image_id = f"{i:05d}"
        pil_img.save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        save_palette_png(np.asarray(pil_mask), root / "SegmentationClass" / f"{image_id}.png")
        ids.append(image_id)
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    return root


def voc_xml(filename: str, width: int, height: int, objects: Sequence[tuple[str, Sequence[float], int]]) -> str:
    """A VOC annotation; objects are (name, (xmin, ymin, xmax, ymax), difficult)."""
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{d}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects)
    return (f"<annotation><folder>JPEGImages</folder><filename>{filename}</filename><size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size><segmented>0</segmented>{objs}</annotation>")


def write_detection_set(root: Path, annotations: dict[str, str | None], splits: dict[str, Sequence[str]],
                        size: tuple[int, int] = (48, 32), images: Sequence[str] | None = None) -> Path:
    """A VOC detection folder: ``annotations`` maps ids to XML text (None: no file); an image is
    written for every id in ``images`` (default: every annotated id)."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id, xml in annotations.items():
        if xml is not None:
            (root / "Annotations" / f"{image_id}.xml").write_text(xml)
    for image_id in (annotations if images is None else images):
        arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "JPEGImages" / f"{image_id}.jpg")
    for split, ids in splits.items():
        (root / "ImageSets/Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root
