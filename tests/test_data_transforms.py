"""Augmentation randomness drawn per sample from (seed, epoch, index): the same batches, and the same
trained weights, whichever number of loader workers draws them."""

from __future__ import annotations

import pytest
import torch

from repact.checkpoint import load_checkpoint
from repact.data import build_datasets
from repact.data.transforms import reseed_augmentation
from repact.train import TrainConfig
from repact.train.dist import DistEnv
from repact.train.setup import build_data, make_loaders
from train_fixtures import cli_env, run_cli, write_image_folder


def _epochs(cfg: TrainConfig, epochs: int = 2) -> list[list[torch.Tensor]]:
    """The training batches (inputs, then labels) of ``epochs`` epochs, as the engine draws them."""
    train_set, val_set, _ = build_data(cfg)
    loader, sampler, gen, _ = make_loaders(cfg, train_set, val_set, DistEnv(), torch.device("cpu"))
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        gen.manual_seed(cfg.seed * 1_000_003 + epoch * 7919)
        out.append([t.clone() for x, y in loader for t in (x, y)])
    return out


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("augment", ["crop-flip", "imagenet", "repact-paper"])
def test_augmented_batches_do_not_depend_on_the_loader_workers(tmp_path, augment):
    root = write_image_folder(tmp_path / "imgs", per_class=4, val_per_class=1, size=16, ext=".jpg")
    base = dict(dataset="imagefolder", data_dir=str(root), img_size=12, augment=augment, batch_size=5, seed=3,
                cache="off")
    by_workers = {w: _epochs(TrainConfig(**base, workers=w)) for w in (0, 2)}
    assert all(_same(a, b) for a, b in zip(by_workers[0], by_workers[2]))
    first, second = by_workers[0]
    assert not _same(first, second)  # another epoch, other crops (and order)
    other_seed = _epochs(TrainConfig(**{**base, "seed": 4}), epochs=1)[0]
    assert not _same(first, other_seed)


def test_an_image_is_augmented_the_same_in_any_batch(tmp_path):
    """Image k's crop and flip follow (seed, epoch, k): alone, or anywhere in a batch of others."""
    root = write_image_folder(tmp_path / "imgs", per_class=4, val_per_class=1, size=16)
    train, _, _ = build_datasets("imagefolder", root, augment="crop-flip", cache="off")
    assert reseed_augmentation(train, 7, 2)
    batch = train.__getitems__(list(range(len(train))))
    for k in (0, 5, 11):
        assert torch.equal(train[k][0], batch[k][0])
        assert torch.equal(train.__getitems__([11, k, 3])[1][0], batch[k][0])
    reseed_augmentation(train, 7, 3)
    assert not all(torch.equal(train[k][0], batch[k][0]) for k in range(len(train)))


@pytest.mark.slow
def test_workers_0_and_2_train_the_same_weights(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=8, val_per_class=2, size=16, ext=".jpg")
    weights = {}
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}"
        proc = run_cli("train", "--dataset", "imagefolder", "--data-dir", str(root), "--augment", "crop-flip",
                       "--epochs", "2", "--batch-size", "8", "--seed", "1", "--workers", workers, "--quiet",
                       "--out", str(out), env=cli_env())
        assert proc.returncode == 0, proc.stderr
        weights[workers] = load_checkpoint(out / "last").model_state
    a, b = weights["0"], weights["2"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
