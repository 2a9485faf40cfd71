"""The piecewise quadratic op: ``y = a0 + x * (a1 + a2 * x)`` with per-segment coefficients.

Knots ``t`` (K of them, sorted) split the real line into S = K + 1 segments; segment ``s`` holds
``t[s-1] <= x < t[s]``. ``coeffs`` has shape (Cc, S, 3) with Cc = 1 (one function for the whole
tensor) or Cc = C (one per channel), and ``coeffs[c, s, j]`` multiplies ``x ** j``.

The op is differentiable in ``x`` and ``coeffs`` and keeps only ``x`` for backward. It has two
implementations that compute the same thing:

* ``native``: repact's C kernels (float32/float64, CPU, dense tensors), one pass over memory;
* ``torch``: plain tensor ops (any device and dtype); this is what TorchScript, ``torch.compile``,
  tracing and ONNX export see, and what inductor fuses into one loop.

``set_backend("auto" | "native" | "torch")`` or the ``backend(...)`` context manager choose;
``auto`` uses native where it applies.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Tuple

import torch

from .. import _native

__all__ = [
    "piecewise_quadratic",
    "piecewise_quadratic_torch",
    "set_backend",
    "get_backend",
    "backend",
    "native_available",
    "native_table",
    "native_forward_prepared",
    "native_basis_table",
    "native_basis_forward",
    "native_train_forward",
    "native_train_backward",
]

_BACKENDS = ("auto", "native", "torch")
_backend = "auto"


def set_backend(name: str) -> None:
    """Choose the implementation: ``auto`` (native where it applies), ``native`` or ``torch``."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(_BACKENDS)}")
    if name == "native" and not native_available():
        raise RuntimeError(f"the native backend is unavailable: {_native.build_error()}")
    _backend = name


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def native_available() -> bool:
    return _native.library() is not None


def _coeff_view(c: torch.Tensor, ndim: int, channel_dim: int) -> torch.Tensor:
    # c: (Cc,) -> broadcastable against an ndim tensor with channels on channel_dim
    cc = c.shape[0]
    if cc == 1 or ndim == 0:
        return c.reshape([1] * ndim)
    shape: List[int] = [1] * ndim
    shape[channel_dim] = cc
    return c.reshape(shape)


def _select(
    x: torch.Tensor, knots: torch.Tensor, coeffs: torch.Tensor, channel_dim: int, need_a0: bool
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    nd = x.dim()
    c = coeffs.to(dtype=x.dtype)
    t = knots.to(dtype=x.dtype)
    a0 = _coeff_view(c[:, 0, 0], nd, channel_dim)
    a1 = _coeff_view(c[:, 0, 1], nd, channel_dim)
    a2 = _coeff_view(c[:, 0, 2], nd, channel_dim)
    for k in range(t.shape[0]):
        m = x >= t[k]
        if need_a0:
            a0 = torch.where(m, _coeff_view(c[:, k + 1, 0], nd, channel_dim), a0)
        a1 = torch.where(m, _coeff_view(c[:, k + 1, 1], nd, channel_dim), a1)
        a2 = torch.where(m, _coeff_view(c[:, k + 1, 2], nd, channel_dim), a2)
    return a0, a1, a2


def piecewise_quadratic_torch(
    x: torch.Tensor, knots: torch.Tensor, coeffs: torch.Tensor, channel_dim: int = 1
) -> torch.Tensor:
    """Pure tensor-op form (scriptable, traceable, exportable, compiles to one fused loop)."""
    if channel_dim < 0:
        channel_dim = max(x.dim() + channel_dim, 0)
    a0, a1, a2 = _select(x, knots, coeffs, channel_dim, True)
    return a0 + x * (a1 + _times_x(a2, x))


def _times_x(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # a * x, but 0 where a == 0 so that linear segments stay +-inf (not NaN) at x = +-inf
    ax = a * x
    return torch.where(a == 0, torch.zeros_like(ax), ax)


def _reduce_dims(ndim: int, channel_dim: int, per_channel: bool) -> List[int]:
    return [d for d in range(ndim) if not (per_channel and d == channel_dim)]


def _backward_torch(
    g: torch.Tensor,
    x: torch.Tensor,
    knots: torch.Tensor,
    coeffs: torch.Tensor,
    channel_dim: int,
    need_x: bool,
    need_c: bool,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    gx: Optional[torch.Tensor] = None
    gc: Optional[torch.Tensor] = None
    if need_x:
        _, a1, a2 = _select(x, knots, coeffs, channel_dim, False)
        gx = g * (a1 + _times_x(2 * a2, x))
    if need_c:
        cc, s_count, _ = coeffs.shape
        per_channel = cc > 1
        dims = _reduce_dims(x.dim(), channel_dim, per_channel)
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        xs = x.to(acc)
        gs = g.to(acc)
        # sums of g x^j over all elements and over each {x >= t[k]}; segment s is the difference
        # {x >= t[s-1]} minus {x >= t[s]} (one compare per knot, as in the C kernel)
        g1 = gs * xs
        g2 = g1 * xs
        zero = torch.zeros((), dtype=acc, device=x.device)
        cum = [torch.stack([gs.sum(dims).reshape(-1), g1.sum(dims).reshape(-1), g2.sum(dims).reshape(-1)], -1)]
        for k in range(knots.shape[0]):
            m = x >= knots[k].to(x.dtype)
            cum.append(torch.stack([torch.where(m, gs, zero).sum(dims).reshape(-1),
                                    torch.where(m, g1, zero).sum(dims).reshape(-1),
                                    torch.where(m, g2, zero).sum(dims).reshape(-1)], -1))
        rows = [cum[s] - cum[s + 1] if s + 1 < s_count else cum[s] for s in range(s_count)]
        gc = torch.stack(rows, dim=1).reshape(cc, s_count, 3).to(coeffs.dtype)
    return gx, gc


_NATIVE_DTYPES = (torch.float32, torch.float64)


def _native_layout(x: torch.Tensor, channel_dim: int, cc: int) -> Optional[Tuple[torch.Tensor, int, int, int]]:
    """(tensor, outer, C, inner) for the C kernel, or None when it does not apply."""
    if type(x) is not torch.Tensor or not x.is_cpu or x.dtype not in _NATIVE_DTYPES or x.layout != torch.strided:
        return None
    n = x.numel()
    if n == 0:
        return None
    nd = x.dim()
    if cc == 1:
        if x.is_contiguous() or (nd == 4 and x.is_contiguous(memory_format=torch.channels_last)):
            return x, 1, 1, n
        return x.contiguous(), 1, 1, n
    c = x.shape[channel_dim]
    if c != cc:
        return None
    if channel_dim == nd - 1:
        return x.contiguous(), n // c, c, 1
    if channel_dim == 1:
        if nd == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return x, n // c, c, 1
        x = x.contiguous()
        return x, x.shape[0], c, n // (x.shape[0] * c)
    return None


def native_table(knots: torch.Tensor, coeffs: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """Knots and planar (3, S, Cc) coefficients, contiguous on the CPU, as the C kernels read them."""
    t = knots.detach().to(device="cpu", dtype=dtype).contiguous()
    planar = coeffs.detach().to(device="cpu", dtype=dtype).permute(2, 1, 0).contiguous()
    return t, planar


def _use_native(x: torch.Tensor) -> bool:
    if _backend == "torch":
        return False
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return _native.library() is not None


def native_forward_prepared(
    x: torch.Tensor, table: Tuple[torch.Tensor, torch.Tensor], cc: int, channel_dim: int
) -> Optional[torch.Tensor]:
    """Forward with a table from :func:`native_table`; None when the kernel does not apply."""
    layout = _native_layout(x, channel_dim, cc)
    if layout is None:
        return None
    xd, outer, c, inner = layout
    t, cf = table
    if cf.dtype != xd.dtype:
        return None
    lib = _native.library()
    y = torch.empty_like(xd)
    fn = lib.repact_pq_forward_f32 if xd.dtype == torch.float32 else lib.repact_pq_forward_f64
    rc = fn(xd.data_ptr(), y.data_ptr(), outer, c, inner, t.shape[0], t.data_ptr(), cf.data_ptr(), cc,
            torch.get_num_threads())
    return y if rc == 0 else None


def native_basis_table(knots: torch.Tensor, coeffs: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """The table in RepAct's own basis as the C kernels read it, planar (4, Cc) rows E, A, B, Q of
    ``E + x (A + B [x >= 0] + Q clamp(x + 3, 0, 6))``; None when the table is not in that basis to
    ``dtype``'s precision (a float32-born table evaluated in float64 keeps its table)."""
    from ..fuse import basis_coefficients

    b = basis_coefficients(knots.detach().cpu(), coeffs.detach().cpu(), rtol=8 * torch.finfo(dtype).eps)
    return None if b is None else b.rows().to(dtype=dtype).contiguous()


def native_basis_forward(x: torch.Tensor, coef: torch.Tensor, channel_dim: int) -> Optional[torch.Tensor]:
    """Forward with a table from :func:`native_basis_table`; None when the kernel does not apply."""
    layout = _native_layout(x, channel_dim, coef.shape[1])
    if layout is None:
        return None
    xd, outer, c, inner = layout
    if coef.dtype != xd.dtype:
        return None
    lib = _native.library()
    y = torch.empty_like(xd)
    fn = lib.repact_basis_forward_f32 if xd.dtype == torch.float32 else lib.repact_basis_forward_f64
    rc = fn(xd.data_ptr(), y.data_ptr(), outer, c, inner, coef.data_ptr(), coef.shape[1], torch.get_num_threads())
    return y if rc == 0 else None


def _native_forward(x: torch.Tensor, knots: torch.Tensor, coeffs: torch.Tensor, channel_dim: int):
    if x.dtype not in _NATIVE_DTYPES:
        return None
    return native_forward_prepared(x, native_table(knots, coeffs, x.dtype), coeffs.shape[0], channel_dim)


def _grad_like(g: torch.Tensor, xd: torch.Tensor) -> torch.Tensor:
    """The incoming gradient as the kernels read it: a plain CPU tensor laid out like ``xd``."""
    if g.dtype != xd.dtype or not g.is_cpu or g.stride() != xd.stride() or type(g) is not torch.Tensor:
        return torch.empty_like(xd).copy_(g)
    return g


def _native_backward(g, x, knots, coeffs, channel_dim, need_x, need_c, affine=None):
    """gx and the (Cc, S, 3) coefficient gradient from the C kernel; None when it does not apply.

    ``affine`` (3, Cc) float64 replaces the incoming gradient g by alpha g + beta s(x) + delta.
    """
    layout = _native_layout(x, channel_dim, coeffs.shape[0])
    if layout is None:
        return None
    xd, outer, c, inner = layout
    g = _grad_like(g, xd)
    lib = _native.library()
    t, cf = native_table(knots, coeffs, xd.dtype)
    gx = torch.empty_like(xd) if need_x else None
    acc = torch.empty((3, coeffs.shape[1], coeffs.shape[0]), dtype=torch.float64) if need_c else None
    aff = None
    if affine is not None:
        aff = affine.detach().to(device="cpu", dtype=torch.float64).contiguous()
    fn = lib.repact_pq_backward_f32 if xd.dtype == torch.float32 else lib.repact_pq_backward_f64
    rc = fn(
        xd.data_ptr(), g.data_ptr(), gx.data_ptr() if gx is not None else None,
        acc.data_ptr() if acc is not None else None, aff.data_ptr() if aff is not None else None,
        outer, c, inner, t.numel(), t.data_ptr(), cf.data_ptr(), coeffs.shape[0], torch.get_num_threads(),
    )
    if rc != 0:
        return None
    gc = acc.permute(2, 1, 0).to(dtype=coeffs.dtype, device=coeffs.device) if acc is not None else None
    return gx, gc


def native_stats(x: torch.Tensor, knots: torch.Tensor, coeffs: torch.Tensor, channel_dim: int):
    """Per table row (Cc): sum of s(x) and sum of s(x)^2 as a (2, Cc) float64 tensor; None if n/a."""
    layout = _native_layout(x, channel_dim, coeffs.shape[0])
    if layout is None:
        return None
    xd, outer, c, inner = layout
    lib = _native.library()
    t, cf = native_table(knots, coeffs, xd.dtype)
    out = torch.empty((2, coeffs.shape[0]), dtype=torch.float64)
    fn = lib.repact_pq_stats_f32 if xd.dtype == torch.float32 else lib.repact_pq_stats_f64
    rc = fn(xd.data_ptr(), outer, c, inner, t.numel(), t.data_ptr(), cf.data_ptr(), coeffs.shape[0],
            torch.get_num_threads(), out.data_ptr())
    return out if rc == 0 else None


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _param(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    # a parameter as the C entry points read it: CPU, dtype, contiguous; as is when it already is
    # (the kernels only read it through data_ptr(), so it needs no detach), else a detached copy
    if t is None or (t.dtype == dtype and t.is_cpu and t.is_contiguous()):
        return t
    return t.detach().to(device="cpu", dtype=dtype).contiguous()


def _train_layout(x, w_raw, channel_dim):
    # (tensor, outer, C, inner, table rows) for the training entry points, or None
    cc = w_raw.shape[0] if w_raw.dim() == 2 else 1
    layout = _native_layout(x, channel_dim, cc)
    return None if layout is None else (*layout, cc)


def _train_params(dtype, *tensors):
    return tuple(_param(t, dtype) for t in tensors)


# the C entry points' K for maps onto RepAct's own basis (E, A, B, Q) instead of a piece table
_HSWISH_BASIS = -1


def _train_k(knots: torch.Tensor, base: torch.Tensor) -> int:
    # a table map has 3 coefficients per segment; a basis map (fuse.hardswish_basis_map) has 4
    return _HSWISH_BASIS if base.shape[-1] == 4 else knots.shape[0]


def native_train_forward(x, w_raw, slope, gamma, beta, knots, base, part, softmax: bool, eps: float,
                         channel_dim: int):
    """RepAct's whole training forward in one native call: ``(y, mean, var)`` or None if n/a.

    ``w_raw`` (nb,) or (Cc, nb), ``slope`` (Cc,) or None, ``base``/``part`` (nb, S*3): the table is
    ``w @ base + (w * slope) @ part`` with ``w = softmax(w_raw)`` when ``softmax``; (nb, 4) maps
    from :func:`repact.fuse.hardswish_basis_map` give RepAct's own basis instead (same function,
    about half the arithmetic; ``knots`` is then unused). With ``gamma``
    and ``beta`` (Cc,), the output is the training BatchNorm of the table's function with batch
    statistics, and mean/var (Cc,) float64 are those statistics; otherwise both are empty.
    """
    layout = _train_layout(x, w_raw, channel_dim)
    if layout is None:
        return None
    xd, outer, c, inner, cc = layout
    dt = xd.dtype
    t, w, sl, bs, pt, gm = _train_params(dt, knots, w_raw, slope, base, part, gamma)
    bt = _param(beta, dt)
    lib = _native.library()
    y = torch.empty_like(xd)
    nstat = cc if gm is not None else 0
    mean = torch.empty(nstat, dtype=torch.float64)
    var = torch.empty(nstat, dtype=torch.float64)
    fn = lib.repact_train_forward_f32 if dt == torch.float32 else lib.repact_train_forward_f64
    rc = fn(xd.data_ptr(), y.data_ptr(), outer, c, inner, _train_k(t, bs), t.data_ptr(), w.data_ptr(), _ptr(sl),
            bs.data_ptr(), pt.data_ptr(), w.shape[-1], int(softmax), cc, _ptr(gm), _ptr(bt), float(eps),
            _ptr(mean) if nstat else None, _ptr(var) if nstat else None, torch.get_num_threads())
    if rc != 0:
        return None
    return y, mean, var


def native_train_backward(g, x, w_raw, slope, gamma, mean, var, knots, base, part, softmax: bool, eps: float,
                          channel_dim: int, need_x: bool, need_params: bool):
    """Gradients ``(gx, g_w_raw, g_slope, g_gamma, g_beta)`` of :func:`native_train_forward`.

    Entries are None where not needed or not present; the whole result is None if n/a.
    """
    layout = _train_layout(x, w_raw, channel_dim)
    if layout is None:
        return None
    xd, outer, c, inner, cc = layout
    dt = xd.dtype
    g = _grad_like(g, xd)
    t, w, sl, bs, pt, gm = _train_params(dt, knots, w_raw, slope, base, part, gamma)
    lib = _native.library()
    gx = torch.empty_like(xd) if need_x else None
    gw = torch.empty(w_raw.shape, dtype=dt) if need_params else None
    gsl = torch.empty(slope.shape, dtype=dt) if need_params and slope is not None else None
    ggm = torch.empty(gamma.shape, dtype=dt) if gm is not None else None
    gbt = torch.empty(gamma.shape, dtype=dt) if gm is not None else None
    if gm is not None:
        mean = mean.to(dtype=torch.float64).contiguous()
        var = var.to(dtype=torch.float64).contiguous()
    fn = lib.repact_train_backward_f32 if dt == torch.float32 else lib.repact_train_backward_f64
    rc = fn(xd.data_ptr(), g.data_ptr(), _ptr(gx), outer, c, inner, _train_k(t, bs), t.data_ptr(), w.data_ptr(),
            _ptr(sl), bs.data_ptr(), pt.data_ptr(), w.shape[-1], int(softmax), cc, _ptr(gm),
            _ptr(mean) if gm is not None else None, _ptr(var) if gm is not None else None, float(eps),
            _ptr(gw), _ptr(gsl), _ptr(ggm), _ptr(gbt), torch.get_num_threads())
    if rc != 0:
        return None
    if gx is not None and gx.shape != x.shape:
        gx = gx.reshape(x.shape)
    return gx, gw, gsl, ggm, gbt


class _PiecewiseQuadraticFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, knots, coeffs, channel_dim):
        ctx.channel_dim = channel_dim
        ctx.save_for_backward(x, knots, coeffs)
        y = None
        if _use_native(x):
            y = _native_forward(x, knots, coeffs, channel_dim)
        if y is None:
            y = piecewise_quadratic_torch(x, knots, coeffs, channel_dim)
        return y

    @staticmethod
    def backward(ctx, g):
        x, knots, coeffs = ctx.saved_tensors
        need_x, _, need_c, _ = ctx.needs_input_grad
        gx, gc = piecewise_quadratic_backward(g, x, knots, coeffs, ctx.channel_dim, need_x, need_c)
        return gx, None, gc, None


def piecewise_quadratic_backward(g, x, knots, coeffs, channel_dim, need_x, need_c):
    """(gx, gcoeffs) of the op for an incoming gradient ``g``, native where it applies."""
    out = None
    if _use_native(x):
        out = _native_backward(g, x, knots, coeffs, channel_dim, need_x, need_c)
    if out is None:
        out = _backward_torch(g, x, knots, coeffs, channel_dim, need_x, need_c)
    gx, gc = out
    if gx is not None and gx.shape != x.shape:
        gx = gx.reshape(x.shape)
    return gx, gc


def piecewise_quadratic(
    x: torch.Tensor, knots: torch.Tensor, coeffs: torch.Tensor, channel_dim: int = 1
) -> torch.Tensor:
    """Evaluate the piecewise quadratic; see the module docstring for the shapes.

    ``channel_dim`` (1 or -1) says where the channels are when ``coeffs`` is per-channel.
    """
    if coeffs.dim() != 3 or coeffs.shape[2] != 3:
        raise ValueError(f"coeffs must have shape (Cc, S, 3), got {tuple(coeffs.shape)}")
    if knots.dim() != 1 or knots.shape[0] + 1 != coeffs.shape[1]:
        raise ValueError(
            f"{knots.numel()} knots need {knots.numel() + 1} segments, coeffs has {coeffs.shape[1]}"
        )
    if x.dim() == 0:
        return piecewise_quadratic(x.reshape(1), knots, coeffs, 0).reshape(())
    cd = channel_dim + x.dim() if channel_dim < 0 else channel_dim
    if coeffs.shape[0] > 1 and (cd >= x.dim() or x.shape[cd] != coeffs.shape[0]):
        raise ValueError(
            f"per-channel coefficients for {coeffs.shape[0]} channels do not match input shape "
            f"{tuple(x.shape)} with channels on dim {channel_dim}"
        )
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or coeffs.requires_grad)
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return piecewise_quadratic_torch(x, knots, coeffs, cd)
    if torch.compiler.is_compiling():
        # under autograd the compiler would keep one mask per knot for backward (and store them
        # slowly); the Function keeps only x and recomputes, in tensor ops the compiler fuses
        if needs_grad:
            return _PiecewiseQuadraticFn.apply(x, knots, coeffs, cd)
        return piecewise_quadratic_torch(x, knots, coeffs, cd)
    if not needs_grad:
        if _use_native(x):
            y = _native_forward(x, knots, coeffs, cd)
            if y is not None:
                return y
        return piecewise_quadratic_torch(x, knots, coeffs, cd)
    return _PiecewiseQuadraticFn.apply(x, knots, coeffs, cd)
