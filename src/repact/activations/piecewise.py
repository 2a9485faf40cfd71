"""The single-branch deploy form: a piecewise quadratic with its table held in buffers."""

from __future__ import annotations

from typing import Sequence

import torch

from .. import fuse
from ..ops import dispatch
from ..ops.piecewise import piecewise_quadratic, piecewise_quadratic_torch, table_call
from .base import Activation, check_float_input

__all__ = ["PiecewiseQuadratic"]


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
        self._calls = dispatch.CallCache()
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

    __jit_ignored_attributes__ = ["_table_cache", "hardswish_form", "_calls"]

    @torch.jit.unused
    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        # a layout seen before (without autograd) runs the call decided for it then, with none of
        # the checks that decision already made
        if not (torch.compiler.is_compiling() or torch._C._get_tracing_state()
                or (torch.is_grad_enabled() and (x.requires_grad or self.coeffs.requires_grad))):
            call = self._calls.get((x.shape, x.stride(), x.dtype, x.device, dispatch.get_backend()))
            if call is not None:
                b = self._buffers
                y = call(x, b["knots"], b["coeffs"])
                if y is not None:
                    return y
        return self._forward_checked(x)

    @torch.jit.unused
    def _forward_checked(self, x: torch.Tensor) -> torch.Tensor:
        check_float_input(x, "PiecewiseQuadratic")
        nd = x.dim()
        coeffs = self.coeffs
        cd = nd - 1 if (self.channels_last or nd == 1) else 1
        if coeffs.shape[0] > 1 and (nd < 2 or x.shape[cd] != coeffs.shape[0]):
            self.check_channels(x)
        # the kernels' form of the table (RepAct's basis for a canonical table) is cached in
        # _table_cache and rebuilt when the buffers change (in place or moved)
        compiling = torch.compiler.is_compiling()
        cache = None if compiling else self.__dict__
        if not (compiling or torch._C._get_tracing_state() or nd == 0
                or (torch.is_grad_enabled() and (x.requires_grad or coeffs.requires_grad))):
            call = table_call(x, self.knots, coeffs, cd, self.hardswish_form, cache)
            if call is not None:
                if len(self._calls) >= 16:
                    self._calls.clear()
                self._calls[(x.shape, x.stride(), x.dtype, x.device, dispatch.get_backend())] = call
                return call(x, self.knots, coeffs)
        return piecewise_quadratic(x, self.knots, coeffs, cd, basis_ok=self.hardswish_form, cache=cache)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            return self._forward_eager(x)
        check_float_input(x, "PiecewiseQuadratic")
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
