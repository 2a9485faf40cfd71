"""Small helpers shared by the activation families (not part of the public API)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import Activation, broadcast_channel

GRANULARITIES = ("layer", "channel")


def check_choice(what: str, value, choices: Sequence) -> None:
    """``ValueError`` naming ``value`` and the accepted ``choices`` when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(repr(c) for c in choices)}")


def param_shape(granularity: str, channels: int | None) -> tuple[int]:
    """(C,) for a per-channel parameter, (1,) for a layer-wise one."""
    return (int(channels),) if granularity == "channel" else (1,)


def channels_of(state_dict, key: str) -> int | None:
    """Channel count of a per-channel tensor in a state dict: (C,) or the official (1, C, 1, 1)."""
    t = state_dict.get(key)
    if torch.is_tensor(t) and t.numel() > 1:
        return int(t.numel())
    return None


def reshape_flat_params(state_dict, prefix: str, names: Sequence[str]) -> None:
    """Accept (1, C, 1, 1)-shaped tensors (the official ACON layout) for our flat (C,) parameters."""
    for name in names:
        t = state_dict.get(prefix + name)
        if torch.is_tensor(t) and t.dim() > 1:
            state_dict[prefix + name] = t.reshape(-1)


class BatchNorm2dSafe(nn.BatchNorm2d):
    """``BatchNorm2d`` that normalises with its running statistics when a training batch holds one
    value per channel (batch size 1 on a 1x1 map), where batch statistics do not exist."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() <= x.shape[1] and self.running_mean is not None:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def per_sample_mean(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Mean over every dim but the batch and channel ones: (N, C) from (N, C, ...) or (N, ..., C)."""
    if x.dim() == 2:
        return x
    dims = tuple(range(1, x.dim() - 1)) if channels_last else tuple(range(2, x.dim()))
    return x.mean(dim=dims)


def per_sample_view(t: torch.Tensor, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """View an (N, K) tensor to broadcast against ``x`` (K on the channel dim, 1 elsewhere)."""
    shape = [1] * x.dim()
    shape[0] = t.shape[0]
    shape[x.dim() - 1 if channels_last else 1] = t.shape[1]
    return t.reshape(shape)


def as_nchw(
    x: torch.Tensor, channels_last: bool, who: str
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """View ``x`` as (N, C, H, W) for a spatial (convolutional) activation, with the inverse map.

    (N, C) becomes (N, C, 1, 1) and (N, C, L) becomes (N, C, L, 1); with ``channels_last`` the
    token layouts (N, C), (N, L, C) and (N, H, W, C) are permuted the same way. The inverse takes
    the (N, C, H', W') result (H', W' may differ after a stride) back to the input's layout.
    """
    nd = x.dim()
    if nd not in (2, 3, 4):
        layout = "(N, C), (N, L, C) or (N, H, W, C)" if channels_last else "(N, C), (N, C, L) or (N, C, H, W)"
        raise ValueError(f"{who} takes {layout} input, got shape {tuple(x.shape)}")
    if nd == 2:
        return x[:, :, None, None], lambda y: y.reshape(y.shape[0], y.shape[1])
    if channels_last:
        if nd == 3:
            return x.transpose(1, 2).unsqueeze(-1), lambda y: y.squeeze(-1).transpose(1, 2)
        return x.permute(0, 3, 1, 2), lambda y: y.permute(0, 2, 3, 1)
    if nd == 3:
        return x.unsqueeze(-1), lambda y: y.squeeze(-1)
    return x, lambda y: y


class GranularActivation(Activation):
    """An activation whose scalar parameters are one per layer (``"layer"``) or one per channel.

    Parameters are flat tensors, (1,) or (C,), viewed to broadcast against the input. A
    per-channel module built with ``channels=None`` creates them on the first forward or when a
    state dict is loaded; the official ACON layout (1, C, 1, 1) is accepted when loading.
    """

    #: names of the (1,) / (C,) parameters, used to infer channels from a state dict (and, unless a
    #: subclass builds its own, created from the attributes ``<name>_init``)
    param_names = ()

    def __init__(self, channels: int | None = None, *, granularity: str = "layer", channels_last: bool = False) -> None:
        check_choice("granularity", granularity, GRANULARITIES)
        super().__init__(channels if granularity == "channel" else None, channels_last=channels_last)
        self.granularity = granularity
        self._register_load_state_dict_pre_hook(self._flat_layout_hook)

    @property
    def needs_channels(self) -> bool:
        return self.granularity == "channel"

    def _build(self, channels: int | None) -> None:
        """One parameter per name of ``param_names``, filled with the attribute ``<name>_init``."""
        for name in self.param_names:
            setattr(self, name, self._new_param(channels, getattr(self, f"{name}_init")))

    def _new_param(self, channels: int | None, value: float | torch.Tensor) -> nn.Parameter:
        shape = param_shape(self.granularity, channels)
        if torch.is_tensor(value):
            return nn.Parameter(value.reshape(shape).clone().float())
        return nn.Parameter(torch.full(shape, float(value)))

    def _channels_from_state(self, state_dict, prefix):
        for name in self.param_names:
            c = channels_of(state_dict, prefix + name)
            if c is not None:
                return c
        return None

    def _flat_layout_hook(self, state_dict, prefix, *_args) -> None:
        reshape_flat_params(state_dict, prefix, self.param_names)

    def pview(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Parameter ``name`` viewed to broadcast against ``x``."""
        return broadcast_channel(getattr(self, name), x, self.channels_last)

    def extra_repr(self) -> str:
        base = super().extra_repr()
        return ", ".join([f"granularity={self.granularity!r}"] + ([base] if base else []))
