"""Optimizer parameter groups (no weight decay on activation parameters, biases and norms) and LR schedules."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .config import TrainConfig

__all__ = ["is_activation", "activation_modules", "param_groups", "build_optimizer", "build_scheduler", "lr_factor"]


def is_activation(m: nn.Module) -> bool:
    """A repact activation or torch's PReLU (learnable activations whose parameters are not decayed)."""
    from ..activations.base import Activation

    return isinstance(m, (Activation, nn.PReLU))


def activation_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Outermost activation modules ``(name, module)`` in definition order (nested ones are skipped)."""
    out: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if is_activation(m) and not any(name.startswith(p + ".") for p, _ in out):
            out.append((name, m))
    return out


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: ``decay`` (weights of convs/linears/embeddings, ndim > 1) and ``no_decay``
    (every parameter inside an activation, every bias, every norm parameter, other 1-D tensors)."""
    act_params = {id(p) for _, m in activation_modules(model) for p in m.parameters()}
    decay, no_decay = [], []
    decay_names, no_decay_names = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in act_params or p.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay", "param_names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay", "param_names": no_decay_names},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = [{k: v for k, v in g.items() if k != "param_names"} for g in param_groups(model, cfg.weight_decay)]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.Adam(groups, lr=cfg.lr)


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of ``cfg.lr`` at optimizer step ``t`` (schedules are evaluated per step)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    floor = cfg.min_lr / cfg.lr

    def f(t: int) -> float:
        if warm and t < warm:
            return (t + 1) / warm
        p = min(1.0, (t - warm) / max(1, total - warm))
        if cfg.schedule == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))
        if cfg.schedule == "linear":
            return floor + (1 - floor) * (1 - p)
        if cfg.schedule == "step":
            return max(floor, cfg.gamma ** (t // (cfg.step_size * steps_per_epoch)))
        return 1.0

    return f


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, steps_per_epoch))
