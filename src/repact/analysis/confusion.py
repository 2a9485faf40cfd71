"""A classifier's confusion matrix and top-1/top-5 accuracy through ``torchmetrics``
(``repact eval --confusion F.png``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .._modes import eval_mode
from .figures import MissingDependency, pyplot, save_figure

__all__ = ["ConfusionData", "confusion_data", "plot_confusion", "write_confusion"]


@dataclass
class ConfusionData:
    matrix: np.ndarray  # (classes, classes) counts; rows = true class, columns = predicted
    acc1: float  # percent
    acc5: float  # percent (k capped at the class count)
    n: int
    classes: list[str] = field(default_factory=list)


def _metrics(num_classes: int, device: torch.device):
    try:
        from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
    except ImportError:
        raise MissingDependency("torchmetrics is not installed; pip install 'repact[metrics]'") from None
    k5 = min(5, num_classes)
    return (MulticlassConfusionMatrix(num_classes).to(device),
            MulticlassAccuracy(num_classes, top_k=1, average="micro").to(device),
            MulticlassAccuracy(num_classes, top_k=k5, average="micro").to(device))


@torch.no_grad()
def confusion_data(model: nn.Module, loader: Iterable, num_classes: int, device: str | torch.device = "cpu",
                   limit: int | None = None, classes: Sequence[str] | None = None) -> ConfusionData:
    """Run ``model`` (eval mode, restored after) over ``loader`` and accumulate the metrics."""
    device = torch.device(device)
    cm, top1, top5 = _metrics(num_classes, device)
    n = 0
    with eval_mode(model):
        for i, (x, y) in enumerate(loader):
            if limit is not None and i >= limit:
                break
            x, y = x.to(device), y.to(device)
            logits = model(x).float()
            cm.update(logits, y)
            top1.update(logits, y)
            top5.update(logits, y)
            n += int(y.numel())
    if n == 0:
        raise ValueError("the confusion matrix saw no samples")
    names = [str(c) for c in classes] if classes else [str(i) for i in range(num_classes)]
    return ConfusionData(cm.compute().cpu().numpy().astype(np.int64), 100.0 * float(top1.compute()),
                         100.0 * float(top5.compute()), n, names)


def plot_confusion(data: ConfusionData, title: str | None = None):
    """A figure of the row-normalized matrix (share of each true class), with counts written in
    when there are at most 20 classes."""
    plt = pyplot()
    k = data.matrix.shape[0]
    rows = data.matrix.sum(axis=1, keepdims=True)
    share = np.divide(data.matrix, rows, out=np.zeros(data.matrix.shape, dtype=float), where=rows > 0)
    side = min(14.0, max(4.5, 0.45 * k + 2))
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    if k <= 40:
        ax.set_xticks(range(k), data.classes, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(k), data.classes, fontsize=7)
    if k <= 20:
        for (r, c), v in np.ndenumerate(data.matrix):
            if v:
                ax.text(c, r, str(v), ha="center", va="center", fontsize=6,
                        color="white" if share[r, c] > 0.6 else "black")
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(title or f"confusion matrix, {data.n} images: top-1 {data.acc1:.2f}%, top-5 {data.acc5:.2f}%",
                 fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="share of the true class")
    fig.tight_layout()
    return fig


def write_confusion(model: nn.Module, loader: Iterable, num_classes: int, path: str | Path,
                    device: str | torch.device = "cpu", limit: int | None = None,
                    classes: Sequence[str] | None = None, title: str | None = None) -> ConfusionData:
    """Compute the matrix and write its picture to ``path`` (format from the suffix)."""
    data = confusion_data(model, loader, num_classes, device, limit, classes)
    save_figure(plot_confusion(data, title), path)
    return data
