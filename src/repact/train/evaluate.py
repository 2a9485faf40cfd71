"""Evaluation: top-1 / top-5 accuracy and loss over a loader (summed over all DDP ranks)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .._modes import eval_mode
from .dist import DistEnv, all_reduce_sum

__all__ = ["evaluate", "topk_correct"]


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (k capped at the class count)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(target.unsqueeze(1))
    return [hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str = "cpu",
    *,
    env: DistEnv | None = None,
    amp: bool = False,
    limit: int | None = None,
    label_smoothing: float = 0.0,
) -> dict[str, float]:
    """``{"loss", "acc1", "acc5", "n"}`` over ``loader`` (accuracies in percent, loss averaged per sample).

    The model is put in eval mode and restored afterwards.
    """
    env = env or DistEnv()
    device = torch.device(device)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    ctx = torch.autocast("cuda", dtype=torch.float16) if amp and device.type == "cuda" else nullcontext()
    with eval_mode(model):
        for i, (x, y) in enumerate(loader):
            if limit is not None and i >= limit:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with ctx:
                logits = model(x)
            logits = logits.float()
            loss = F.cross_entropy(logits, y, reduction="sum", label_smoothing=label_smoothing)
            c1, c5 = topk_correct(logits, y)
            sums += torch.stack([loss.double(), c1.double(), c5.double(), torch.tensor(float(len(y)), device=device,
                                                                                         dtype=torch.float64)])
    all_reduce_sum(sums, env)
    loss, c1, c5, n = sums.tolist()
    if n == 0:
        raise ValueError("evaluation saw no samples (empty validation split or --limit-val-batches 0)")
    return {"loss": loss / n, "acc1": 100.0 * c1 / n, "acc5": 100.0 * c5 / n, "n": int(n)}


@torch.no_grad()
def evaluate_pair(
    reference: nn.Module,
    candidate: nn.Module,
    loader: Iterable,
    device: torch.device | str = "cpu",
    *,
    limit: int | None = None,
) -> dict[str, object]:
    """Both models on the same batches: their metrics, the largest logit difference and how many
    top-1 predictions differ (for checking a re-parameterized model against its training form)."""
    device = torch.device(device)
    sums = torch.zeros(2, 4, dtype=torch.float64)
    max_err, flips = 0.0, 0
    with eval_mode(reference, candidate):
        for i, (x, y) in enumerate(loader):
            if limit is not None and i >= limit:
                break
            x, y = x.to(device), y.to(device)
            outs = [reference(x).float(), candidate(x).float()]
            for j, logits in enumerate(outs):
                c1, c5 = topk_correct(logits, y)
                sums[j] += torch.tensor([float(F.cross_entropy(logits, y, reduction="sum")), float(c1), float(c5),
                                         float(len(y))], dtype=torch.float64)
            max_err = max(max_err, float((outs[0] - outs[1]).abs().max()))
            flips += int((outs[0].argmax(1) != outs[1].argmax(1)).sum())
    res = []
    for j in range(2):
        loss, c1, c5, n = sums[j].tolist()
        if n == 0:
            raise ValueError("evaluation saw no samples")
        res.append({"loss": loss / n, "acc1": 100.0 * c1 / n, "acc5": 100.0 * c5 / n, "n": int(n)})
    return {"reference": res[0], "candidate": res[1], "max_abs_logit_error": max_err, "top1_flips": flips}
