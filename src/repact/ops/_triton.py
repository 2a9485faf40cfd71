"""The ``triton`` backend: repact's Triton kernels for CUDA tensors (``_triton_kernels``: the table
op and ACON; ``_triton_train``: RepAct's training op).

float32, float16, bfloat16 (computed in float32) and float64; any layout the dispatch's view
takes (dense NCHW blocks, channels-last rows, token tensors). Sums are reduced in two stages
(per tile, then over tiles) in float32 (float64 for float64 inputs; the training op finishes its
sums in float64). Built with ``TRITON_INTERPRET=1`` in the environment, the kernels run in
Triton's interpreter on CPU tensors instead (how the tests check them without a GPU;
``interpreted()``).

What a call decides once per input layout lives in a plan (:class:`TablePlan`,
:class:`TrainPlan`): the grid and the compile-time arguments of each launch (:class:`Launch`).
A call then allocates its outputs and launches, and does nothing else: RepAct's coefficients,
their gradients' map back onto the branch weights (softmax's Jacobian included), RepAct-III's
statistics, its BatchNorm fold and backward and the running statistics' update all happen in
the kernels.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton

from . import _triton_kernels as kern
from . import _triton_train as tk
from .batchnorm import accumulation_dtype
from .cpu import BN_BATCH, BN_CONST, BN_GIVEN, BN_NONE  # noqa: F401
from .layout import FlatView, like_view

_TILE = 1024  # elements per program
_REDUCE_ROWS, _REDUCE_COLS = 64, 64
_FINALIZE = 4096  # partials a finalizing program holds at once


def interpreted() -> bool:
    """Whether the kernels were built for Triton's interpreter (``TRITON_INTERPRET=1``)."""
    return type(kern.apply_kernel).__name__ == "InterpretedFunction"


def _np2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


class Launch:
    """One kernel with its grid and compile-time arguments fixed: ``launch(*args)`` runs it on
    the runtime arguments. The compile-time arguments (the kernel's trailing parameters) go
    positionally, after the runtime ones: Triton binds positional arguments faster than keywords."""

    __slots__ = ("kernel", "grid", "tail")

    def __init__(self, kernel, grid, **consts):
        names = kernel.arg_names
        tail = names[len(names) - len(consts):]
        if set(tail) != set(consts):
            raise TypeError(f"{kernel.__name__}: compile-time arguments {sorted(consts)} are not its last parameters")
        self.kernel, self.grid, self.tail = kernel, grid, tuple(consts[n] for n in tail)

    def __call__(self, *args):
        self.kernel.run(*args, *self.tail, grid=self.grid, warmup=False)

    def parts(self) -> tuple:
        """(kernel, compile-time arguments, grid), for a caller that launches ``kernel.run(*args,
        *tail, grid=grid, warmup=False)`` itself (one Python call less per launch)."""
        return self.kernel, self.tail, self.grid


def _tiling(O: int, C: int, I: int):
    """Tile (BO, BC, BI), the number of programs and the partial sums per channel of an (O, C, I) view."""
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


def _grid(view: FlatView):
    return _tiling(view.outer, view.C, view.inner)


def _finalize_tiling(C: int, P: int):
    """(BCF, BP, programs) of a kernel that reduces (P, ., C) partials per block of BCF channels."""
    bcf = min(_np2(C), 64)
    return bcf, max(1, min(_np2(P), _FINALIZE // bcf)), triton.cdiv(C, bcf)


def _acc(view: FlatView) -> torch.dtype:
    return accumulation_dtype(view.data.dtype)


def _reduce(partials: torch.Tensor, P: int) -> torch.Tensor:
    """Sum (P, ...) partials over P."""
    flat = partials.reshape(P, -1)
    out = torch.empty(flat.shape[1], dtype=flat.dtype, device=flat.device)
    grid = (triton.cdiv(flat.shape[1], _REDUCE_COLS),)
    kern.reduce_kernel[grid](flat, out, P, flat.shape[1], BP=_REDUCE_ROWS, BR=_REDUCE_COLS)
    return out.reshape(partials.shape[1:])


# --- the piecewise quadratic ------------------------------------------------------------------------
def prepare(knots: torch.Tensor, coeffs: torch.Tensor, dtype: torch.dtype, basis_ok: bool):
    """(Cc, 4) basis coefficients (a tensor) where ``basis_ok`` and the table is in RepAct's basis,
    else (knots, (Cc, 3 (K + 1)) coefficients) (a tuple: the table itself where it is dense in the
    kernels' dtype), on the table's device in the kernels' dtype. (Checking the basis reads the
    table on the host, once per table: the caller caches the result.)"""
    acc = accumulation_dtype(dtype)
    if basis_ok:
        from ..fuse import basis_coefficients

        b = basis_coefficients(knots.detach().cpu(), coeffs.detach().cpu(), rtol=8 * torch.finfo(acc).eps)
        if b is not None:
            return b.rows().t().to(device=coeffs.device, dtype=acc).contiguous()
    rows = coeffs.detach().to(acc).reshape(coeffs.shape[0], -1).contiguous()
    return knots.detach().to(acc).contiguous(), rows


def _rows(prepared):
    """(coefficients (Cc, R), knots or None, K) of a prepared table."""
    if torch.is_tensor(prepared):
        return prepared, None, 0
    knots, rows = prepared
    return rows, knots, knots.shape[0]


class TablePlan:
    """The table op on one input layout (O, C, I) and one table form: ``forward(x, prepared)`` and
    ``backward(x, g, prepared, need_x, need_sums)``."""

    def __init__(self, outer: int, C: int, inner: int, prepared, dtype: torch.dtype):
        rows, _, k = _rows(prepared)
        self.cc, self.width = rows.shape
        (bo, bc, bi), self.n, self.P = _tiling(outer, C, inner)
        self.dims = (outer, C, inner)
        self.consts = dict(K=k, R=self.width, BASIS=self.width == 4, PER_CHANNEL=self.cc > 1,
                           F64=dtype == torch.float64, BO=bo, BC=bc, BI=bi)
        # (shape, strides) of the backward's per-tile sums
        self.sums = ((self.P, C, self.width), (C * self.width, self.width, 1))
        self.apply = Launch(kern.apply_kernel, (self.n,), **self.consts)
        self._backward = {}

    def forward(self, x: torch.Tensor, prepared) -> torch.Tensor:
        rows, knots, _ = _rows(prepared)
        y = torch.empty_like(x)
        self.apply(x, y, rows, knots, *self.dims)
        return y

    def backward(self, x, g, knots, coeffs, need_x: bool, need_c: bool, prepared):
        """(gx, gcoeffs (Cc, S, 3)) (None where not needed); the table's gradient takes the table
        form, the input's alone any prepared form."""
        if need_c and torch.is_tensor(prepared):
            prepared = prepare(knots, coeffs, x.dtype, False)
        rows, kn, k = _rows(prepared)
        if g.stride() != x.stride() or type(g) is not torch.Tensor:
            g = like_view(g, FlatView(x, *self.dims))
        width = rows.shape[1]
        launch = self._backward.get((need_x, need_c, width))
        if launch is None:
            consts = dict(self.consts, K=k, R=width, BASIS=width == 4)
            launch = self._backward[need_x, need_c, width] = Launch(kern.backward_kernel, (self.n,), NEED_X=need_x,
                                                                    NEED_SUMS=need_c, **consts)
        gx = torch.empty_like(x) if need_x else None
        sums = torch.empty_strided(*self.sums, dtype=rows.dtype, device=x.device) if need_c else None
        launch(x, g, gx, rows, kn, sums, *self.dims)
        gc = _reduce(sums, self.P).reshape(coeffs.shape).to(coeffs.dtype) if need_c else None
        return gx, gc


# --- RepAct's training op ------------------------------------------------------------------------------
class TrainPlan:
    """RepAct's training op (:class:`repact.ops.repact_train.TrainSpec`) on one input layout (O, C, I):
    the launches of ``_triton_train`` with their grids and compile-time arguments, and the shapes
    of each pass's scratch buffers.

    The parameters come in the kernels' dtype, dense. :meth:`bind` gives the forward and backward
    passes for one call's fixed arguments (what a :class:`repact.ops.repact_train.TrainCall`
    runs): batch statistics (BN_BATCH) are computed, and the running statistics updated, in the
    kernels; BN_GIVEN/BN_CONST take ``mean``/``var``. ``moments(x, w_raw, slope, call)``: the
    batch statistics alone (BN_GIVEN: this process's). The backward's ``share`` (BN_GIVEN) maps
    this process's sums of g and g (s - mean) to every process's, which cover ``count`` values per
    table.
    """

    def __init__(self, spec, outer: int, C: int, inner: int, copy: bool, dtype: torch.dtype, device):
        self.spec, self.copy = spec, copy
        self.dims = (outer, C, inner)
        self.count = outer * C * inner // spec.rows
        self.acc, self.device = accumulation_dtype(dtype), device
        self.basis = spec.width == 4
        (bo, bc, bi), n, self.P = _tiling(outer, C, inner)
        self.n, self.tile = n, dict(BO=bo, BC=bc, BI=bi)
        self.common = dict(K=spec.knots, R=spec.width, NB=spec.nb, NBP=_np2(spec.nb), BASIS=self.basis,
                           PER_CHANNEL=spec.rows > 1, HAS_SLOPE=spec.slope, SOFTMAX=spec.softmax,
                           F64=dtype == torch.float64)
        bn = self.bn = spec.bn
        # batch statistics update the running ones in the kernels; across processes after the gather
        self.in_kernel = spec.update and bn == BN_BATCH
        self.apply = Launch(tk.apply_kernel, (n,), **self.common, BN=bn != BN_NONE, EPS=spec.eps,
                            BUMP=self.in_kernel, **self.tile)
        self.bcf, self.bp, self.nf = _finalize_tiling(C, self.P)
        C = self.dims[1]
        self.rows_per_tile = rows = {BN_NONE: spec.width, BN_CONST: 2 + spec.width}.get(bn, 2 + 3 * spec.width)
        # (shape, strides) of the scratch buffers: the per-tile sums of the backward and of the
        # statistics, the statistics, the BatchNorm backward's (alpha, c1, c2)
        self.sums = ((self.P, rows, C), (rows * C, C, 1))
        if bn in (BN_BATCH, BN_GIVEN):
            # one buffer: the BatchNorm backward's (alpha, c1, c2) (3, C), then the sums
            self.sums = ((3 * C + self.P * rows * C,), (1,))
        self.stat_sums = ((self.P, 2, C), (2 * C, C, 1))
        self.stat = ((spec.rows,), (1,))
        # each scratch layout (all dense) as a one-element tensor expanded to its shape: empty_like of
        # it allocates that layout, with no keyword arguments to parse per call
        one = torch.empty(1, dtype=self.acc, device=device)
        self.scratch = {name: one.expand(layout[0]) for name, layout in
                        (("sums", self.sums), ("stat_sums", self.stat_sums), ("stat", self.stat))}
        if bn in (BN_BATCH, BN_GIVEN):
            self.stats = Launch(tk.stats_kernel, (n,), **self.common, **self.tile)
            self.finalize = Launch(tk.stats_finalize_kernel, (self.nf,), **self.common, RUNNING=self.in_kernel,
                                   CUMULATIVE=spec.momentum is None, MOMENTUM=float(spec.momentum or 0.0),
                                   BCF=self.bcf, BP=self.bp)
        self._backward = {}

    def moments(self, x, w_raw, slope, call):
        O, C, I = self.dims
        base, part, kn = self.tables(call.knots, call.base, call.part)
        sums = torch.empty_like(self.scratch["stat_sums"])
        self.stats(x, w_raw, slope, base, part, kn, sums, O, C, I)
        mean, var = torch.empty_like(self.scratch["stat"]), torch.empty_like(self.scratch["stat"])
        self.finalize(x, w_raw, slope, base, part, kn, sums, self.P, mean, var, None, None, None, C, I, self.count)
        return mean, var

    def tables(self, knots, base, part) -> tuple:
        """The fuse constants as the launches take them (after the parameters): base, part, and the
        knots where the coefficients are a table's (None for RepAct's basis)."""
        return base, part, None if self.basis else knots

    def bind(self, knots, base, part, softmax, eps, running):
        """``(forward, backward)`` of this layout for one call's fixed arguments (the fuse constants,
        the running statistics to update): closures with every launch's kernel, grid, compile-time
        arguments and scratch layouts bound, so that a call does nothing but allocate and launch.

        ``forward(x, w_raw, slope, gamma, beta, mean, var) -> (y, mean, var)``;
        ``backward(x, g, w_raw, slope, gamma, mean, var, need_x, need_params, share=None, count=None)
        -> (gx, g_w_raw, g_slope, g_gamma, g_beta)``. (Each launch looks its kernel's ``run`` up when
        it runs, so that a wrapped ``run`` sees every launch.)"""
        O, C, I = self.dims
        P, count = self.P, self.count
        base, part, kn = self.tables(knots, base, part)
        empty_like = torch.empty_like
        ak, at, ag = self.apply.parts()
        bn = self.bn
        if bn == BN_BATCH:
            sk, st, sg = self.stats.parts()
            fk, ft, fg = self.finalize.parts()
            rm, rv, nbt = running[:3] if self.in_kernel and running is not None else (None, None, None)
            like_stat, like_stat_sums = self.scratch["stat"], self.scratch["stat_sums"]

            def forward(x, w_raw, slope, gamma, beta, mean, var):
                sums = empty_like(like_stat_sums)
                sk.run(x, w_raw, slope, base, part, kn, sums, O, C, I, *st, grid=sg, warmup=False)
                mean, var = empty_like(like_stat), empty_like(like_stat)
                fk.run(x, w_raw, slope, base, part, kn, sums, P, mean, var, rm, rv, nbt, C, I, count, *ft, grid=fg,
                       warmup=False)
                y = empty_like(x)
                ak.run(x, y, w_raw, slope, base, part, kn, mean, var, gamma, beta, nbt, O, C, I, *at, grid=ag,
                       warmup=False)
                return y, mean, var
        else:
            def forward(x, w_raw, slope, gamma, beta, mean, var):
                y = empty_like(x)
                ak.run(x, y, w_raw, slope, base, part, kn, mean, var, gamma, beta, None, O, C, I, *at, grid=ag,
                       warmup=False)
                return y, mean, var

        steps = [None] * 8  # by need_x + 2 need_params + 4 (share given)
        like_sums, rows = self.scratch["sums"], self.rows_per_tile

        def backward(x, g, w_raw, slope, gamma, mean, var, need_x, need_params, share=None, count=count):
            if g.stride() != x.stride() or type(g) is not torch.Tensor:
                g = like_view(g, FlatView(x, O, C, I))
            given = share is not None
            key = need_x + 2 * need_params + 4 * given
            launches = steps[key]
            if launches is None:
                launches = steps[key] = self._backward_launches(bool(need_x), bool(need_params), given)
            mode, (bk, bt, bg), grad, last = launches
            # the parameters' gradients: their shapes, in their dtype (the kernels'), dense like them
            gw = gsl = ggm = gbt = None
            if need_params:
                gw = empty_like(w_raw)
                if slope is not None:
                    gsl = empty_like(slope)
            if mode != 0:
                ggm, gbt = empty_like(gamma), empty_like(gamma)
            if mode != 2:
                # RepAct-I/II and constant statistics: the input's gradient and the sums in one pass
                # (no sums where no parameter's gradient is wanted)
                gx = empty_like(x) if need_x else None
                sums = None if grad is None else empty_like(like_sums)
                bk.run(x, g, gx, w_raw, slope, base, part, kn, mean, var, gamma, None, sums, O, C, I, *bt, grid=bg,
                       warmup=False)
                if grad is not None:
                    gk, gt, gg = grad
                    gk.run(sums, P, None, w_raw, slope, base, part, gamma, var, None, gw, gsl, ggm, gbt, C, count,
                           *gt, grid=gg, warmup=False)
                return gx, gw, gsl, ggm, gbt
            gk, gt, gg = grad
            sums = empty_like(like_sums)
            # batch statistics: every sum first, then the parameters' gradients and the BatchNorm's
            # backward coefficients (alpha, c1, c2), then the input's gradient; ``sums`` holds the
            # coefficients (3, C) and then the per-tile sums
            bk.run(x, g, None, w_raw, slope, base, part, kn, mean, var, gamma, None, sums, O, C, I, *bt, grid=bg,
                   warmup=False)
            totals = None if share is None else share(sums[3 * C:].view(P, rows, C)[:, :2].sum(0))
            gk.run(sums, P, totals, w_raw, slope, base, part, gamma, var, sums, gw, gsl, ggm, gbt, C, count, *gt,
                   grid=gg, warmup=False)
            gx = None
            if need_x:
                gx = empty_like(x)
                lk, lt, lg = last
                lk.run(x, g, gx, w_raw, slope, base, part, kn, mean, var, gamma, sums, None, O, C, I, *lt, grid=lg,
                       warmup=False)
            return gx, gw, gsl, ggm, gbt

        return forward, backward

    def _backward_launches(self, need_x: bool, need_params: bool, given: bool):
        """(mode, first, grad, last) of one backward configuration, made on first use, each launch as
        its (kernel, compile-time arguments, grid) or None: the sums pass (with the input's gradient
        unless batch statistics), the parameters' gradients, and for batch statistics the input's
        gradient."""
        key = (need_x, need_params, given)
        steps = self._backward.get(key)
        if steps is None:
            spec, c = self.spec, self.common
            mode = {BN_NONE: 0, BN_CONST: 1}.get(self.bn, 2)
            need_sums = need_params or mode != 0

            def backward(m, nx, ns):
                return Launch(tk.backward_kernel, (self.n,), **c, MODE=m, EPS=spec.eps, NEED_X=nx, NEED_SUMS=ns,
                              **self.tile)

            grad = None
            if need_sums:
                grad = Launch(tk.grad_kernel, (self.nf,), R=c["R"], ROWS=self.rows_per_tile, NB=c["NB"],
                              NBP=c["NBP"], PER_CHANNEL=c["PER_CHANNEL"], HAS_SLOPE=c["HAS_SLOPE"],
                              SOFTMAX=c["SOFTMAX"], MODE=mode, GIVEN=given, EPS=spec.eps, NEED_W=need_params,
                              BCF=self.bcf, BP=self.bp)
            last = backward(3, True, False).parts() if mode == 2 and need_x else None
            first = backward(mode, need_x and mode != 2, need_sums).parts()
            steps = self._backward[key] = (mode, first, grad and grad.parts(), last)
        return steps
