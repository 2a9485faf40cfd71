"""The contract every repact activation follows.

* **Shapes.** Channels are on dim 1 for (N, C), (N, C, L) and (N, C, H, W) inputs, or on the last
  dim for token tensors (N, ..., C) when ``channels_last=True``.
* **Dtypes.** Inputs are floating point; ``infer_channels``, called first in every ``forward``,
  refuses integer, bool and complex tensors with a ``TypeError`` (as ``F.hardswish`` does).
* **Lazy channels.** A channel-wise activation built with ``channels=None`` creates its
  parameters on the first forward (or when a state dict is loaded into it), so
  ``act_layer(inplace=True)`` construction works. Create the optimizer after one forward pass.
* **Cost.** ``flops(shape, deploy=False)`` counts the pointwise work (one multiply, add, compare or
  select = 1; exp/log/tanh/sigmoid/division = 1 each) plus any generator network.
* **Deploy.** A deployable activation returns its single-branch form from ``to_deploy()``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["Activation", "NotDeployableError", "channel_view_shape", "broadcast_channel", "check_float_input"]


class NotDeployableError(ValueError):
    """The activation has no exact single-branch (deploy) form."""


def channel_view_shape(ndim: int, channels: int, channels_last: bool) -> list[int]:
    """Shape that broadcasts a (C,) tensor against an ``ndim`` input with channels on dim 1 or -1."""
    if ndim < 1:
        raise ValueError("activation input must have at least one dimension")
    if channels_last or ndim == 1:
        return [1] * (ndim - 1) + [channels]
    return [1, channels] + [1] * (ndim - 2)


def broadcast_channel(t: torch.Tensor, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """View a per-channel (C,) tensor (or a scalar-like (1,) one) to broadcast against ``x``."""
    if t.numel() == 1:
        return t.reshape([1] * x.dim()) if x.dim() else t.reshape(())
    return t.reshape(channel_view_shape(x.dim(), t.numel(), channels_last))


def check_float_input(x: torch.Tensor, who: str) -> None:
    """``TypeError`` for a non-floating-point input (integer, bool, complex), as ``F.hardswish`` refuses one.

    Integer inputs would otherwise be promoted in some ops and truncated in others, and the
    result would be neither the integer nor the float function.
    """
    if not x.is_floating_point():
        raise TypeError(f"{who} takes a floating-point input (float16, bfloat16, float32 or float64), got {x.dtype}; "
                        "convert it first, e.g. x.float()")


class Activation(nn.Module):
    """Base class: channel handling, lazy parameters, cost accounting and the deploy hook."""

    # (class attributes carry no annotations: TorchScript would try to resolve them)
    deployable = False
    #: pointwise ops per element of the training form and of the deploy form (None: same as training)
    flops_train = 1.0
    flops_deploy = None

    def __init__(self, channels: int | None = None, *, channels_last: bool = False) -> None:
        super().__init__()
        if channels is not None:
            channels = int(channels)
            if channels < 1:
                raise ValueError(f"channels must be a positive integer or None, got {channels}")
        self.channels = channels
        self.channels_last = bool(channels_last)
        self._built = False
        self._register_load_state_dict_pre_hook(self._lazy_load_hook, with_module=False)

    # --- lazy construction -------------------------------------------------------------------
    @property
    def needs_channels(self) -> bool:
        """Whether this configuration has per-channel state (and so needs ``channels``)."""
        return False

    def _build(self, channels: int | None) -> None:
        """Create parameters and submodules; ``channels`` is None for layer-wise settings."""

    def _channels_from_state(self, state_dict: dict[str, torch.Tensor], prefix: str) -> int | None:
        """Channel count implied by a state dict (for loading into an unbuilt lazy module)."""
        return None

    def _finish_init(self) -> None:
        """Call at the end of a subclass ``__init__``: builds now unless channels must be inferred."""
        if not self.needs_channels or self.channels is not None:
            self._build(self.channels if self.needs_channels else None)
            self._built = True

    def _lazy_load_hook(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        if self._built:
            return
        channels = self._channels_from_state(state_dict, prefix)
        if channels is None:
            return
        self.channels = int(channels)
        self._build(self.channels)
        self.train(self.training)  # submodules created now follow the module's mode
        self._built = True

    def infer_channels(self, x: torch.Tensor) -> None:
        """Check the input's dtype and build lazily from it (called at the start of ``forward``)."""
        check_float_input(x, type(self).__name__)
        if self._built:
            return
        if x.dim() < 2:
            raise ValueError(
                f"{type(self).__name__} with channels=None needs an input of at least 2 dims to infer the "
                f"channel count, got shape {tuple(x.shape)}"
            )
        channels = x.shape[-1] if self.channels_last else x.shape[1]
        self.channels = int(channels)
        self._build(self.channels)
        self.train(self.training)  # submodules created now follow the module's mode
        # parameters follow the input's device, and its dtype unless autocast manages precision
        autocast = torch.is_autocast_enabled(x.device.type) if x.device.type in ("cpu", "cuda") else False
        dtype = x.dtype if (x.is_floating_point() and not autocast) else None
        self.to(device=x.device, dtype=dtype)
        self._built = True

    def channel_dim(self, x: torch.Tensor) -> int:
        return x.dim() - 1 if (self.channels_last or x.dim() == 1) else 1

    def check_channels(self, x: torch.Tensor) -> None:
        if self.needs_channels and self.channels is not None and x.dim() >= 2:
            got = x.shape[self.channel_dim(x)]
            if got != self.channels:
                where = "last" if self.channels_last else "1"
                raise ValueError(
                    f"{type(self).__name__} was built for {self.channels} channels but got {got} on dim {where} "
                    f"(input shape {tuple(x.shape)})"
                )

    # --- cost ----------------------------------------------------------------------------------
    def extra_flops(self, input_shape: Sequence[int]) -> int:
        """FLOPs beyond the pointwise work (e.g. a generator network); 0 by default."""
        return 0

    def flops(self, input_shape: Sequence[int], deploy: bool = False) -> int:
        numel = math.prod(int(s) for s in input_shape)
        per = self.flops_deploy if (deploy and self.flops_deploy is not None) else self.flops_train
        return int(round(numel * per)) + int(self.extra_flops(input_shape))

    # --- deploy --------------------------------------------------------------------------------
    def to_deploy(self) -> nn.Module:
        raise NotDeployableError(f"{type(self).__name__} has no exact single-branch deploy form")

    def extra_repr(self) -> str:
        parts: list[str] = []
        if self.channels is not None:
            parts.append(f"channels={self.channels}")
        if self.channels_last:
            parts.append("channels_last=True")
        return ", ".join(parts)


def config_repr(**items: Any) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in items.items())
