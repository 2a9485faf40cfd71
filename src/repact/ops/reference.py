"""The reference backend: every op in plain tensor ops (any device, any dtype; no data read on the host).

This is the specification the ``cpu`` and ``triton`` backends are tested against, and what
TorchScript, tracing, ONNX export and ``torch.compile`` (where no registered op applies) see.

The piecewise quadratic has two forms of the same function:

* the *table*: knots ``t`` (K, sorted) and ``coeffs`` (Cc, K + 1, 3); segment ``s`` holds
  ``t[s-1] <= x < t[s]`` and ``y = a0 + x (a1 + a2 x)`` with its row;
* RepAct's *basis*: rows (4, Cc) = E, A, B, Q of ``y = E + x (A + B [x >= 0] + Q clamp(x + 3, 0, 6))``
  (the table on the knots (-3, 0, 3) of every weighted sum of identity, ReLU, PReLU, leaky ReLU,
  abs and HardSwish, and of its BatchNorm fold; ``repact.fuse.hardswish_basis_map``).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .batchnorm import accumulation_dtype, batch_stats
from .layout import channel_shape, reduce_dims

__all__ = ["pq_forward", "pq_backward", "basis_forward", "basis_backward", "coefficients", "repact_train",
           "acon_forward", "acon_backward"]


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


def _times_x(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # a * x, but 0 where a == 0 so that linear segments stay +-inf (not NaN) at x = +-inf
    ax = a * x
    return torch.where(a == 0, torch.zeros_like(ax), ax)


def pq_forward(x: torch.Tensor, knots: torch.Tensor, coeffs: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """The table form (scriptable, traceable, exportable; the compiler fuses it into one loop)."""
    if channel_dim < 0:
        channel_dim = max(x.dim() + channel_dim, 0)
    a0, a1, a2 = _select(x, knots, coeffs, channel_dim, True)
    return a0 + x * (a1 + _times_x(a2, x))


def pq_backward(g, x, knots, coeffs, channel_dim: int, need_x: bool, need_c: bool):
    """(gx, gcoeffs (Cc, S, 3)) of the table form; sums accumulate in float32 at least."""
    gx: Optional[torch.Tensor] = None
    gc: Optional[torch.Tensor] = None
    if need_x:
        _, a1, a2 = _select(x, knots, coeffs, channel_dim, False)
        gx = g * (a1 + _times_x(2 * a2, x))
    if need_c:
        cc, s_count, _ = coeffs.shape
        dims = reduce_dims(x.dim(), channel_dim, cc > 1)
        acc = accumulation_dtype(x.dtype)
        xs, gs = x.to(acc), g.to(acc)
        # sums of g x^j over all elements and over each {x >= t[k]}; segment s is the difference
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


def _basis_views(rows: torch.Tensor, x: torch.Tensor, channel_dim: int):
    shape = channel_shape(x.dim(), channel_dim, rows.shape[1])
    r = rows.to(x.dtype)
    return [r[j].reshape(shape) for j in range(4)]


def _basis_slope(x, a, b, q):
    # u = clamp(x + 3, 0, 6), written so that autograd takes the right derivative at -3 and 3 (as
    # the table's segments [-3, 3) and [3, inf) do) where clamp's backward takes the inner one
    u = torch.where(x < -3.0, torch.zeros_like(x), torch.where(x < 3.0, x + 3.0, torch.full_like(x, 6.0)))
    return u, a + b * (x >= 0).to(x.dtype) + q * u


def basis_forward(x: torch.Tensor, rows: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """The basis form, rows (4, Cc): ``E + x (A + B [x >= 0] + Q clamp(x + 3, 0, 6))``."""
    if channel_dim < 0:
        channel_dim = max(x.dim() + channel_dim, 0)
    e, a, b, q = _basis_views(rows, x, channel_dim)
    return e + x * _basis_slope(x, a, b, q)[1]


def basis_backward(g, x, rows, channel_dim: int, need_x: bool, need_c: bool):
    """(gx, grows (4, Cc)): ds/dE = 1, ds/dA = x, ds/dB = x [x >= 0], ds/dQ = x u, and
    s'(x) = A + B [x >= 0] + Q u + Q x [-3 <= x < 3] (the right derivative at the knots)."""
    e, a, b, q = _basis_views(rows, x, channel_dim)
    u, t = _basis_slope(x, a, b, q)
    gx = grows = None
    if need_x:
        mid = ((x >= -3.0) & (x < 3.0)).to(x.dtype)
        gx = g * (t + q * x * mid)
    if need_c:
        dims = reduce_dims(x.dim(), channel_dim, rows.shape[1] > 1)
        acc = accumulation_dtype(x.dtype)
        xs, gs = x.to(acc), g.to(acc)
        h1 = gs * xs
        sums = [gs, h1, h1 * (xs >= 0).to(acc), h1 * u.to(acc)]
        grows = torch.stack([t_.sum(dims).reshape(-1) for t_ in sums]).to(rows.dtype)
    return gx, grows


def coefficients(w_raw: torch.Tensor, slope: Optional[torch.Tensor], base: torch.Tensor, part: torch.Tensor,
                 softmax: bool) -> torch.Tensor:
    """RepAct's fused coefficients (Cc, R) from its parameters, differentiable:
    ``w @ base + (w * slope) @ part`` with ``w = softmax(w_raw)`` for RepAct-II; ``base``/``part``
    (nb, R) map the branch weights onto the table's (S, 3) rows or the basis' 4 rows."""
    w = w_raw.reshape(1, -1) if w_raw.dim() == 1 else w_raw
    if softmax:
        w = torch.softmax(w, dim=-1)
    out = w @ base.to(w.dtype)
    if slope is not None:
        out = out + (w * slope.reshape(-1, 1).to(w.dtype)) @ part.to(w.dtype)
    return out


def evaluate(x: torch.Tensor, coef: torch.Tensor, knots: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """s(x) for coefficients (Cc, R) in either form (R = 4: the basis; a table has R = 3 (K + 1))."""
    if coef.shape[1] == 4:
        return basis_forward(x, coef.t(), channel_dim)
    return pq_forward(x, knots, coef.reshape(coef.shape[0], -1, 3), channel_dim)


def repact_train(x, w_raw, slope, gamma, beta, running_mean, running_var, knots, base, part, softmax: bool,
                 eps: float, channel_dim: int, group=None):
    """RepAct's training op in tensor ops, differentiable: ``(y, mean, var, count)``.

    ``y = s(x)`` for RepAct-I/II (``gamma`` None); for RepAct-III ``gamma (s - mean) / sqrt(var +
    eps) + beta`` with the batch statistics of ``s`` (over every element, or per channel for
    per-channel tables), shared with every process of ``group`` when given, or with
    ``running_mean``/``running_var`` when given (constants). ``mean``/``var`` (Cc,) are the batch
    statistics (detached; None otherwise) and ``count`` the values per table they cover.
    """
    coef = coefficients(w_raw, slope, base, part, softmax)
    s = evaluate(x, coef, knots, channel_dim)
    if gamma is None:
        return s, None, None, 0
    cc = coef.shape[0]
    shape = channel_shape(x.dim(), channel_dim, cc)
    if running_mean is not None:
        mean, var, count, batch = running_mean, running_var, 0, False
    else:
        mean, var, count = batch_stats(s, reduce_dims(x.dim(), channel_dim, cc > 1), group)
        batch = True
    acc = accumulation_dtype(x.dtype)
    scale = torch.rsqrt(var.to(acc) + eps).reshape(shape) * gamma.to(acc).reshape(shape)
    y = (s.to(acc) - mean.to(acc).reshape(shape)) * scale + beta.to(acc).reshape(shape)
    if not batch:
        return y.to(x.dtype), None, None, 0
    return y.to(x.dtype), mean.detach(), var.detach(), count


def _acon_parts(x, p1, p2, beta):
    d = None if p1 is None and p2 is None else (p1 if p2 is None else ((1 - p2) if p1 is None else p1 - p2))
    u = x if d is None else x * d
    z = u if beta is None else u * beta
    return d, u, z


def acon_forward(x, p1, p2, beta, inplace: bool = False):
    """ACON: ``d x sigmoid(beta d x) + p2 x`` with ``d = p1 - p2`` (p1 = 1, p2 = 0, beta = 1 when
    None), in ``x``'s dtype (computed in the parameters' where they are wider, as float32
    parameters with a float16 input); ``inplace`` reuses the sigmoid's buffer where autograd does
    not need it."""
    _, u, z = _acon_parts(x, p1, p2, beta)
    if not inplace:
        y = torch.sigmoid(z) * u
        y = y if p2 is None else y + x * p2
    else:
        y = torch.sigmoid(z).mul_(u)  # a fresh tensor whose dtype already covers p2's (d holds p2)
        y = y if p2 is None else y.addcmul_(x, p2)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def _sum_to(grad: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    if grad.shape != ref.shape:
        grad = grad.sum_to_size(ref.shape)
    return grad.to(ref.dtype)


def acon_backward(g, x, p1, p2, beta, need_x: bool, need_p1: bool, need_p2: bool, need_beta: bool):
    """Gradients (gx, gp1, gp2, gbeta) of :func:`acon_forward` (None where not needed)."""
    d, u, z = _acon_parts(x, p1, p2, beta)
    s = torch.sigmoid(z)
    gx = gp1 = gp2 = gbeta = None
    if need_beta:
        # d/dbeta [u sigmoid(beta u)] = u^2 s (1 - s)
        gbeta = _sum_to(g * u * u * s * (1 - s), beta)
    if need_x or need_p1 or need_p2:
        # core = d/du [u sigmoid(beta u)] = s (1 + beta u (1 - s))
        core = s * (1 + z * (1 - s))
        if need_x:
            t = core if d is None else core * d
            gx = _sum_to(g * (t if p2 is None else t + p2), x)
        if need_p1 or need_p2:
            gd = g * x * core
            if need_p1:
                gp1 = _sum_to(gd, p1)
            if need_p2:
                gp2 = _sum_to(g * x - gd, p2)
    return gx, gp1, gp2, gbeta
