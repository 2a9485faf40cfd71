"""Distributed data parallel setup for ``torchrun --nproc_per_node N -m repact train ...``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Sized

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from ..ops.batchnorm import batch_stats, sync_group, update_running

__all__ = ["DistEnv", "setup_distributed", "ShardSampler", "all_reduce_sum", "all_gather_objects", "barrier",
           "CPUSyncBatchNorm", "convert_sync_batchnorm"]


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shutdown(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device: str) -> DistEnv:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA).

    Without ``WORLD_SIZE`` > 1 this is a single process and nothing is initialized.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), local, False)
    use_cuda = device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistEnv(rank, world, local, True)


class ShardSampler(Sampler[int]):
    """Every ``world``-th index from ``rank``, in order, without padding: evaluation over all ranks
    sees each sample exactly once."""

    def __init__(self, data: Sized, rank: int, world: int) -> None:
        self.n, self.rank, self.world = len(data), rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    if not env.enabled:
        return [obj]
    out: list[Any] = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm whose training statistics are those of every process of ``process_group`` (all
    by default), for CPU tensors (gloo), where ``nn.SyncBatchNorm`` refuses (and DDP refuses any
    model holding one). The statistics come from two differentiable all-reduces
    (``repact.ops.batchnorm.batch_stats``), so the backward's sums are reduced too; eval mode
    uses the running statistics. A RepAct-III whose ``bn`` is one of these (or an
    ``nn.SyncBatchNorm``) shares its statistics the same way (``repact.ops.batchnorm.sync_group``).
    """

    sync_statistics = True

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, device=None, dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training and self.running_mean is not None:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False,
                                            0.0, self.eps)
        dims = [d for d in range(x.dim()) if d != 1]
        mean, var, count = batch_stats(x, dims, sync_group(self))  # (one process: no group)
        update_running(self, mean, var, count)
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.weight is not None:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y.to(x.dtype)


def _to_cpu_sync(module: nn.Module, group) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not getattr(module, "sync_statistics", False):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats, group)
        with torch.no_grad():
            if module.affine:
                out.weight, out.bias = module.weight, module.bias
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _to_cpu_sync(child, group))
    return out


def convert_sync_batchnorm(model: nn.Module, process_group=None) -> nn.Module:
    """``--sync-bn``: every BatchNorm, RepAct-III's included, shares its batch statistics across the
    processes: ``nn.SyncBatchNorm`` for a model on CUDA (nccl), :class:`CPUSyncBatchNorm` on CPU
    (gloo)."""
    on_cuda = any(t.is_cuda for t in model.parameters()) or any(t.is_cuda for t in model.buffers())
    if on_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)
    return _to_cpu_sync(model, process_group)
