"""Dataset builders: embedded digits, torchvision on-disk formats written here, shared real data."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, shared_data
from repact.data import DataError, build_datasets, imagenet100_classes
from repact.data.transforms import build_transforms
from train_fixtures import write_cifar, write_image_folder


def test_digits_split_is_fixed_stratified_and_complete():
    tr, va, info = build_datasets("digits")
    assert (info.num_classes, info.in_channels, info.img_size) == (10, 1, 8)
    assert len(tr) + len(va) == 1797 and abs(len(va) - 0.2 * 1797) <= 10
    counts_val = torch.bincount(va.targets, minlength=10)
    assert counts_val.min() >= 35 and counts_val.max() <= 37  # ~20% of every class
    tr2, va2, _ = build_datasets("digits")
    assert torch.equal(va.images, va2.images) and torch.equal(tr.targets, tr2.targets)
    x, y = tr[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= y < 10
    # normalized with the split's statistics: near zero mean, unit std over the train split
    xs = torch.stack([tr[i][0] for i in range(len(tr))])
    assert abs(float(xs.mean())) < 0.05 and abs(float(xs.std()) - 1) < 0.05


def test_digits_match_scikit_learn():
    sklearn = pytest.importorskip("sklearn.datasets")
    d = sklearn.load_digits()
    tr, va, _ = build_datasets("digits")
    ours = torch.cat([tr.images, va.images]).reshape(-1, 64).double() * 16 / 255
    theirs = torch.from_numpy(d.data)
    # every one of our images is one of sklearn's (same multiset of rows, up to uint8 rounding)
    ours_sorted = sorted(map(tuple, torch.round(ours).long().tolist()))
    theirs_sorted = sorted(map(tuple, theirs.long().tolist()))
    assert ours_sorted == theirs_sorted


def test_gray_images_repeat_to_three_channels():
    tr, va, info = build_datasets("digits", channels=3, img_size=16)
    x, _ = va[0]
    assert x.shape == (3, 16, 16) and info.in_channels == 3
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_cifar100_pickles_round_trip(tmp_path):
    w = write_cifar(tmp_path, "cifar100", n_train=30, n_test=12)
    tr, va, info = build_datasets("cifar100", tmp_path, augment="none")
    assert (info.num_classes, len(tr), len(va), info.img_size) == (100, 30, 12, 32)
    assert info.classes[7] == "class007"
    assert tr.targets.tolist() == w["train_y"] and va.targets.tolist() == w["test_y"]
    # the (N, 3072) row layout is channel-major: R plane, G plane, B plane
    assert torch.equal(tr.images[3], torch.from_numpy(w["train_x"][3].reshape(3, 32, 32)))
    # the folder itself may be given too
    _, va2, _ = build_datasets("cifar100", w["base"], augment="none")
    assert torch.equal(va2.images, va.images)


def test_cifar10_pickles_and_crop_flip(tmp_path):
    w = write_cifar(tmp_path, "cifar10", n_train=25, n_test=10)
    tr, va, info = build_datasets("cifar10", tmp_path)
    assert info.classes[0] == "airplane" and len(tr) == 25
    assert tr.targets.tolist() == w["train_y"]
    x, _ = tr[0]
    assert x.shape == (3, 32, 32)
    # val is deterministic, train is augmented (random crop with padding + flip)
    assert torch.equal(va[0][0], va[0][0])
    torch.manual_seed(0)
    outs = {tuple(tr[0][0].flatten()[:64].tolist()) for _ in range(8)}
    assert len(outs) > 1


def test_cifar_pickle_with_code_is_refused(tmp_path):
    w = write_cifar(tmp_path, "cifar100")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(w["base"] / "train", "wb") as fh:
        pickle.dump({"data": Evil(), "fine_labels": []}, fh)
    with pytest.raises(DataError, match="refusing to load"):
        build_datasets("cifar100", tmp_path)
    assert not marker.exists()


def test_cifar_missing_and_malformed(tmp_path):
    with pytest.raises(DataError) as e:
        build_datasets("cifar10", tmp_path / "nowhere")
    assert "cifar-10-batches-py" in str(e.value) and str(tmp_path / "nowhere") in str(e.value)
    w = write_cifar(tmp_path, "cifar10")
    (w["base"] / "data_batch_3").unlink()
    with pytest.raises(DataError, match="lacks data_batch_3"):
        build_datasets("cifar10", tmp_path)
    w2 = write_cifar(tmp_path / "b", "cifar100")
    (w2["base"] / "test").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="not a readable CIFAR python pickle"):
        build_datasets("cifar100", tmp_path / "b")
    w3 = write_cifar(tmp_path / "c", "cifar100")
    with open(w3["base"] / "test", "wb") as fh:
        pickle.dump({"data": np.zeros((2, 100), dtype=np.uint8), "fine_labels": [0, 1]}, fh)
    with pytest.raises(DataError, match=r"\(N, 3072\)"):
        build_datasets("cifar100", tmp_path / "c")


def test_image_folder_fixture(tmp_path):
    write_image_folder(tmp_path, size=24)
    tr, va, info = build_datasets("imagefolder", tmp_path)
    assert info.classes == ["cat", "dog", "owl"] and (len(tr), len(va)) == (18, 9)
    assert info.img_size == 24  # small images: their own size by default
    x, y = va[4]
    assert x.shape == (3, 24, 24) and y == 1
    tr, va, info = build_datasets("imagefolder", tmp_path, img_size=64, augment="imagenet")
    assert tr[0][0].shape == (3, 64, 64) and va[0][0].shape == (3, 64, 64)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_datasets("imagefolder", tmp_path / "none")
    (tmp_path / "a" / "train" / "x").mkdir(parents=True)
    with pytest.raises(DataError) as e:
        build_datasets("imagefolder", tmp_path / "a")
    assert str(tmp_path / "a" / "val") in str(e.value) and "train/<class>" in str(e.value)
    (tmp_path / "a" / "val" / "x").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        build_datasets("imagefolder", tmp_path / "a")
    write_image_folder(tmp_path / "b", classes=("p", "q"))
    (tmp_path / "b" / "val" / "zzz").mkdir()
    with pytest.raises(DataError, match="zzz"):
        build_datasets("imagefolder", tmp_path / "b")


def test_imagenet100_restricts_to_the_shipped_list(tmp_path):
    classes = imagenet100_classes()
    assert len(classes) == 100 and len(set(classes)) == 100 and classes[0] == "n01440764"
    ref = SHARED_DATA.parent / "reference" / "imagenet100_repact_classes.json"
    if ref.exists():
        table = json.loads(ref.read_text())
        assert classes == [table[str(i)] for i in range(100)]
    from PIL import Image

    img = Image.fromarray(np.full((8, 8, 3), 128, dtype=np.uint8))
    for split in ("train", "val"):
        for c in [*classes, "n09999999"]:  # one extra synset that must be ignored
            d = tmp_path / split / c
            d.mkdir(parents=True)
            img.save(d / "a.JPEG")
    tr, va, info = build_datasets("imagenet100", tmp_path, img_size=16)
    assert info.num_classes == 100 and len(tr) == 100 and len(va) == 100
    assert [tr.samples[i][1] for i in range(100)] == list(range(100))
    assert tr.samples[5][0].split(os.sep)[-2] == classes[5]
    import shutil

    shutil.rmtree(tmp_path / "val" / classes[3])
    with pytest.raises(DataError, match=f"1 of the 100 classes are missing.*{classes[3]}"):
        build_datasets("imagenet100", tmp_path)


def test_repact_paper_transforms_shapes():
    t_train, t_val = build_transforms("repact-paper", 224, (0.5,) * 3, (0.25,) * 3)
    img = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    assert t_train(img).shape == (3, 224, 224)
    v = t_val(img)
    assert v.shape == (3, 224, 224) and v.dtype == torch.float32
    names = [type(t).__name__ for t in t_train.per_image.transforms]
    assert names == ["RandomResizedCrop", "ColorJitter", "RandomHorizontalFlip", "RandomRotation"]
    assert [type(t).__name__ for t in t_val.prep.transforms] == ["Resize", "CenterCrop"]
    assert t_val.prep.transforms[0].size == [256]
    # a batch of images of different sizes goes through the per-image ops, then one normalization
    batch = t_train.batch([img, torch.randint(0, 256, (3, 250, 260), dtype=torch.uint8)])
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == torch.float32


def test_unknown_dataset_and_augment():
    with pytest.raises(DataError, match="unknown dataset 'svhn'.*accepted: digits"):
        build_datasets("svhn")
    with pytest.raises(DataError, match="unknown augmentation 'mixup'"):
        build_datasets("digits", augment="mixup")


@pytest.mark.data
def test_shared_mnist():
    shared_data("MNIST/raw")
    tr, va, info = build_datasets("mnist", SHARED_DATA)
    assert (len(tr), len(va), info.num_classes, info.img_size) == (60000, 10000, 10, 28)
    assert torch.bincount(va.targets).tolist()[:2] == [980, 1135]  # the official test-set class counts
    mean = float(tr.images[:20000].float().mean() / 255)
    assert abs(mean - 0.1307) < 0.003
    _, va2, _ = build_datasets("mnist", SHARED_DATA / "MNIST" / "raw")  # the raw folder itself also works
    assert torch.equal(va2.images[:100], va.images[:100])


@pytest.mark.data
def test_shared_cifar10_jpeg_folder():
    root = shared_data("cifar10-jpeg")
    tr, va, info = build_datasets("imagefolder", root, cache="off")
    assert (len(tr), len(va), info.num_classes, info.img_size) == (50000, 10000, 10, 32)
    assert info.classes[0] == "airplane" and info.classes[-1] == "truck"
    x, y = va[9999]
    assert x.shape == (3, 32, 32) and y == 9


def test_missing_mnist_names_the_files(tmp_path):
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\0" * 16)
    with pytest.raises(DataError) as e:
        build_datasets("mnist", tmp_path)
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte" in msg and "--download" in msg and str(tmp_path / "MNIST" / "raw") in msg


def test_batched_random_crop_flip_crops_and_flips_each_image_on_its_own():
    from repact.data.transforms import random_crop_flip, sample_seeds

    x = torch.randint(0, 256, (40, 2, 6, 5), dtype=torch.uint8)
    seeds = sample_seeds(1, 0, range(40))
    out = random_crop_flip(x, 2, seeds)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    seen = set()
    for i in range(len(x)):
        hits = [(t, l, f) for t in range(5) for l in range(5) for f in (False, True)
                if torch.equal(out[i], (lambda s: s.flip(-1) if f else s)(padded[i, :, t:t + 6, l:l + 5]))]
        assert hits, f"image {i} is no crop of its padded self"
        seen.add(hits[0])
    assert len(seen) > 10 and {f for _, _, f in seen} == {False, True}  # offsets and flips vary per image
    # each image's crop follows its own seed alone: the same image alone, or elsewhere in another batch
    for i in (0, 17):
        assert torch.equal(random_crop_flip(x[i:i + 1], 2, seeds[i:i + 1])[0], out[i])
    order = torch.randperm(40)
    assert torch.equal(random_crop_flip(x[order], 2, seeds[order.numpy()]), out[order])
