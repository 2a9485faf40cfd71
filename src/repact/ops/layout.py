"""How the kernels see a tensor: (outer, C, inner) in memory order, and per-channel views."""

from __future__ import annotations

from typing import List, NamedTuple, Optional

import torch

__all__ = ["FlatView", "flat_view", "channel_shape", "reduce_dims"]


class FlatView(NamedTuple):
    """``data`` (dense, in memory order) seen as (outer, C, inner); C = 1 for one table per tensor."""

    data: torch.Tensor
    outer: int
    C: int
    inner: int


def flat_view(x: torch.Tensor, channel_dim: int, cc: int) -> Optional[FlatView]:
    """The kernels' view of ``x`` for ``cc`` tables (1, or one per channel on ``channel_dim``);
    None where the channels are neither on dim 1 nor last. Dense NCHW and channels-last 4-D
    tensors are used as they are; others are made contiguous."""
    n = x.numel()
    nd = x.dim()
    if cc == 1:
        if x.is_contiguous() or (nd == 4 and x.is_contiguous(memory_format=torch.channels_last)):
            return FlatView(x, 1, 1, n)
        return FlatView(x.contiguous(), 1, 1, n)
    c = x.shape[channel_dim]
    if c != cc:
        return None
    if channel_dim == nd - 1:
        return FlatView(x.contiguous(), n // c, c, 1)
    if channel_dim == 1:
        if nd == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return FlatView(x, n // c, c, 1)
        x = x.contiguous()
        return FlatView(x, x.shape[0], c, n // (x.shape[0] * c))
    return None


def like_view(t: torch.Tensor, view: FlatView) -> torch.Tensor:
    """``t`` (shaped like the viewed tensor) laid out exactly like ``view.data``, a plain tensor."""
    d = view.data
    if t.dtype != d.dtype or t.device != d.device or t.stride() != d.stride() or type(t) is not torch.Tensor:
        return torch.empty_like(d).copy_(t)
    return t


def channel_shape(ndim: int, channel_dim: int, cc: int) -> List[int]:
    """Shape that broadcasts a (cc,) tensor against an ``ndim`` tensor (cc = 1: all ones)."""
    shape = [1] * ndim
    if cc > 1 and ndim:
        shape[channel_dim] = cc
    return shape


def reduce_dims(ndim: int, channel_dim: int, per_channel: bool) -> List[int]:
    """The dims a per-table sum runs over: all, or all but the channels."""
    return [d for d in range(ndim) if not (per_channel and d == channel_dim)]
