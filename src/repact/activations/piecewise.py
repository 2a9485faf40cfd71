"""The single-branch deploy form: a piecewise quadratic with its table held in buffers."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .. import fuse
from ..ops.piecewise import (
    _use_native,
    native_basis_forward,
    native_basis_table,
    native_forward_prepared,
    native_table,
    piecewise_quadratic,
    piecewise_quadratic_torch,
)
from .base import Activation

__all__ = ["PiecewiseQuadratic"]


def _version(t: torch.Tensor) -> int:
    """In-place modification counter; inference tensors have none (and cannot be modified in place
    outside inference mode), so -1 stands for them and the cache is keyed on their storage only."""
    return -1 if t.is_inference() else t._version


class PiecewiseQuadratic(Activation):
    """``y = c0 + c1 x + c2 x^2`` on each segment between sorted ``knots``.

    ``coeffs`` has shape (Cc, K + 1, 3): one table for the layer (Cc = 1) or one per channel.
    Knots and coefficients are registered buffers (saved in the state dict, moved by ``.to()``).
    The forward never writes into its input and scripts, traces, compiles and exports to ONNX.
    """

    deployable = False  # already deployed

    def __init__(
        self,
        knots: Sequence[float] | torch.Tensor,
        coeffs: torch.Tensor,
        *,
        channels_last: bool = False,
    ) -> None:
        coeffs = torch.as_tensor(coeffs).detach().clone().to(torch.float32 if not torch.is_tensor(coeffs) else coeffs.dtype)
        if coeffs.dim() == 2:
            coeffs = coeffs.unsqueeze(0)
        knots_t = torch.as_tensor(knots, dtype=coeffs.dtype).detach().clone().reshape(-1)
        if coeffs.dim() != 3 or coeffs.shape[-1] != 3 or coeffs.shape[1] != knots_t.numel() + 1:
            raise ValueError(
                f"coeffs must have shape (Cc, {knots_t.numel() + 1}, 3) for {knots_t.numel()} knots, "
                f"got {tuple(coeffs.shape)}"
            )
        if knots_t.numel() > 1 and not bool((knots_t[1:] > knots_t[:-1]).all()):
            raise ValueError(f"knots must be strictly increasing, got {knots_t.tolist()}")
        channels = coeffs.shape[0] if coeffs.shape[0] > 1 else None
        super().__init__(channels, channels_last=channels_last)
        self.register_buffer("knots", knots_t)
        self.register_buffer("coeffs", coeffs)
        self._refresh_form()
        self.flops_train = 4.0 + knots_t.numel()
        self.flops_deploy = self.flops_train
        self._built = True

    def _lazy_load_hook(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # a deploy module can be built with any placeholder table and then take its shape from a
        # state dict (build the deploy architecture directly, then load fused weights)
        for name in ("knots", "coeffs"):
            t = state_dict.get(prefix + name)
            if torch.is_tensor(t) and t.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(t, device=getattr(self, name).device))
        coeffs = state_dict.get(prefix + "coeffs")
        if torch.is_tensor(coeffs):
            self.channels = coeffs.shape[0] if coeffs.shape[0] > 1 else None
            self.flops_train = self.flops_deploy = 4.0 + coeffs.shape[1] - 1
            knots = state_dict.get(prefix + "knots", self.knots)
            self._refresh_form(knots, coeffs)

    def _refresh_form(self, knots: torch.Tensor | None = None, coeffs: torch.Tensor | None = None) -> None:
        """Whether the table is a canonical RepAct one, E + A x + B relu(x) + D hardswish(x) on the
        knots (-3, 0, 3); torch.compile then uses that cheaper form (call after editing the
        buffers in place)."""
        knots = self.knots if knots is None else knots
        coeffs = self.coeffs if coeffs is None else coeffs
        exact_knots = tuple(float(k) for k in knots.reshape(-1).tolist()) == fuse.HARDSWISH_KNOTS
        self.hardswish_form = bool(exact_knots and fuse.basis_coefficients(knots, coeffs) is not None)

    @property
    def needs_channels(self) -> bool:
        return self.coeffs.shape[0] > 1

    def _channel_dim(self, x: torch.Tensor) -> int:
        if self.channels_last or x.dim() == 1:
            return x.dim() - 1
        return 1

    __jit_ignored_attributes__ = ["_table_cache", "hardswish_form"]

    @torch.jit.unused
    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        coeffs = self.coeffs
        cc = coeffs.shape[0]
        cd = x.dim() - 1 if (self.channels_last or x.dim() == 1) else 1
        if cc > 1 and (x.dim() < 2 or x.shape[cd] != cc):
            self.check_channels(x)
        if not (x.requires_grad and torch.is_grad_enabled()) and _use_native(x):
            # the kernel's table is cached and rebuilt when the buffers change (in place or moved);
            # a canonical RepAct table runs in RepAct's own basis (about half the arithmetic)
            key = (x.dtype, coeffs.data_ptr(), _version(coeffs), self.knots.data_ptr(), _version(self.knots))
            cache = self.__dict__.get("_table_cache")
            if cache is None or cache[0] != key:
                basis = native_basis_table(self.knots, coeffs, x.dtype) if self.hardswish_form else None
                cache = (key, basis if basis is not None else native_table(self.knots, coeffs, x.dtype))
                self.__dict__["_table_cache"] = cache
            if torch.is_tensor(cache[1]):
                y = native_basis_forward(x, cache[1], cd)
            else:
                y = native_forward_prepared(x, cache[1], cc, cd)
            if y is not None:
                return y
        if self.hardswish_form and torch.compiler.is_compiling():
            return self._hardswish_basis(x, cd)
        return piecewise_quadratic(x, self.knots, coeffs, cd)

    def _hardswish_basis(self, x: torch.Tensor, cd: int) -> torch.Tensor:
        # E + A x + B relu(x) + D hardswish(x), read off the table in the graph and written as
        # x (A + D/6 clamp(x + 3, 0, 6)) + B relu(x) + E: fewer ops than the where-chain for the
        # compiler to fuse, and no division (same function; rounding differs at the 1e-7 level)
        c = self.coeffs.to(x.dtype)
        shape = [1] * x.dim()
        if c.shape[0] > 1:
            shape[cd] = c.shape[0]
        e, a = c[:, 0, 0].reshape(shape), c[:, 0, 1].reshape(shape)
        d6 = c[:, 1, 2].reshape(shape)
        b = (c[:, 2, 1] - c[:, 1, 1]).reshape(shape)
        return x * (a + d6 * torch.clamp(x + 3.0, 0.0, 6.0)) + b * torch.relu(x) + e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            return self._forward_eager(x)
        return piecewise_quadratic_torch(x, self.knots, self.coeffs, self._channel_dim(x))

    def segments(self) -> list[tuple[float, float]]:
        """The (left, right) bounds of every segment."""
        k = [float(v) for v in self.knots.tolist()]
        edges = [-float("inf"), *k, float("inf")]
        return list(zip(edges[:-1], edges[1:]))

    def extra_repr(self) -> str:
        knots = ", ".join(f"{v:g}" for v in self.knots.tolist())
        parts = [f"knots=({knots})", f"tables={self.coeffs.shape[0]}"]
        if self.channels_last:
            parts.append("channels_last=True")
        return ", ".join(parts)
