"""Fixed, class-balanced subsets: the validation images of ``--limit-val-batches`` and the training
images of ``--train-subset``. The choice depends only on the labels, ``n`` and ``seed``, never on the
training seed, so every run of a grid sees the same images."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from torch.utils.data import Dataset, Subset

from .common import DataError, dataset_targets

__all__ = ["balanced_indices", "balanced_subset"]


def balanced_indices(labels: Sequence[int], n: int, seed: int = 0) -> list[int]:
    """``n`` sample indices, as even over the classes as their sizes allow, in increasing order.

    Each class's images are shuffled once with ``seed``; classes then give one image each in turn
    (label order) until ``n`` are taken, so a class smaller than its share gives all it has and the
    others make up the rest.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if n < 1:
        raise DataError(f"a subset needs at least 1 image, got {n}")
    if n >= len(labels):
        return list(range(len(labels)))
    rng = np.random.RandomState(seed)
    pools = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        pools.append(idx)
    # round r takes the r-th image of every class that still has one
    order = np.concatenate([np.stack([p, np.full(len(p), r), np.arange(len(p))], 1)
                            for r, p in enumerate(pools)])  # (index, class rank, position in class)
    order = order[np.lexsort((order[:, 1], order[:, 2]))]
    return sorted(int(i) for i in order[:n, 0])


def balanced_subset(ds: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """``ds`` itself when ``n`` is None or covers it, else a :class:`Subset` of :func:`balanced_indices`."""
    if n is None or n >= len(ds):
        return ds
    return Subset(ds, balanced_indices(dataset_targets(ds), int(n), seed))
