"""The ``cpu`` backend: repact's C kernels (``repact._native``) on float32/float64 CPU tensors.

Every function takes the kernels' view of the input (:class:`~repact.ops.layout.FlatView`, chosen
by the dispatch) and raises if a kernel fails (it only fails to allocate).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .. import _native
from .layout import FlatView, like_view

# the C entry points' K for maps onto RepAct's own basis (E, A, B, Q) instead of a piece table
HSWISH_BASIS = -1
# BatchNorm modes of the training entry points
BN_NONE, BN_BATCH, BN_GIVEN, BN_CONST = 0, 1, 2, 3


class TrainArgs(NamedTuple):
    """RepAct's training op's parameters (see :func:`repact.ops.repact_train`)."""

    w_raw: torch.Tensor
    slope: Optional[torch.Tensor]
    gamma: Optional[torch.Tensor]
    beta: Optional[torch.Tensor]
    knots: torch.Tensor
    base: torch.Tensor
    part: torch.Tensor
    softmax: bool
    eps: float

    @property
    def rows(self) -> int:
        return self.w_raw.shape[0] if self.w_raw.dim() == 2 else 1


def _fn(name: str, dtype: torch.dtype):
    return getattr(_native.library(), f"{name}_{'f32' if dtype == torch.float32 else 'f64'}")


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _param(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    # a parameter as the C entry points read it: CPU, dtype, contiguous; as is when it already is
    # (the kernels only read it through data_ptr(), so it needs no detach), else a detached copy,
    # which the caller holds until the C call returns (the call gets its address only)
    if t is None or (t.dtype == dtype and t.is_cpu and t.is_contiguous()):
        return t
    return t.detach().to(device="cpu", dtype=dtype).contiguous()


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"the native {what} kernel failed (code {rc}: out of memory or bad arguments)")


def _threads() -> int:
    return torch.get_num_threads()


# --- the piecewise quadratic ------------------------------------------------------------------------
def prepare(knots: torch.Tensor, coeffs: torch.Tensor, dtype: torch.dtype, basis_ok: bool):
    """The table as the kernels read it: (4, Cc) basis rows (a tensor) where ``basis_ok`` and the
    table is in RepAct's basis to ``dtype``'s precision, else (knots, planar (3, S, Cc)) (a tuple)."""
    if basis_ok:
        from ..fuse import basis_coefficients

        b = basis_coefficients(knots.detach().cpu(), coeffs.detach().cpu(), rtol=8 * torch.finfo(dtype).eps)
        if b is not None:
            return b.rows().to(dtype=dtype).contiguous()
    t = knots.detach().to(device="cpu", dtype=dtype).contiguous()
    planar = coeffs.detach().to(device="cpu", dtype=dtype).permute(2, 1, 0).contiguous()
    return t, planar


def pq_forward(view: FlatView, prepared, cc: int) -> torch.Tensor:
    xd = view.data
    y = torch.empty_like(xd)
    if torch.is_tensor(prepared):
        rc = _fn("repact_basis_forward", xd.dtype)(xd.data_ptr(), y.data_ptr(), view.outer, view.C, view.inner,
                                                   prepared.data_ptr(), cc, _threads())
    else:
        t, cf = prepared
        rc = _fn("repact_pq_forward", xd.dtype)(xd.data_ptr(), y.data_ptr(), view.outer, view.C, view.inner,
                                                t.shape[0], t.data_ptr(), cf.data_ptr(), cc, _threads())
    _check(rc, "forward")
    return y


def pq_backward(view: FlatView, g: torch.Tensor, knots, coeffs, need_x: bool, need_c: bool, prepared=None):
    """(gx, gcoeffs (Cc, S, 3)) of the table form (``prepared``: the caller's cached table form,
    used where it is one)."""
    xd = view.data
    g = like_view(g, view)
    t, cf = prepared if isinstance(prepared, tuple) else prepare(knots, coeffs, xd.dtype, False)
    cc, s_count = coeffs.shape[0], coeffs.shape[1]
    gx = torch.empty_like(xd) if need_x else None
    acc = torch.empty((3, s_count, cc), dtype=torch.float64) if need_c else None
    rc = _fn("repact_pq_backward", xd.dtype)(
        xd.data_ptr(), g.data_ptr(), _ptr(gx), _ptr(acc), None, view.outer, view.C, view.inner, t.numel(),
        t.data_ptr(), cf.data_ptr(), cc, _threads())
    _check(rc, "backward")
    gc = acc.permute(2, 1, 0).to(dtype=coeffs.dtype, device=coeffs.device) if acc is not None else None
    return gx, gc


# --- RepAct's training op ------------------------------------------------------------------------------
class _Params(NamedTuple):
    """The training op's parameters as the C entry points read them (see :func:`_param`); held
    until the call returns, since the entry points get only their addresses."""

    knots: torch.Tensor
    w_raw: torch.Tensor
    slope: Optional[torch.Tensor]
    base: torch.Tensor
    part: torch.Tensor
    gamma: Optional[torch.Tensor]
    beta: Optional[torch.Tensor]

    def head(self, view: FlatView, a: TrainArgs) -> tuple:
        """The arguments every training entry point takes after its tensors."""
        k = HSWISH_BASIS if self.base.shape[-1] == 4 else self.knots.shape[0]
        return (view.outer, view.C, view.inner, k, self.knots.data_ptr(), self.w_raw.data_ptr(), _ptr(self.slope),
                self.base.data_ptr(), self.part.data_ptr(), self.w_raw.shape[-1], int(a.softmax), a.rows)


def _params(view: FlatView, a: TrainArgs) -> _Params:
    dt = view.data.dtype
    return _Params(*(_param(v, dt) for v in (a.knots, a.w_raw, a.slope, a.base, a.part, a.gamma, a.beta)))


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64).contiguous()


def train_forward(view: FlatView, a: TrainArgs, bn: int, mean=None, var=None):
    """``(y, mean, var)``: with ``bn`` BN_BATCH the batch statistics (Cc,) float64 come out; with
    BN_GIVEN/BN_CONST the given ones are folded in; BN_NONE has none (empty)."""
    xd = view.data
    p = _params(view, a)
    y = torch.empty_like(xd)
    if bn == BN_BATCH:
        mean = torch.empty(a.rows, dtype=torch.float64)
        var = torch.empty(a.rows, dtype=torch.float64)
    elif bn != BN_NONE:
        mean, var = _f64(mean), _f64(var)
    rc = _fn("repact_train_forward", xd.dtype)(
        xd.data_ptr(), y.data_ptr(), *p.head(view, a), _ptr(p.gamma), _ptr(p.beta), float(a.eps), bn, _ptr(mean),
        _ptr(var), _threads())
    _check(rc, "training forward")
    return y, mean, var


def train_sums(view: FlatView, a: TrainArgs, g: Optional[torch.Tensor] = None, mean=None):
    """Without ``g``: (shift, (2, Cc) S1, S2) of ``s - shift`` (``repact.ops.batchnorm``); with
    ``g`` and the batch ``mean``: (mean, (2, Cc) sum g, sum g (s - mean))."""
    xd = view.data
    p = _params(view, a)
    shift = torch.empty(a.rows, dtype=torch.float64) if g is None else _f64(mean)
    out = torch.empty((2, a.rows), dtype=torch.float64)
    gd = None if g is None else like_view(g, view)
    rc = _fn("repact_train_sums", xd.dtype)(xd.data_ptr(), _ptr(gd), *p.head(view, a), shift.data_ptr(),
                                            out.data_ptr(), _threads())
    _check(rc, "training sums")
    return shift, out


def train_backward(view: FlatView, g: torch.Tensor, a: TrainArgs, bn: int, mean, var, gsums, count: int,
                   need_x: bool, need_params: bool):
    """Gradients ``(gx, g_w_raw, g_slope, g_gamma, g_beta)`` (None where not needed or absent), in
    the input's dtype (the parameters' too: :func:`repact.ops.dispatch.param_dtype`)."""
    xd = view.data
    g = like_view(g, view)
    p = _params(view, a)
    dt = xd.dtype
    gx = torch.empty_like(xd) if need_x else None
    gw = torch.empty(a.w_raw.shape, dtype=dt) if need_params else None
    gsl = torch.empty(a.slope.shape, dtype=dt) if need_params and a.slope is not None else None
    ggm = torch.empty(a.gamma.shape, dtype=dt) if p.gamma is not None else None
    gbt = torch.empty(a.gamma.shape, dtype=dt) if p.gamma is not None else None
    if bn != BN_NONE:
        mean, var = _f64(mean), _f64(var)
    gs = _f64(gsums) if gsums is not None else None
    rc = _fn("repact_train_backward", dt)(
        xd.data_ptr(), g.data_ptr(), _ptr(gx), *p.head(view, a), _ptr(p.gamma), _ptr(mean) if bn else None,
        _ptr(var) if bn else None, float(a.eps), bn, _ptr(gs), float(count), _ptr(gw), _ptr(gsl), _ptr(ggm),
        _ptr(gbt), _threads())
    _check(rc, "training backward")
    return gx, gw, gsl, ggm, gbt
