"""Pascal VOC-format detection and segmentation datasets (any VOC-layout root, e.g. VOCdevkit or BCCD).

Layout (``find_voc_root`` also accepts a folder holding ``VOCdevkit/VOC2007`` or ``VOC2012``)::

    ROOT/Annotations/<id>.xml             detection boxes (VOC XML)
    ROOT/JPEGImages/<id>.jpg              images (.jpg, .jpeg or .png)
    ROOT/ImageSets/Main/<split>.txt       detection splits, one id per line
    ROOT/SegmentationClass/<id>.png       palette (or grayscale) PNGs: pixel value = class, 255 = ignore
    ROOT/ImageSets/Segmentation/<split>.txt

Conventions, stated once:

* **Boxes** are read as given (``xmin ymin xmax ymax`` in pixels, as torchvision-based and
  mmdetection pipelines read VOC) and clipped to the image. A box with zero width or height after
  clipping (zero area, or wholly outside the image) is dropped; the drops are counted in one
  :class:`DataWarning` per dataset, never an error (BCCD has two such boxes).
* **difficult** objects follow VOC and torchvision's detection references: kept out of training
  (``keep_difficult=False``, the training default), kept for evaluation (``keep_difficult=True``)
  with ``target["difficult"] = True`` so the mAP ignores them (see :mod:`repact.tasks.metrics`).
* **Labels** are 1..K for the K object classes; 0 is torchvision's background.
* ``classes="voc"``: the 20 VOC classes; ``"auto"``: the sorted names found in this split's
  annotations; or an explicit list. A name outside an explicit list is a :class:`DataError`.
* An annotation file without objects, or an empty (0-byte) file, is an image without objects.
* A missing image or annotation named in an ImageSet is a :class:`DataError` naming the file.
"""

from __future__ import annotations

import math
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset

from .common import DataError, require_dir

__all__ = ["VOC_CLASSES", "VOC_SEG_CLASSES", "DataWarning", "VOCDetection", "VOCSegmentation", "find_voc_root",
           "read_image_set"]

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
VOC_SEG_CLASSES = ("background", *VOC_CLASSES)
IGNORE_INDEX = 255
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
_LAYOUT = "ROOT/Annotations/*.xml, ROOT/JPEGImages/*.jpg, ROOT/ImageSets/Main/<split>.txt (Pascal VOC)"
_SEG_LAYOUT = ("ROOT/SegmentationClass/*.png, ROOT/JPEGImages/*.jpg, ROOT/ImageSets/Segmentation/<split>.txt "
               "(Pascal VOC)")


class DataWarning(UserWarning):
    """Something in the data was repaired or dropped (counted, never silent)."""


def find_voc_root(data_dir: str | Path, year: str | int | None = None, *, marker: str = "ImageSets") -> Path:
    """The VOC-layout folder at or inside ``data_dir`` (``VOCdevkit/VOC<year>``, ``VOC<year>``).

    With several years present and no ``year``, the choice is refused with the candidates named.
    """
    base = Path(data_dir)
    require_dir(base, "VOC data folder", _LAYOUT)
    if year is not None:  # 2007, "2007" or "VOC2007"
        text = str(year).strip()
        year = text[3:] if text.upper().startswith("VOC") else text
        if not (len(year) == 4 and year.isdigit()):
            raise DataError(f"year {text!r} is not a VOC year; give one such as 2007 or VOC2012")
    if year is None and (base / marker).is_dir():
        return base
    years = [str(year)] if year is not None else ["2007", "2012"]
    found = [p for y in years for p in (base / "VOCdevkit" / f"VOC{y}", base / f"VOC{y}") if (p / marker).is_dir()]
    if year is not None and (base / marker).is_dir() and base.name == f"VOC{year}":
        found.insert(0, base)
    if not found:
        where = f"VOC{year} " if year is not None else ""
        raise DataError(f"no {where}VOC-format data under {base}: expected {marker}/ there or in "
                        f"VOCdevkit/{f'VOC{year}' if year is not None else 'VOC2007|VOC2012'}. Expected layout: "
                        f"{_LAYOUT}")
    if len(found) > 1 and year is None:
        raise DataError(f"{base} holds several VOC years ({', '.join(str(p) for p in found)}); pass year= "
                        "or point the data folder at one of them")
    return found[0]


def read_image_set(root: Path, kind: str, split: str) -> list[str]:
    """Ids listed in ``ROOT/ImageSets/<kind>/<split>.txt`` (first column; blank lines skipped)."""
    folder = root / "ImageSets" / kind
    path = folder / f"{split}.txt"
    if not path.is_file():
        have = sorted(p.stem for p in folder.glob("*.txt") if "_" not in p.stem) if folder.is_dir() else []
        raise DataError(f"split {split!r}: {path} does not exist; splits found: {', '.join(have) or 'none'}")
    ids = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise DataError(f"split {split!r}: {path} lists no images")
    return ids


def _image_path(root: Path, image_id: str, listed_in: Path) -> Path:
    for ext in IMAGE_EXTENSIONS:
        p = root / "JPEGImages" / f"{image_id}{ext}"
        if p.is_file():
            return p
    raise DataError(f"image {root / 'JPEGImages' / (image_id + '.jpg')} named in {listed_in} does not exist")


def _read_rgb(path: Path) -> torch.Tensor:
    """uint8 3xHxW RGB tensor of an image file (PIL; grayscale and palette images are converted)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------------------------------
# detection
# --------------------------------------------------------------------------------------------------


@dataclass
class _Annotation:
    image_id: str
    image: Path
    width: int  # 0 when the annotation does not say (read from the image)
    height: int
    names: list[str] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    difficult: list[bool] = field(default_factory=list)


@dataclass
class ParseCounts:
    """What the annotation reader repaired or dropped."""

    degenerate: list[str] = field(default_factory=list)  # "file: box" of each dropped box
    clipped: int = 0
    empty_files: list[str] = field(default_factory=list)
    difficult_dropped: int = 0


def _num(node: ET.Element | None, what: str, path: Path) -> float:
    if node is None or node.text is None:
        raise DataError(f"annotation {path}: missing <{what}>")
    try:
        return float(node.text)
    except ValueError:
        raise DataError(f"annotation {path}: <{what}> is {node.text!r}, not a number") from None


def _parse_xml(path: Path, image_id: str, image: Path, counts: ParseCounts, keep_difficult: bool) -> _Annotation:
    text = path.read_bytes()
    if not text.strip():
        counts.empty_files.append(path.name)
        return _Annotation(image_id, image, 0, 0)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise DataError(f"annotation {path} is not valid XML: {exc}") from None
    size = root.find("size")
    w = int(_num(size.find("width"), "width", path)) if size is not None and size.find("width") is not None else 0
    h = int(_num(size.find("height"), "height", path)) if size is not None and size.find("height") is not None else 0
    ann = _Annotation(image_id, image, w, h)
    for obj in root.iter("object"):
        name_node = obj.find("name")
        if name_node is None or not (name_node.text or "").strip():
            raise DataError(f"annotation {path}: an <object> has no <name>")
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"annotation {path}: object {name_node.text.strip()!r} has no <bndbox>")
        x1, y1, x2, y2 = (_num(box.find(k), k, path) for k in ("xmin", "ymin", "xmax", "ymax"))
        diff_node = obj.find("difficult")
        difficult = diff_node is not None and (diff_node.text or "0").strip() not in ("0", "")
        if difficult and not keep_difficult:
            counts.difficult_dropped += 1
            continue
        finite = all(math.isfinite(v) for v in (x1, y1, x2, y2))  # "nan" and "inf" parse as floats
        if finite and w > 0 and h > 0:
            cx1, cy1, cx2, cy2 = min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h)
            if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
                counts.clipped += 1
            x1, y1, x2, y2 = cx1, cy1, cx2, cy2
        if not finite or x2 <= x1 or y2 <= y1:
            counts.degenerate.append(f"{path.name}: {name_node.text.strip()} [{x1:g}, {y1:g}, {x2:g}, {y2:g}]")
            continue
        ann.names.append(name_node.text.strip())
        ann.boxes.append((x1, y1, x2, y2))
        ann.difficult.append(difficult)
    return ann


def _warn_counts(where: str, counts: ParseCounts) -> None:
    parts = []
    if counts.degenerate:
        shown = "; ".join(counts.degenerate[:4]) + (" ..." if len(counts.degenerate) > 4 else "")
        parts.append(f"dropped {len(counts.degenerate)} degenerate box(es) with zero width or height after "
                     f"clipping to the image, or a coordinate that is not a finite number ({shown})")
    if counts.clipped:
        parts.append(f"clipped {counts.clipped} box(es) to the image")
    if counts.empty_files:
        parts.append(f"{len(counts.empty_files)} empty annotation file(s) read as images without objects "
                     f"({', '.join(counts.empty_files[:4])})")
    if parts:
        warnings.warn(f"{where}: " + "; ".join(parts), DataWarning, stacklevel=3)


def _resolve_classes(classes: Any, found: Sequence[str], voc: Sequence[str]) -> list[str]:
    if isinstance(classes, str):
        key = classes.strip().lower()
        if key == "voc":
            return list(voc)
        if key == "auto":
            names = sorted(set(found))
            if not names:
                raise DataError("classes='auto' found no objects in the annotations")
            return names
        raise DataError(f"classes must be 'voc', 'auto' or a list of class names, got {classes!r}")
    names = [str(c) for c in classes]
    if not names or len(set(names)) != len(names):
        raise DataError(f"classes must be a non-empty list of distinct names, got {names!r}")
    return names


class VOCDetection(Dataset):
    """VOC-format detection: ``ds[i] -> (image, target)``.

    ``image`` is a ``tv_tensors.Image`` (uint8, 3xHxW) and ``target`` holds ``boxes``
    (``tv_tensors.BoundingBoxes``, XYXY pixels), ``labels`` (int64, 1..K), ``difficult`` (bool) and
    ``image_id`` (the index), before ``transforms`` (a torchvision.transforms.v2 callable taking
    ``(image, target)``) is applied. Every annotation is read on construction.
    """

    def __init__(self, data_dir: str | Path, split: str = "train", *, classes: Any = "voc",
                 keep_difficult: bool = False, transforms: Callable | None = None, year: str | int | None = None
                 ) -> None:
        self.root = find_voc_root(data_dir, year)
        self.split = split
        self.keep_difficult = keep_difficult
        self.transforms = transforms
        ann_dir = require_dir(self.root / "Annotations", "VOC annotations", _LAYOUT)
        listed = self.root / "ImageSets" / "Main" / f"{split}.txt"
        self.counts = ParseCounts()
        self.annotations: list[_Annotation] = []
        for image_id in read_image_set(self.root, "Main", split):
            xml = ann_dir / f"{image_id}.xml"
            if not xml.is_file():
                raise DataError(f"annotation {xml} named in {listed} does not exist")
            image = _image_path(self.root, image_id, listed)
            self.annotations.append(_parse_xml(xml, image_id, image, self.counts, keep_difficult))
        self.classes = _resolve_classes(classes, [n for a in self.annotations for n in a.names], VOC_CLASSES)
        index = {c: i + 1 for i, c in enumerate(self.classes)}
        for a in self.annotations:
            for n in a.names:
                if n not in index:
                    raise DataError(f"annotation {ann_dir / (a.image_id + '.xml')}: class {n!r} is not among the "
                                    f"classes ({', '.join(self.classes)}); pass classes='auto' or a list that has it")
        self._index = index
        _warn_counts(f"VOC detection {self.root} split {split!r}", self.counts)

    @property
    def num_boxes(self) -> int:
        return sum(len(a.boxes) for a in self.annotations)

    def __len__(self) -> int:
        return len(self.annotations)

    def target(self, i: int) -> dict[str, torch.Tensor]:
        """Boxes (plain float32 tensor), labels and difficult flags of image ``i``, without reading it."""
        a = self.annotations[i]
        return {"boxes": torch.tensor(a.boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor([self._index[n] for n in a.names], dtype=torch.int64),
                "difficult": torch.tensor(a.difficult, dtype=torch.bool)}

    def __getitem__(self, i: int):
        from torchvision import tv_tensors

        a = self.annotations[i]
        img = _read_rgb(a.image)
        h, w = int(img.shape[-2]), int(img.shape[-1])
        if a.width and a.height and (a.width, a.height) != (w, h):
            raise DataError(f"annotation of {a.image_id} says {a.width}x{a.height} but image {a.image} is {w}x{h}")
        t = self.target(i)
        target = {"boxes": tv_tensors.BoundingBoxes(t["boxes"], format="XYXY", canvas_size=(h, w)),
                  "labels": t["labels"], "difficult": t["difficult"], "image_id": i}
        image = tv_tensors.Image(img)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


# --------------------------------------------------------------------------------------------------
# segmentation
# --------------------------------------------------------------------------------------------------


def read_mask(path: Path) -> torch.Tensor:
    """Class indices (uint8, HxW) of a VOC ``SegmentationClass`` PNG (palette or grayscale)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DataError(f"segmentation mask {path} is a {im.mode} image; expected a palette (P) or "
                                "grayscale (L) PNG whose pixel values are class indices (255 = ignore)")
            arr = np.array(im, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read segmentation mask {path}: {exc}") from None
    return torch.from_numpy(arr)


class VOCSegmentation(Dataset):
    """VOC-format semantic segmentation: ``ds[i] -> (image, mask)``.

    ``image`` is a ``tv_tensors.Image`` (uint8) and ``mask`` a ``tv_tensors.Mask`` (uint8 class
    indices, 255 = ignore, e.g. VOC's object borders) before ``transforms(image, mask)``.
    ``classes``: ``"voc"`` (background + the 20 VOC classes) or a list whose position is the pixel
    value. A pixel value that is neither a class index nor 255 is a :class:`DataError` naming the file.
    """

    def __init__(self, data_dir: str | Path, split: str = "train", *, classes: Any = "voc",
                 transforms: Callable | None = None, year: str | int | None = None) -> None:
        self.root = find_voc_root(data_dir, year, marker="SegmentationClass")
        self.split = split
        self.transforms = transforms
        mask_dir = require_dir(self.root / "SegmentationClass", "VOC segmentation masks", _SEG_LAYOUT)
        listed = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        self.items: list[tuple[Path, Path]] = []
        for image_id in read_image_set(self.root, "Segmentation", split):
            mask = mask_dir / f"{image_id}.png"
            if not mask.is_file():
                raise DataError(f"segmentation mask {mask} named in {listed} does not exist")
            self.items.append((_image_path(self.root, image_id, listed), mask))
        if isinstance(classes, str):
            if classes.strip().lower() != "voc":
                raise DataError(f"segmentation classes must be 'voc' or a list of names (position = pixel value), "
                                f"got {classes!r}")
            self.classes = list(VOC_SEG_CLASSES)
        else:
            self.classes = _resolve_classes(classes, [], VOC_SEG_CLASSES)
        if len(self.classes) >= IGNORE_INDEX:
            raise DataError(f"at most {IGNORE_INDEX} classes fit a VOC mask (255 = ignore), got {len(self.classes)}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from torchvision import tv_tensors

        image_path, mask_path = self.items[i]
        img = _read_rgb(image_path)
        mask = read_mask(mask_path)
        if tuple(mask.shape) != tuple(img.shape[-2:]):
            raise DataError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} is "
                            f"{img.shape[-1]}x{img.shape[-2]}")
        bad = mask[(mask >= len(self.classes)) & (mask != IGNORE_INDEX)]
        if bad.numel():
            raise DataError(f"mask {mask_path} has pixel value(s) {sorted(set(bad.tolist()))[:5]} that are neither a "
                            f"class index (0..{len(self.classes) - 1}) nor {IGNORE_INDEX} (ignore)")
        image, target = tv_tensors.Image(img), tv_tensors.Mask(mask)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
