"""ACON on the ``triton`` backend: one kernel each way, and one reduction kernel for the backward's
per-channel sums (see :mod:`repact.ops.acon` for the plan the kernels read).

The tensor is x's (O, C, I) view (``repact.ops.layout``); a program takes a tile of (BO, BC, BI)
elements (BC = 1: a block of one channel; BI = 1: channels along the tile). Inputs of any float
dtype are computed in float32 (float64 for float64), the parameters' dtype
(:func:`repact.ops.dispatch.param_dtype`). The sigmoid comes from e = exp(-|z|) alone
(``_sigmoid_parts``), so it neither overflows nor cancels for any z.

Backward: gx, and per tile and channel the sums of g dy/dp1, g dy/dp2 and, for a beta of one
value or per channel, g dy/dbeta (partials (P, 3, C), P tiles per channel), reduced over P by
RepAct's reduction (``_triton._reduce``). p1 and p2 are one value or per channel; a beta per
sample and channel or per sample gets g dy/dbeta per element, summed to its shape by tensor ops
(as a per-element beta, whose gradient that is).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ._triton import _reduce, _tiling
from ._triton_kernels import _tile
from .batchnorm import accumulation_dtype
from .dispatch import triton_interpreted

__all__ = ["supports", "forward", "backward"]

# parameter modes (constexpr): absent, one value, per channel, [(o // OD) SO + c SC], per element
NONE, ONE, CHANNEL, MAP, ELEMENT = 0, 1, 2, 3, 4


@triton.jit
def _param(ptr, offs, mask, o, c, OD, SO, SC, ref, DEFAULT: tl.constexpr, MODE: tl.constexpr):
    """A parameter's values for the tile (o, c: in range), broadcastable to it, in ref's dtype."""
    if MODE == 0:
        v = tl.full((1, 1, 1), DEFAULT, ref.dtype)
    elif MODE == 1:
        v = tl.load(ptr + c * 0).to(ref.dtype)[None, :, None]
    elif MODE == 2:
        v = tl.load(ptr + c).to(ref.dtype)[None, :, None]
    elif MODE == 3:
        v = tl.load(ptr + ((o[:, None] // OD) * SO + c[None, :] * SC)).to(ref.dtype)[:, :, None]
    else:
        v = tl.load(ptr + offs, mask=mask, other=0.0).to(ref.dtype)
    return v


@triton.jit
def _sigmoid_parts(z):
    """sigmoid(z) and 1 - sigmoid(z), from e = exp(-|z|)."""
    e = tl.exp(-tl.abs(z))
    r = 1.0 / (1.0 + e)
    er = e * r
    pos = z >= 0
    return tl.where(pos, r, er), tl.where(pos, er, r)


@triton.jit
def _values(x, p1, p2, beta, offs, mask, o, c, O, C, OD, SO, SC, P1: tl.constexpr, P2: tl.constexpr,
            BETA: tl.constexpr, F64: tl.constexpr):
    """x, d = p1 - p2, p2, u = d x, z = beta u, sigmoid(z), 1 - sigmoid(z) for the tile."""
    xv = tl.load(x + offs, mask=mask, other=0.0)
    xv = xv.to(tl.float64) if F64 else xv.to(tl.float32)
    os = tl.where(o < O, o, 0)  # rows and channels past the end read row and channel 0 (never stored)
    cs = tl.where(c < C, c, 0)
    a1 = _param(p1, offs, mask, os, cs, OD, 0, 1, xv, 1.0, P1)
    a2 = _param(p2, offs, mask, os, cs, OD, 0, 1, xv, 0.0, P2)
    bt = _param(beta, offs, mask, os, cs, OD, SO, SC, xv, 1.0, BETA)
    d = a1 - a2
    u = xv * d
    z = u * bt
    s, q = _sigmoid_parts(z)
    return xv, d, a2, u, z, s, q


@triton.jit
def acon_forward_kernel(x, y, p1, p2, beta, O, C, I, OD, SO, SC, P1: tl.constexpr, P2: tl.constexpr,
                        BETA: tl.constexpr, F64: tl.constexpr, BO: tl.constexpr, BC: tl.constexpr,
                        BI: tl.constexpr):
    offs, mask, o, c, _p = _tile(tl.program_id(0), O, C, I, BO, BC, BI)
    xv, d, a2, u, z, s, q = _values(x, p1, p2, beta, offs, mask, o, c, O, C, OD, SO, SC, P1, P2, BETA, F64)
    out = u * s
    if P2 != 0:
        out = out + xv * a2
    tl.store(y + offs, out.to(y.dtype.element_ty), mask=mask)


@triton.jit
def acon_backward_kernel(x, g, gx, gbe, p1, p2, beta, partials, O, C, I, OD, SO, SC, P1: tl.constexpr,
                         P2: tl.constexpr, BETA: tl.constexpr, NEED_X: tl.constexpr, SUMS: tl.constexpr,
                         BETA_ELEMENTS: tl.constexpr, F64: tl.constexpr, BO: tl.constexpr, BC: tl.constexpr,
                         BI: tl.constexpr):
    """gx; partials[p, k, c] (SUMS): the tile's sums of g x core, g x - g x core and g u s u q
    (= g dy/dp1, g dy/dp2, g dy/dbeta); gbe (BETA_ELEMENTS): g dy/dbeta per element."""
    offs, mask, o, c, p = _tile(tl.program_id(0), O, C, I, BO, BC, BI)
    xv, d, a2, u, z, s, q = _values(x, p1, p2, beta, offs, mask, o, c, O, C, OD, SO, SC, P1, P2, BETA, F64)
    gv = tl.where(mask, tl.load(g + offs, mask=mask, other=0.0).to(xv.dtype), 0.0)
    core = s * (1.0 + z * q)
    if NEED_X:
        t = core * d
        if P2 != 0:
            t = t + a2
        tl.store(gx + offs, (gv * t).to(gx.dtype.element_ty), mask=mask)
    tb = gv * (u * s) * (u * q)
    if BETA_ELEMENTS:
        tl.store(gbe + offs, tb.to(gbe.dtype.element_ty), mask=mask)
    if SUMS:
        gxv = gv * xv
        ta = gxv * core
        cm = c < C
        base = partials + p * 3 * C + c
        tl.store(base, tl.sum(tl.sum(ta, axis=2), axis=0), mask=cm)
        tl.store(base + C, tl.sum(tl.sum(gxv - ta, axis=2), axis=0), mask=cm)
        tl.store(base + 2 * C, tl.sum(tl.sum(tb, axis=2), axis=0), mask=cm)


# --- launches ------------------------------------------------------------------------------------------
def supports(plan) -> bool:
    """p1 and p2 one value or per channel (every ACON's); beta any map the plan has."""
    d = plan.view.data
    on_device = d.device.type == "cuda" or (d.device.type == "cpu" and triton_interpreted())
    return on_device and d.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) and \
        all(m in ((0, 0), (0, 1)) for m in plan.maps[:2])


def _grid(view):
    """Tile (BO, BC, BI), the number of programs and the partial sums per channel (RepAct's tiling)."""
    return _tiling(view.outer, view.C, view.inner)


def _modes(plan) -> Tuple[int, int, int]:
    def mode(t, m):
        return NONE if t is None else (ONE if m == (0, 0) else CHANNEL if m == (0, 1) else MAP)

    p1, p2, beta = plan.params
    return mode(p1, plan.maps[0]), mode(p2, plan.maps[1]), ELEMENT if plan.beta_full else mode(beta, plan.maps[2])


def _launch_args(plan) -> tuple:
    """The kernels' common arguments after their tensors, and their constexprs."""
    view = plan.view
    so, sc = plan.maps[2]
    p1, p2, beta = (t if t is not None else view.data for t in plan.params)
    m1, m2, mb = _modes(plan)
    (bo, bc, bi), n, _ = _grid(view)
    args = (p1, p2, beta)
    dims = (view.outer, view.C, view.inner, plan.od, so, sc)
    consts = dict(P1=m1, P2=m2, BETA=mb, F64=view.data.dtype == torch.float64, BO=bo, BC=bc, BI=bi)
    return (n,), args, dims, consts


def forward(plan) -> torch.Tensor:
    """y laid out like ``plan.view.data``."""
    y = torch.empty_like(plan.view.data)
    grid, params, dims, consts = _launch_args(plan)
    acon_forward_kernel[grid](plan.view.data, y, *params, *dims, **consts)
    return y


def _to_slots(per_element: torch.Tensor, plan) -> torch.Tensor:
    """A beta map's slots from g dy/dbeta per element (flat, in the view's memory order): sums over
    each sample's rows and the inner dim, then over channels (SC = 0) or samples (SO = 0)."""
    v = plan.view
    so, sc = plan.maps[2]
    t = per_element.reshape(v.outer // plan.od, plan.od, v.C, v.inner).sum(dim=(1, 3))
    if not sc:
        t = t.sum(dim=1, keepdim=True)
    if not so:
        t = t.sum(dim=0, keepdim=True)
    return t.reshape(-1)


def backward(plan, g: torch.Tensor, need_x: bool, need_params: Sequence[bool]
             ) -> Tuple[Optional[torch.Tensor], Tuple[Optional[torch.Tensor], ...]]:
    """(gx like ``plan.view.data``, the parameters' gradients as slot sums in the parameters' dtype;
    a per-element beta's like ``plan.view.data``); None where not needed."""
    view = plan.view
    acc = accumulation_dtype(view.data.dtype)
    modes = _modes(plan)
    beta_elements = need_params[2] and modes[2] in (MAP, ELEMENT)
    sums = any(n and m in (ONE, CHANNEL) for n, m in zip(need_params, modes))
    _, _, P = _grid(view)
    gx = torch.empty_like(view.data) if need_x else view.data
    # per element: laid out like x (a per-element beta's gradient) or flat in memory order (summed
    # to a beta map's slots by _to_slots)
    if not beta_elements:
        gbe = view.data
    elif modes[2] == ELEMENT:
        gbe = torch.empty_like(view.data, dtype=acc)
    else:
        gbe = torch.empty(view.data.numel(), dtype=acc, device=view.data.device)
    partials = torch.empty((P, 3, view.C) if sums else (1,), dtype=acc, device=view.data.device)
    grid, params, dims, consts = _launch_args(plan)
    acon_backward_kernel[grid](view.data, g, gx, gbe, *params, partials, *dims, NEED_X=need_x, SUMS=sums,
                               BETA_ELEMENTS=beta_elements, **consts)
    reduced = _reduce(partials, P) if sums else None
    out = []
    for k, (need, mode) in enumerate(zip(need_params, modes)):
        if not need or mode == NONE:
            out.append(None)
        elif mode == ELEMENT:
            out.append(gbe)
        elif mode == MAP:
            out.append(_to_slots(gbe, plan))
        else:
            # (one value over C > 1 channels: their sum; C = 1, every layer-wise ACON: as it is)
            out.append(reduced[k] if mode == CHANNEL or view.C == 1 else reduced[k].sum().reshape(1))
    return (gx if need_x else None), tuple(out)
