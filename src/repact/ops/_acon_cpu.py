"""ACON on the ``cpu`` backend: the C kernels of ``repact/_native/acon.c`` (float32/float64 CPU
tensors), one call each way; see :mod:`repact.ops.acon` for the plan they read."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .cpu import _check, _fn, _ptr, _threads

__all__ = ["supports", "forward", "backward"]


def supports(plan) -> bool:
    d = plan.view.data
    return d.device.type == "cpu" and d.dtype in (torch.float32, torch.float64) and all(
        t is None or (t.dtype == d.dtype and t.is_cpu) for t in plan.params)


def _head(plan) -> tuple:
    v = plan.view
    args = [v.outer, v.C, v.inner, plan.od]
    for t, (so, sc) in zip(plan.params, plan.maps):
        args += [_ptr(t), so, sc]
    return (*args, int(plan.beta_full))


def forward(plan) -> torch.Tensor:
    """y laid out like ``plan.view.data``."""
    xd = plan.view.data
    y = torch.empty_like(xd)
    _check(_fn("repact_acon_forward", xd.dtype)(xd.data_ptr(), y.data_ptr(), *_head(plan), _threads()), "ACON forward")
    return y


def backward(plan, g: torch.Tensor, need_x: bool, need_params: Sequence[bool]
             ) -> Tuple[Optional[torch.Tensor], Tuple[Optional[torch.Tensor], ...]]:
    """(gx like ``plan.view.data``, the parameters' gradients: float64 slot sums, a per-element
    beta's gradient like ``plan.view.data``); None where not needed. ``g`` is laid out like x's view."""
    xd = plan.view.data
    gx = torch.empty_like(xd) if need_x else None
    sums = []
    for i, (t, need) in enumerate(zip(plan.params, need_params)):
        full = i == 2 and plan.beta_full
        sums.append(None if not need or t is None or full else torch.empty(t.numel(), dtype=torch.float64))
    gfull = torch.empty_like(xd) if plan.beta_full and need_params[2] else None
    counts = [s.numel() if s is not None else 0 for s in sums]
    rc = _fn("repact_acon_backward", xd.dtype)(
        xd.data_ptr(), g.data_ptr(), _ptr(gx), *_head(plan), *map(_ptr, sums), _ptr(gfull), *counts, _threads())
    _check(rc, "ACON backward")
    if gfull is not None:
        sums[2] = gfull
    return gx, tuple(sums)
