"""Fixed class-balanced subsets: --limit-val-batches and --train-subset."""

from __future__ import annotations

import collections

import pytest
import torch

from repact.data import DataError, balanced_indices, build_datasets
from repact.train import TrainConfig
from repact.train.dist import DistEnv
from repact.train.setup import build_data, make_loaders
from train_fixtures import write_image_folder


def test_balanced_indices_are_even_fixed_and_sorted():
    labels = [0] * 50 + [1] * 30 + [2] * 4  # class-sorted, one class smaller than its share
    idx = balanced_indices(labels, 30)
    counts = collections.Counter(labels[i] for i in idx)
    assert counts == {0: 13, 1: 13, 2: 4}  # the small class gives all it has, the others make up the rest
    assert idx == sorted(idx) and len(set(idx)) == 30
    assert balanced_indices(labels, 30) == idx and balanced_indices(labels, 30, seed=1) != idx
    assert collections.Counter(labels[i] for i in balanced_indices(labels, 9)) == {0: 3, 1: 3, 2: 3}
    assert balanced_indices(labels, 1000) == list(range(len(labels)))
    with pytest.raises(DataError, match="at least 1"):
        balanced_indices(labels, 0)


def test_limit_val_batches_takes_every_class_not_the_first_batches(tmp_path):
    """A class-sorted val folder (3 classes x 6 images), one val batch of 3: one image of each class."""
    root = write_image_folder(tmp_path / "imgs", per_class=4, val_per_class=6, size=8)
    cfg = TrainConfig(dataset="imagefolder", data_dir=str(root), batch_size=4, eval_batch_size=3,
                      limit_val_batches=1, cache="off")
    train_set, val_set, _ = build_data(cfg)
    assert [y for _, y in val_set.samples[:3]] == [0, 0, 0]  # what "the first batch" would have been
    _, _, _, val_loader = make_loaders(cfg, train_set, val_set, DistEnv(), torch.device("cpu"))
    labels = torch.cat([y for _, y in val_loader]).tolist()
    assert sorted(labels) == [0, 1, 2]
    again = make_loaders(cfg, train_set, val_set, DistEnv(), torch.device("cpu"))[3]
    assert torch.equal(next(iter(again))[0], next(iter(val_loader))[0])  # the same images every epoch and run
    # --limit-batches (smoke runs) limits val the same way
    cfg2 = TrainConfig(dataset="imagefolder", data_dir=str(root), batch_size=4, eval_batch_size=6, limit_batches=1,
                       cache="off")
    loader2 = make_loaders(cfg2, train_set, val_set, DistEnv(), torch.device("cpu"))[3]
    assert collections.Counter(torch.cat([y for _, y in loader2]).tolist()) == {0: 2, 1: 2, 2: 2}


def test_train_subset_is_class_balanced_and_the_same_for_every_seed(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=10, val_per_class=2, size=8)
    tr, va, info = build_datasets("imagefolder", root, train_subset=12, cache="off")
    assert len(tr) == info.train_size == 12 and len(va) == 6
    assert collections.Counter(y for _, y in (tr.dataset.samples[i] for i in tr.indices)) == {0: 4, 1: 4, 2: 4}
    tr2, _, _ = build_datasets("imagefolder", root, train_subset=12, cache="on")
    assert tr2.indices == tr.indices
    torch.manual_seed(0)
    x, y = next(iter(torch.utils.data.DataLoader(tr, batch_size=12)))
    torch.manual_seed(0)
    x2, y2 = next(iter(torch.utils.data.DataLoader(tr2, batch_size=12)))
    assert torch.equal(x, x2) and torch.equal(y, y2)  # a Subset keeps the batched, cached path
    tr3, _, _ = build_datasets("digits", train_subset=100)
    assert collections.Counter(tr3.dataset.targets[tr3.indices].tolist()) == {c: 10 for c in range(10)}
    with pytest.raises(DataError, match="train_subset must be a positive integer"):
        build_datasets("digits", train_subset=0)
