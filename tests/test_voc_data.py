"""VOC-format loaders: real BCCD, and folders written here for every edge case."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from conftest import shared_data
from repact.data.common import DataError
from repact.data.voc import (VOC_CLASSES, DataWarning, VOCDetection, VOCSegmentation, find_voc_root,
                             read_mask)
from repact.data.voc_transforms import (PadTo, detection_collate, detection_transforms, segmentation_collate,
                                        segmentation_transforms)
from voc_fixtures import SEG_CLASSES, save_palette_png, voc_xml, write_detection_set, write_segmentation_set


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return fn(*args, **kwargs)


# ------------------------------------------------------------------ BCCD (real data)


def test_bccd_reads_with_auto_classes_and_drops_its_two_zero_area_boxes():
    root = shared_data("BCCD")
    with pytest.warns(DataWarning, match=r"dropped 2 degenerate box\(es\).*BloodImage_00338.*BloodImage_00343"):
        ds = VOCDetection(root, "trainval", classes="auto")
    assert ds.classes == ["Platelets", "RBC", "WBC"]
    assert len(ds) == 292
    assert len(ds.counts.degenerate) == 2
    boxes = torch.cat([ds.target(i)["boxes"] for i in range(len(ds))])
    assert bool(((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all())
    image, target = ds[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, 480, 640)
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes) and target["boxes"].canvas_size == (480, 640)
    assert target["labels"].min() >= 1 and target["labels"].max() <= 3


def test_bccd_detection_transforms_move_boxes_with_the_image():
    root = shared_data("BCCD")
    raw = _quiet(VOCDetection, root, "val", classes="auto")
    flipped = _quiet(VOCDetection, root, "val", classes="auto",
                     transforms=detection_transforms("none", 320, train=False))
    image, target = flipped[3]
    assert image.dtype == torch.float32 and image.shape == (3, 320, 320) and 0 <= float(image.min()) <= float(image.max()) <= 1
    expect = raw.target(3)["boxes"] * torch.tensor([0.5, 320 / 480, 0.5, 320 / 480])
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), expect, rtol=0, atol=1e-4)
    flip = v2_flip_only()
    img0, t0 = raw[3]
    img1, t1 = flip(img0, {k: v for k, v in t0.items()})
    assert torch.equal(img1, img0.flip(-1))
    b0, b1 = t0["boxes"].as_subclass(torch.Tensor), t1["boxes"].as_subclass(torch.Tensor)
    torch.testing.assert_close(b1[:, [0, 2]], 640 - b0[:, [2, 0]])
    images, targets = detection_collate([flipped[0], flipped[1]])
    assert type(images[0]) is torch.Tensor and type(targets[0]["boxes"]) is torch.Tensor


def v2_flip_only():
    from torchvision.transforms import v2

    return v2.RandomHorizontalFlip(p=1.0)


def test_ssd_augmentation_keeps_labels_and_difficult_aligned_with_boxes():
    root = shared_data("BCCD")
    torch.manual_seed(1)
    ds = _quiet(VOCDetection, root, "train", classes="auto", transforms=detection_transforms("ssd", 160, train=True))
    for i in range(6):
        image, t = ds[i]
        n = len(t["boxes"])
        assert image.shape == (3, 160, 160) and len(t["labels"]) == n and len(t["difficult"]) == n
        b = t["boxes"].as_subclass(torch.Tensor)
        assert bool(((b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)).all())


# ------------------------------------------------------------------ detection edge cases


def _det_root(tmp_path, annotations, splits=None, images=None):
    splits = splits or {"train": list(annotations)}
    return write_detection_set(tmp_path / "voc", annotations, splits, images=images)


def test_empty_annotation_file_and_annotation_without_objects_are_images_without_boxes(tmp_path):
    root = _det_root(tmp_path, {"a": voc_xml("a.jpg", 48, 32, [("cat", (2, 3, 20, 30), 0)]),
                                "b": voc_xml("b.jpg", 48, 32, []), "c": ""})
    with pytest.warns(DataWarning, match=r"1 empty annotation file\(s\).*c\.xml"):
        ds = VOCDetection(root, "train")
    assert [len(ds.target(i)["boxes"]) for i in range(3)] == [1, 0, 0]
    image, target = ds[2]
    assert image.shape == (3, 32, 48) and target["boxes"].shape == (0, 4) and target["labels"].dtype == torch.int64
    images, targets = detection_collate([ds[1], ds[2]])
    assert targets[0]["boxes"].shape == (0, 4)


def test_degenerate_boxes_are_dropped_and_counted_and_partly_outside_boxes_clipped(tmp_path):
    objs = [("cat", (5, 5, 5, 20), 0),      # zero width
            ("dog", (60, 5, 70, 20), 0),    # wholly outside the 48x32 image
            ("dog", (10, 10, 30, 10), 0),   # zero height
            ("cat", (-4, 2, 10, 40), 0),    # partly outside: clipped
            ("dog", (3, 4, 40, 30), 0)]
    root = _det_root(tmp_path, {"a": voc_xml("a.jpg", 48, 32, objs)})
    with pytest.warns(DataWarning, match=r"dropped 3 degenerate box\(es\).*clipped 2 box"):
        ds = VOCDetection(root, "train")
    t = ds.target(0)
    assert t["boxes"].tolist() == [[0.0, 2.0, 10.0, 32.0], [3.0, 4.0, 40.0, 30.0]]
    assert t["labels"].tolist() == [VOC_CLASSES.index("cat") + 1, VOC_CLASSES.index("dog") + 1]


def test_boxes_with_nan_or_inf_coordinates_are_dropped_with_the_degenerate_warning(tmp_path):
    objs = [("cat", (float("nan"), 5, 20, 20), 0), ("dog", (3, 4, float("inf"), 30), 0), ("dog", (3, 4, 40, 30), 0)]
    root = _det_root(tmp_path, {"a": voc_xml("a.jpg", 48, 32, objs), "b": voc_xml("b.jpg", 0, 0, objs[:1])})
    with pytest.warns(DataWarning, match=r"dropped 3 degenerate box\(es\).*not a finite number "
                                         r"\(a.xml: cat \[nan, 5, 20, 20\]; a.xml: dog \[3, 4, inf, 30\]; b.xml"):
        ds = VOCDetection(root, "train")
    assert ds.target(0)["boxes"].tolist() == [[3.0, 4.0, 40.0, 30.0]]
    assert ds.target(1)["boxes"].shape == (0, 4) and ds.counts.clipped == 0


def test_difficult_objects_stay_out_of_training_and_are_flagged_for_evaluation(tmp_path):
    objs = [("cat", (2, 2, 20, 20), 1), ("dog", (22, 2, 40, 20), 0)]
    root = _det_root(tmp_path, {"a": voc_xml("a.jpg", 48, 32, objs)})
    train = VOCDetection(root, "train")
    assert train.target(0)["labels"].tolist() == [VOC_CLASSES.index("dog") + 1]
    assert train.counts.difficult_dropped == 1
    val = VOCDetection(root, "train", keep_difficult=True)
    t = val.target(0)
    assert t["labels"].tolist() == [VOC_CLASSES.index("cat") + 1, VOC_CLASSES.index("dog") + 1]
    assert t["difficult"].tolist() == [True, False]


def test_missing_image_named_in_an_image_set_is_a_clear_error(tmp_path):
    root = _det_root(tmp_path, {"a": voc_xml("a.jpg", 48, 32, []), "b": voc_xml("b.jpg", 48, 32, [])},
                     images=["a"])
    with pytest.raises(DataError, match=r"image .*JPEGImages/b\.jpg named in .*ImageSets/Main/train\.txt does not exist"):
        VOCDetection(root, "train")


def test_missing_annotation_split_and_unknown_class_are_clear_errors(tmp_path):
    root = _det_root(tmp_path, {"a": voc_xml("a.jpg", 48, 32, [("zebra", (1, 1, 9, 9), 0)]), "b": None},
                     images=["a", "b"])
    with pytest.raises(DataError, match=r"annotation .*Annotations/b\.xml named in .*train\.txt does not exist"):
        VOCDetection(root, "train")
    (root / "ImageSets/Main/train.txt").write_text("a\n")
    with pytest.raises(DataError, match=r"class 'zebra' is not among the classes"):
        VOCDetection(root, "train")
    assert VOCDetection(root, "train", classes="auto").classes == ["zebra"]
    with pytest.raises(DataError, match=r"split 'test': .*test\.txt does not exist; splits found: train"):
        VOCDetection(root, "test")
    (root / "Annotations/a.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match=r"a\.xml is not valid XML"):
        VOCDetection(root, "train", classes="auto")


def test_vocdevkit_layout_is_found_and_ambiguity_refused(tmp_path):
    base = tmp_path / "data"
    write_detection_set(base / "VOCdevkit" / "VOC2007", {"a": voc_xml("a.jpg", 48, 32, [])}, {"train": ["a"]})
    assert find_voc_root(base) == base / "VOCdevkit" / "VOC2007"
    assert len(VOCDetection(base, "train")) == 1
    write_detection_set(base / "VOCdevkit" / "VOC2012", {"a": voc_xml("a.jpg", 48, 32, [])}, {"train": ["a"]})
    with pytest.raises(DataError, match="several VOC years"):
        find_voc_root(base)
    assert find_voc_root(base, year=2012) == base / "VOCdevkit" / "VOC2012"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no VOC-format data under"):
        find_voc_root(tmp_path / "empty")


# ------------------------------------------------------------------ segmentation


def test_segmentation_reads_palette_indices_and_keeps_255_as_ignore(tmp_path):
    root = write_segmentation_set(tmp_path / "seg", n_train=3, n_val=2, size=40)
    ds = VOCSegmentation(root, "train", classes=SEG_CLASSES)
    image, mask = ds[0]
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.uint8 and mask.shape == image.shape[-2:]
    values = set(mask.unique().tolist())
    assert 0 in values and 255 in values and values <= {0, 1, 2, 3, 255}
    raw = read_mask(root / "SegmentationClass" / "00000.png")
    assert torch.equal(raw, mask.as_subclass(torch.Tensor))


def test_segmentation_transforms_resize_masks_nearest_and_pad_with_ignore(tmp_path):
    root = tmp_path / "seg"
    write_segmentation_set(root, n_train=1, n_val=1, size=40)
    mask = np.zeros((20, 40), np.uint8)
    mask[:, 20:] = 2
    save_palette_png(mask, root / "SegmentationClass" / "00000.png")
    from PIL import Image

    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(root / "JPEGImages" / "00000.jpg")
    ds = VOCSegmentation(root, "train", classes=SEG_CLASSES, transforms=segmentation_transforms("none", 32, train=False))
    image, m = ds[0]
    assert image.shape == (3, 32, 32) and m.dtype == torch.int64
    assert set(m[:16].unique().tolist()) == {0, 2}  # nearest: no blended class values
    assert bool((m[16:] == 255).all())              # padding is ignored
    batch = segmentation_collate([ds[0], ds[0]])
    assert batch[0].shape == (2, 3, 32, 32) and batch[1].shape == (2, 32, 32)
    torch.manual_seed(0)
    train = VOCSegmentation(root, "train", classes=SEG_CLASSES, transforms=segmentation_transforms("light", 32, train=True))
    for _ in range(4):
        img, m = train[0]
        assert img.shape == (3, 32, 32) and set(m.unique().tolist()) <= {0, 2, 255}
    assert PadTo(8)(torch.ones(1, 2, 2)).shape == (1, 2, 2)  # plain tensors pass through


def test_segmentation_bad_pixel_value_rgb_mask_and_missing_mask_are_clear_errors(tmp_path):
    root = write_segmentation_set(tmp_path / "seg", n_train=2, n_val=1, size=24)
    bad = np.full((24, 24), 7, np.uint8)
    save_palette_png(bad, root / "SegmentationClass" / "00000.png")
    ds = VOCSegmentation(root, "train", classes=SEG_CLASSES)
    with pytest.raises(DataError, match=r"00000\.png has pixel value\(s\) \[7\] that are neither a class index \(0\.\.3\) nor 255"):
        ds[0]
    from PIL import Image

    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(root / "SegmentationClass" / "00001.png")
    with pytest.raises(DataError, match=r"00001\.png is a RGB image; expected a palette"):
        ds[1]
    (root / "SegmentationClass" / "00002.png").unlink()
    with pytest.raises(DataError, match=r"mask .*00002\.png named in .*Segmentation/val\.txt does not exist"):
        VOCSegmentation(root, "val", classes=SEG_CLASSES)
    with pytest.raises(DataError, match="segmentation classes must be 'voc' or a list"):
        VOCSegmentation(root, "train", classes="auto")
    assert VOCSegmentation(root, "train").classes[0] == "background"
