"""RepAct-III's BatchNorm statistics, one definition for every backend, and the running update.

The batch mean and the biased variance of ``s`` over each table's elements are accumulated in
float32 at least (float64 for float64 inputs), and the variance never as E[s^2] - mean^2 of raw
sums (which loses every digit when |mean| >> std):

* :func:`batch_stats` (tensor ops, the reference) takes two passes, mean then mean((s - mean)^2);
* the kernels take one pass of *shifted* sums, S1 = sum(s - K), S2 = sum((s - K)^2) with K the
  value of s at the table's first element (so |K - mean| is a few std), finished by
  :func:`moments_from_sums` (the C kernels finish the same way in C);
* :func:`merge_moments` joins per-process statistics, count-weighted (Chan et al.), for
  ``--sync-bn`` without any process's raw sums meeting another's;
* :func:`update_running` is the one running-statistics update (as ``nn.BatchNorm``: momentum or
  the cumulative average, the unbiased variance).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["accumulation_dtype", "batch_stats", "moments_from_sums", "merge_moments", "gather_moments",
           "update_running", "update_buffers", "sync_group", "backward_terms"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 tensors, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def batch_stats(s: torch.Tensor, dims: Sequence[int], group=None) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, var, count) of ``s`` over ``dims``, flattened to one value per table, differentiable.

    With a process ``group`` the statistics are those of every process's ``s`` together (two
    differentiable all-reduces, so gradients flow across processes too); ``count`` is then the
    global count.
    """
    acc = s.to(accumulation_dtype(s.dtype))
    count = 1
    for d in dims:
        count *= s.shape[d]
    total = acc.sum(dims, keepdim=True)
    if group is not None:
        import torch.distributed.nn.functional as dnn

        packed = dnn.all_reduce(torch.cat([total.reshape(-1), total.new_tensor([float(count)])]), group=group)
        total, count = packed[:-1].reshape(total.shape), int(packed[-1].item())
    mean = total / count
    sq = (acc - mean).square().sum(dims, keepdim=True)
    if group is not None:
        import torch.distributed.nn.functional as dnn

        sq = dnn.all_reduce(sq, group=group)
    return mean.reshape(-1), (sq / count).reshape(-1), count


def moments_from_sums(count: float, shift: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor):
    """Mean and biased variance from shifted sums S1 = sum(s - K), S2 = sum((s - K)^2)."""
    d = s1 / count
    return shift + d, (s2 / count - d * d).clamp_min(0.0)


def merge_moments(counts: torch.Tensor, means: torch.Tensor, variances: torch.Tensor):
    """Statistics of the union of W groups from each group's (count (W,), mean (W, C), var (W, C))."""
    n = counts.reshape(-1, 1).to(means.dtype)
    total = n.sum()
    mean = (n * means).sum(0) / total
    var = (n * (variances + (means - mean).square())).sum(0) / total
    return mean, var


def gather_moments(count: int, mean: torch.Tensor, var: torch.Tensor, group=None):
    """(mean, var, count) of every process's batch together from each one's (count, mean, var)."""
    packed = torch.cat([mean.new_tensor([float(count)]), mean.reshape(-1), var.reshape(-1)]).to(torch.float64)
    world = dist.get_world_size(group)
    parts = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(parts, packed, group=group)
    table = torch.stack(parts)
    c = mean.numel()
    gm, gv = merge_moments(table[:, 0], table[:, 1:1 + c], table[:, 1 + c:])
    return gm.to(mean.dtype), gv.to(var.dtype), int(table[:, 0].sum().item())


def update_running(bn: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """``bn``'s running statistics after a training batch of ``count`` values per table."""
    if not (bn.training and bn.track_running_stats):
        return
    update_buffers((bn.running_mean, bn.running_var, bn.num_batches_tracked, bn.momentum), mean, var, count)


def update_buffers(running, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """Running statistics ``running`` = (mean, var, num_batches_tracked, momentum) after a training
    batch of ``count`` values per table (as ``nn.BatchNorm``: the factor ``momentum``, or the
    cumulative average for None; the unbiased variance). The one update, for every backend (the
    Triton kernels make the same in place, ``repact.ops._triton_train``)."""
    run_mean, run_var, tracked, momentum = running
    with torch.no_grad():
        tracked.add_(1)
        factor = momentum if momentum is not None else 1.0 / float(tracked)
        unbiased = var.reshape(-1) * (count / max(count - 1, 1))
        run_mean.lerp_(mean.reshape(-1).to(run_mean.dtype), factor)
        run_var.lerp_(unbiased.to(run_var.dtype), factor)


def sync_group(bn: Optional[nn.Module]):
    """The process group whose statistics a BatchNorm (RepAct-III's) shares, or None: a
    ``nn.SyncBatchNorm`` or a ``repact.train.dist.CPUSyncBatchNorm`` (what ``--sync-bn`` makes) in
    training, with more than one process."""
    if not (isinstance(bn, nn.SyncBatchNorm) or getattr(bn, "sync_statistics", False)) or not bn.training:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = bn.process_group if bn.process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def backward_terms(gamma: torch.Tensor, var: torch.Tensor, eps: float, sum_g: torch.Tensor,
                   sum_g_centered: torch.Tensor, count: float, constant: bool):
    """RepAct-III's BatchNorm backward as ``dL/ds = alpha g + c1 + c2 (s - mean)`` per table, from
    ``sum g`` and ``sum g (s - mean)``: returns (alpha, c1, c2, grad gamma, grad beta). With
    ``constant`` statistics (the running ones) no gradient flows through mean and var."""
    invstd = torch.rsqrt(var + eps)
    alpha = gamma.to(invstd.dtype) * invstd
    sum_gshat = invstd * sum_g_centered
    if constant:
        zero = torch.zeros_like(alpha)
        return alpha, zero, zero, sum_gshat, sum_g
    return alpha, -alpha * sum_g / count, -alpha * invstd * sum_gshat / count, sum_gshat, sum_g
