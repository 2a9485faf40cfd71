"""The ``triton`` backend: repact's Triton kernels (``_triton_kernels``) for CUDA tensors.

float32, float16, bfloat16 (computed in float32) and float64; any layout the dispatch's view
takes (dense NCHW blocks, channels-last rows, token tensors). Sums are reduced in two stages
(per tile, then over tiles) in float32 (float64 for float64 inputs). Built with
``TRITON_INTERPRET=1`` in the environment, the kernels run in Triton's interpreter on CPU tensors
instead (how the tests check them without a GPU; ``interpreted()``).

RepAct's coefficients and their gradient's map back onto the branch weights are tiny tensor ops
(``reference.coefficients`` and its autograd); the BatchNorm statistics and backward terms come
from ``repact.ops.batchnorm``.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton

from . import _triton_kernels as kern
from . import reference
from .batchnorm import accumulation_dtype, backward_terms, moments_from_sums
from .cpu import BN_BATCH, BN_CONST, BN_GIVEN, BN_NONE, TrainArgs
from .layout import FlatView, like_view

_TILE = 1024  # elements per program
_REDUCE_ROWS, _REDUCE_COLS = 64, 64


def interpreted() -> bool:
    """Whether the kernels were built for Triton's interpreter (``TRITON_INTERPRET=1``)."""
    return type(kern.apply_kernel).__name__ == "InterpretedFunction"


def _np2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _grid(view: FlatView):
    """Tile (BO, BC, BI), the number of programs and the partial sums per channel."""
    O, C, I = view.outer, view.C, view.inner
    if I == 1 and C > 1:
        bc = min(_np2(C), 128)
        bi = 1
        bo = min(_np2(O), max(1, _TILE // bc))
    else:
        bc = 1
        bi = min(_np2(I), _TILE)
        bo = min(_np2(O), max(1, _TILE // bi))
    n_o, n_c, n_i = triton.cdiv(O, bo), triton.cdiv(C, bc), triton.cdiv(I, bi)
    return (bo, bc, bi), n_o * n_c * n_i, n_o * n_i


def _acc(view: FlatView) -> torch.dtype:
    return accumulation_dtype(view.data.dtype)


def _reduce(partials: torch.Tensor, P: int) -> torch.Tensor:
    """Sum (P, ...) partials over P."""
    flat = partials.reshape(P, -1)
    out = torch.empty(flat.shape[1], dtype=flat.dtype, device=flat.device)
    grid = (triton.cdiv(flat.shape[1], _REDUCE_COLS),)
    kern.reduce_kernel[grid](flat, out, P, flat.shape[1], BP=_REDUCE_ROWS, BR=_REDUCE_COLS)
    return out.reshape(partials.shape[1:])


def _form(coef: torch.Tensor, knots: Optional[torch.Tensor]):
    basis = coef.shape[0] == 4
    k = 0 if basis else coef.shape[0] // 3 - 1
    return basis, k, (coef if basis or knots is None else knots)


def _launch_apply(view, coef, knots, cc, scale=None, shift=None):
    basis, k, kn = _form(coef, knots)
    y = torch.empty_like(view.data)
    (bo, bc, bi), n, _ = _grid(view)
    kern.apply_kernel[(n,)](view.data, y, coef, kn, scale if scale is not None else coef,
                            shift if shift is not None else coef, view.outer, view.C, view.inner, cc,
                            K=k, BASIS=basis, PER_CHANNEL=cc > 1, AFFINE=scale is not None,
                            F64=view.data.dtype == torch.float64, BO=bo, BC=bc, BI=bi)
    return y


def _launch_backward(view, g, coef, knots, cc, need_x, need_sums, terms=None, mean=None):
    basis, k, kn = _form(coef, knots)
    (bo, bc, bi), n, P = _grid(view)
    gx = torch.empty_like(view.data) if need_x else view.data
    partials = torch.empty((P, coef.shape[0], view.C) if need_sums else (1,), dtype=_acc(view),
                           device=view.data.device)
    alpha, c1, c2 = terms if terms is not None else (coef, coef, coef)
    kern.backward_kernel[(n,)](view.data, like_view(g, view), gx, coef, kn, alpha, c1, c2,
                               mean if mean is not None else coef, partials, view.outer, view.C, view.inner, cc,
                               K=k, BASIS=basis, PER_CHANNEL=cc > 1, AFFINE=terms is not None, NEED_X=need_x,
                               NEED_SUMS=need_sums, F64=view.data.dtype == torch.float64, BO=bo, BC=bc, BI=bi)
    return (gx if need_x else None), (_reduce(partials, P) if need_sums else None)


# --- the piecewise quadratic ------------------------------------------------------------------------
def prepare(knots: torch.Tensor, coeffs: torch.Tensor, dtype: torch.dtype, basis_ok: bool):
    """(4, Cc) basis rows (a tensor) where ``basis_ok`` and the table is in RepAct's basis, else
    (knots, (3 (K + 1), Cc) rows) (a tuple), on the table's device in the kernels' dtype. (Checking
    the basis reads the table on the host, once per table: the caller caches the result.)"""
    acc = accumulation_dtype(dtype)
    if basis_ok:
        from ..fuse import basis_coefficients

        b = basis_coefficients(knots.detach().cpu(), coeffs.detach().cpu(), rtol=8 * torch.finfo(acc).eps)
        if b is not None:
            return b.rows().to(device=coeffs.device, dtype=acc).contiguous()
    rows = coeffs.detach().to(acc).reshape(coeffs.shape[0], -1).t().contiguous()
    return knots.detach().to(acc).contiguous(), rows


def pq_forward(view: FlatView, prepared, cc: int) -> torch.Tensor:
    if torch.is_tensor(prepared):
        return _launch_apply(view, prepared, None, cc)
    knots, rows = prepared
    return _launch_apply(view, rows, knots, cc)


def pq_backward(view: FlatView, g: torch.Tensor, knots, coeffs, need_x: bool, need_c: bool):
    """(gx, gcoeffs (Cc, S, 3)) of the table form."""
    kn, rows = prepare(knots, coeffs, view.data.dtype, False)
    cc = coeffs.shape[0]
    gx, sums = _launch_backward(view, g, rows, kn, cc, need_x, need_c)
    gc = sums.t().reshape(cc, -1, 3).to(coeffs.dtype) if need_c else None
    return gx, gc


# --- RepAct's training op ------------------------------------------------------------------------------
def _coefficients(a: TrainArgs, acc: torch.dtype, grad: bool = False):
    params = [t.detach().to(acc).requires_grad_(grad) if t is not None else None for t in (a.w_raw, a.slope)]
    with torch.enable_grad() if grad else torch.no_grad():
        coef = reference.coefficients(params[0], params[1], a.base.to(acc), a.part.to(acc), a.softmax)
    return coef, params


def _knots(a: TrainArgs, acc: torch.dtype):
    return a.knots.detach().to(acc).contiguous()


def _channel(t: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    return t.detach().to(acc).reshape(-1).contiguous()


def train_sums(view: FlatView, a: TrainArgs, g: Optional[torch.Tensor] = None, mean=None):
    """As :func:`repact.ops.cpu.train_sums`: (shift, (2, Cc) sums), without ``g`` of s - shift
    (shift = s at each table's first element), with ``g`` and the batch ``mean`` the sums of g and
    g (s - mean)."""
    acc = _acc(view)
    coef = _coefficients(a, acc)[0].t().contiguous()
    basis, k, kn = _form(coef, _knots(a, acc))
    cc = a.rows
    f64 = view.data.dtype == torch.float64
    if g is None:
        shift = torch.empty(cc, dtype=acc, device=view.data.device)
        bcf = min(_np2(cc), 128)
        kern.first_value_kernel[(triton.cdiv(cc, bcf),)](view.data, coef, kn, shift, cc, view.inner, cc, K=k,
                                                          BASIS=basis, PER_CHANNEL=cc > 1, F64=f64, BC=bcf)
    else:
        shift = _channel(mean, acc)
    (bo, bc, bi), n, P = _grid(view)
    partials = torch.empty((P, 2, view.C), dtype=acc, device=view.data.device)
    kern.sums_kernel[(n,)](view.data, like_view(g, view) if g is not None else view.data, coef, kn, shift, partials,
                           view.outer, view.C, view.inner, cc, K=k, BASIS=basis, PER_CHANNEL=cc > 1,
                           HAS_G=g is not None, F64=f64, BO=bo, BC=bc, BI=bi)
    return shift, _reduce(partials, P)


def train_forward(view: FlatView, a: TrainArgs, bn: int, mean=None, var=None):
    """As :func:`repact.ops.cpu.train_forward`: (y, mean, var)."""
    acc = _acc(view)
    cc = a.rows
    coef = _coefficients(a, acc)[0].t().contiguous()
    if bn == BN_BATCH:
        shift, sums = train_sums(view, a)
        mean, var = moments_from_sums(view.data.numel() // cc, shift, sums[0], sums[1])
    if bn == BN_NONE:
        return _launch_apply(view, coef, _knots(a, acc), cc), None, None
    mean, var = _channel(mean, acc), _channel(var, acc)
    scale = torch.rsqrt(var + a.eps) * _channel(a.gamma, acc)
    shift = _channel(a.beta, acc) - mean * scale
    return _launch_apply(view, coef, _knots(a, acc), cc, scale.contiguous(), shift.contiguous()), mean, var


def train_backward(view: FlatView, g: torch.Tensor, a: TrainArgs, bn: int, mean, var, gsums, count: int,
                   need_x: bool, need_params: bool):
    """As :func:`repact.ops.cpu.train_backward`: (gx, g_w_raw, g_slope, g_gamma, g_beta), the
    parameters' in float32 (float64 for float64 inputs: :func:`repact.ops.dispatch.param_dtype`)."""
    acc = _acc(view)
    cc = a.rows
    coef, params = _coefficients(a, acc, grad=need_params)
    rows = coef.detach().t().contiguous()
    terms = ggm = gbt = None
    if bn != BN_NONE:
        mean, var = _channel(mean, acc), _channel(var, acc)
        if bn != BN_GIVEN:
            gsums = train_sums(view, a, g, mean)[1]
            count = view.data.numel() // cc
        alpha, c1, c2, ggm, gbt = backward_terms(_channel(a.gamma, acc), var, a.eps, gsums[0].to(acc),
                                                 gsums[1].to(acc), count, bn == BN_CONST)
        terms = (alpha.contiguous(), c1.contiguous(), c2.contiguous())
    gx, gcoef = _launch_backward(view, g, rows, _knots(a, acc), cc, need_x, need_params, terms, mean)
    gw = gsl = None
    if need_params:
        live = [p for p in params if p is not None]
        grads = torch.autograd.grad(coef, live, gcoef.t())
        gw = grads[0]
        gsl = grads[1] if a.slope is not None else None
    return gx, gw, gsl, ggm, gbt


# --- ACON ----------------------------------------------------------------------------------------------
def _acon_view(x: torch.Tensor, cd: int) -> FlatView:
    from .layout import flat_view

    c = x.shape[cd] if x.dim() > 1 else 1
    view = flat_view(x, cd, c) if c > 1 else None
    return view if view is not None else FlatView(x.contiguous(), 1, 1, x.numel())


def _acon_param(t: Optional[torch.Tensor], acc):
    return t.detach().to(acc).reshape(-1).contiguous() if t is not None else None


def _launch_acon(x, g, p1, p2, beta, cd, backward: bool, need_x: bool = True):
    view = _acon_view(x, cd)
    acc = _acc(view)
    ps = [_acon_param(t, acc) for t in (p1, p2, beta)]
    (bo, bc, bi), n, P = _grid(view)
    out = torch.empty_like(view.data) if (not backward or need_x) else view.data
    partials = torch.empty((P, 3, view.C) if backward else (1,), dtype=acc, device=x.device)
    dummy = view.data
    kern.acon_kernel[(n,)](view.data, like_view(g, view) if g is not None else dummy, out,
                           *[t if t is not None else dummy for t in ps], partials, view.outer, view.C, view.inner,
                           HAS_P1=ps[0] is not None, HAS_P2=ps[1] is not None, HAS_BETA=ps[2] is not None,
                           PC1=ps[0] is not None and ps[0].numel() > 1, PC2=ps[1] is not None and ps[1].numel() > 1,
                           PCB=ps[2] is not None and ps[2].numel() > 1, BACKWARD=backward, NEED_X=need_x,
                           F64=view.data.dtype == torch.float64, BO=bo, BC=bc, BI=bi)
    return view, out, partials, P


def acon_forward(x, p1, p2, beta, cd: int) -> torch.Tensor:
    _, y, _, _ = _launch_acon(x, None, p1, p2, beta, cd, False)
    return y.reshape(x.shape)


def acon_backward(g, x, p1, p2, beta, cd, need_x, need_p1, need_p2, need_beta):
    view, gx, partials, P = _launch_acon(x, g, p1, p2, beta, cd, True, need_x)
    sums = _reduce(partials, P)  # (3, C)
    out = [gx.reshape(x.shape) if need_x else None]
    for t, need, row in ((p1, need_p1, 0), (p2, need_p2, 1), (beta, need_beta, 2)):
        if not need:
            out.append(None)
            continue
        s = sums[row]
        out.append((s.sum() if t.numel() == 1 else s).reshape(t.shape).to(t.dtype))
    return tuple(out)
