"""repact's Triton kernels (see ``repact.ops._triton`` for the launches).

A tensor is seen as (O, C, I) in memory order (``repact.ops.layout``); a program takes a tile of
(BO, BC, BI) elements, with BC = 1 (blocks: one channel per tile) or BI = 1 (rows: channels
along the tile). Coefficients are (R, Cc) in float32 (float64 for float64 inputs), column c for
channel c (Cc = C) or column 0 for every element (Cc = 1): R = 4 for RepAct's basis
(E, A, B, Q of ``E + x (A + B [x >= 0] + Q clamp(x + 3, 0, 6))``), R = 3 (K + 1) for a table on K
knots (row s * 3 + j multiplies x^j on segment s). Sums are written per tile (partials
(P, R, C), P = tiles per channel) and reduced by ``_reduce`` in a second pass, in float32 or
float64.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tile(pid, O, C, I, BO: tl.constexpr, BC: tl.constexpr, BI: tl.constexpr):
    """Offsets, mask, channel indices and the tile's partial index for program ``pid``."""
    n_pi = tl.cdiv(I, BI)
    n_pc = tl.cdiv(C, BC)
    pi = pid % n_pi
    rest = pid // n_pi
    pc = rest % n_pc
    po = rest // n_pc
    o = po * BO + tl.arange(0, BO)
    c = pc * BC + tl.arange(0, BC)
    i = pi * BI + tl.arange(0, BI)
    offs = (o[:, None, None].to(tl.int64) * C + c[None, :, None]) * I + i[None, None, :]
    mask = (o < O)[:, None, None] & (c < C)[None, :, None] & (i < I)[None, None, :]
    return offs, mask, c, po * n_pi + pi


@triton.jit
def _coef(coef, r, c, cmask, CC, PER_CHANNEL: tl.constexpr):
    """Row r of the coefficients for channels c, shaped (1, BC, 1)."""
    if PER_CHANNEL:
        v = tl.load(coef + r * CC + c, mask=cmask, other=0.0)
    else:
        v = tl.load(coef + r * CC + c * 0, mask=cmask, other=0.0)
    return v[None, :, None]


@triton.jit
def _evaluate(x, coef, knots, c, cmask, CC, K: tl.constexpr, BASIS: tl.constexpr, PER_CHANNEL: tl.constexpr):
    """s(x) and the slope parts the backward needs: (s, t, u, seg), in x's (compute) dtype.

    Basis: t = A + B [x >= 0] + Q u with u = clamp(x + 3, 0, 6), s = E + x t. Table: seg = the
    segment (number of knots <= x; NaN falls in segment 0), s = a0 + x (a1 + a2 x) with a2 x
    taken as 0 where a2 == 0 (linear segments stay +-inf at +-inf), t = a1, u = a2.
    """
    if BASIS:
        e = _coef(coef, 0, c, cmask, CC, PER_CHANNEL)
        a = _coef(coef, 1, c, cmask, CC, PER_CHANNEL)
        b = _coef(coef, 2, c, cmask, CC, PER_CHANNEL)
        q = _coef(coef, 3, c, cmask, CC, PER_CHANNEL)
        u = tl.minimum(tl.maximum(x + 3.0, 0.0), 6.0)
        t = a + tl.where(x >= 0, b, 0.0) + q * u
        s = e + x * t
        seg = tl.zeros(x.shape, tl.int32)
    else:
        seg = tl.zeros(x.shape, tl.int32)
        for k in tl.static_range(K):
            seg += (x >= tl.load(knots + k)).to(tl.int32)
        a0 = tl.zeros(x.shape, x.dtype)
        t = tl.zeros(x.shape, x.dtype)
        u = tl.zeros(x.shape, x.dtype)
        for sg in tl.static_range(K + 1):
            on = seg == sg
            a0 = tl.where(on, _coef(coef, sg * 3, c, cmask, CC, PER_CHANNEL), a0)
            t = tl.where(on, _coef(coef, sg * 3 + 1, c, cmask, CC, PER_CHANNEL), t)
            u = tl.where(on, _coef(coef, sg * 3 + 2, c, cmask, CC, PER_CHANNEL), u)
        s = a0 + x * (t + tl.where(u == 0, 0.0, u * x))
    return s, t, u, seg


@triton.jit
def _load_x(ptr, offs, mask, F64: tl.constexpr):
    v = tl.load(ptr + offs, mask=mask, other=0.0)
    return v.to(tl.float64) if F64 else v.to(tl.float32)


@triton.jit
def _channel_values(ptr, c, cmask, PER_CHANNEL: tl.constexpr):
    """A per-table vector (mean, var, ...) for channels c, shaped (1, BC, 1)."""
    if PER_CHANNEL:
        v = tl.load(ptr + c, mask=cmask, other=0.0)
    else:
        v = tl.load(ptr + c * 0, mask=cmask, other=0.0)
    return v[None, :, None]


@triton.jit
def apply_kernel(x, y, coef, knots, scale, shift, O, C, I, CC,
                 K: tl.constexpr, BASIS: tl.constexpr, PER_CHANNEL: tl.constexpr, AFFINE: tl.constexpr,
                 F64: tl.constexpr, BO: tl.constexpr, BC: tl.constexpr, BI: tl.constexpr):
    """y = s(x), or scale s(x) + shift per table (RepAct-III's BatchNorm, folded per channel)."""
    offs, mask, c, _ = _tile(tl.program_id(0), O, C, I, BO, BC, BI)
    cmask = c < C
    xv = _load_x(x, offs, mask, F64)
    s, _t, _u, _seg = _evaluate(xv, coef, knots, c, cmask, CC, K, BASIS, PER_CHANNEL)
    if AFFINE:
        s = s * _channel_values(scale, c, cmask, PER_CHANNEL) + _channel_values(shift, c, cmask, PER_CHANNEL)
    tl.store(y + offs, s.to(y.dtype.element_ty), mask=mask)


@triton.jit
def sums_kernel(x, g, coef, knots, shift, partials, O, C, I, CC,
                K: tl.constexpr, BASIS: tl.constexpr, PER_CHANNEL: tl.constexpr, HAS_G: tl.constexpr,
                F64: tl.constexpr, BO: tl.constexpr, BC: tl.constexpr, BI: tl.constexpr):
    """Per tile and channel: without g, sum(s - k) and sum((s - k)^2) with k = shift (the value of
    s at the table's first element, ``repact.ops.batchnorm``); with g, sum g and sum g (s - k)
    with k = shift (the batch mean). partials: (P, 2, C)."""
    offs, mask, c, p = _tile(tl.program_id(0), O, C, I, BO, BC, BI)
    cmask = c < C
    xv = _load_x(x, offs, mask, F64)
    s, _t, _u, _seg = _evaluate(xv, coef, knots, c, cmask, CC, K, BASIS, PER_CHANNEL)
    d = tl.where(mask, s - _channel_values(shift, c, cmask, PER_CHANNEL), 0.0)
    if HAS_G:
        w = _load_x(g, offs, mask, F64)
        s1 = tl.sum(tl.sum(w, axis=2), axis=0)
        s2 = tl.sum(tl.sum(w * d, axis=2), axis=0)
    else:
        s1 = tl.sum(tl.sum(d, axis=2), axis=0)
        s2 = tl.sum(tl.sum(d * d, axis=2), axis=0)
    base = partials + p * 2 * C + c
    tl.store(base, s1, mask=cmask)
    tl.store(base + C, s2, mask=cmask)


@triton.jit
def first_value_kernel(x, coef, knots, shift, C, I, CC, K: tl.constexpr, BASIS: tl.constexpr,
                       PER_CHANNEL: tl.constexpr, F64: tl.constexpr, BC: tl.constexpr):
    """shift[c] = s at the table's first element (0 where that is not finite)."""
    c = tl.program_id(0) * BC + tl.arange(0, BC)
    cmask = c < C
    xv = tl.load(x + c.to(tl.int64) * I, mask=cmask, other=0.0)
    xv = xv.to(tl.float64) if F64 else xv.to(tl.float32)
    s, _t, _u, _seg = _evaluate(xv[None, :, None], coef, knots, c, cmask, CC, K, BASIS, PER_CHANNEL)
    s = tl.sum(tl.sum(s, axis=2), axis=0)
    s = tl.where(s - s == 0, s, 0.0)  # NaN and +-inf give NaN
    tl.store(shift + c, s, mask=cmask)


@triton.jit
def backward_kernel(x, g, gx, coef, knots, alpha, c1, c2, mean, partials, O, C, I, CC,
                    K: tl.constexpr, BASIS: tl.constexpr, PER_CHANNEL: tl.constexpr, AFFINE: tl.constexpr,
                    NEED_X: tl.constexpr, NEED_SUMS: tl.constexpr, F64: tl.constexpr,
                    BO: tl.constexpr, BC: tl.constexpr, BI: tl.constexpr):
    """h = g, or alpha g + c1 + c2 (s - mean) (RepAct-III's BatchNorm backward); gx = h s'(x);
    per tile and channel the coefficient gradients' sums: basis h, h x, h x [x >= 0], h x u;
    table, per segment, h, h x, h x^2. partials: (P, R, C)."""
    offs, mask, c, p = _tile(tl.program_id(0), O, C, I, BO, BC, BI)
    cmask = c < C
    xv = _load_x(x, offs, mask, F64)
    h = _load_x(g, offs, mask, F64)
    s, t, u, seg = _evaluate(xv, coef, knots, c, cmask, CC, K, BASIS, PER_CHANNEL)
    if AFFINE:
        h = (_channel_values(alpha, c, cmask, PER_CHANNEL) * h + _channel_values(c1, c, cmask, PER_CHANNEL)
             + _channel_values(c2, c, cmask, PER_CHANNEL) * (s - _channel_values(mean, c, cmask, PER_CHANNEL)))
    h = tl.where(mask, h, 0.0)
    if NEED_X:
        if BASIS:
            q = _coef(coef, 3, c, cmask, CC, PER_CHANNEL)
            mid = (xv >= -3.0) & (xv < 3.0)
            d = t + tl.where(mid, q * xv, 0.0)
        else:
            d = t + tl.where(u == 0, 0.0, 2.0 * u * xv)
        tl.store(gx + offs, (h * d).to(gx.dtype.element_ty), mask=mask)
    if NEED_SUMS:
        h1 = h * xv
        if BASIS:
            base = partials + p * 4 * C + c
            tl.store(base, tl.sum(tl.sum(h, axis=2), axis=0), mask=cmask)
            tl.store(base + C, tl.sum(tl.sum(h1, axis=2), axis=0), mask=cmask)
            tl.store(base + 2 * C, tl.sum(tl.sum(tl.where(xv >= 0, h1, 0.0), axis=2), axis=0), mask=cmask)
            tl.store(base + 3 * C, tl.sum(tl.sum(h1 * u, axis=2), axis=0), mask=cmask)
        else:
            base = partials + p * (3 * (K + 1)) * C + c
            h2 = h1 * xv
            for sg in tl.static_range(K + 1):
                on = seg == sg
                tl.store(base + (sg * 3) * C, tl.sum(tl.sum(tl.where(on, h, 0.0), axis=2), axis=0), mask=cmask)
                tl.store(base + (sg * 3 + 1) * C, tl.sum(tl.sum(tl.where(on, h1, 0.0), axis=2), axis=0),
                         mask=cmask)
                tl.store(base + (sg * 3 + 2) * C, tl.sum(tl.sum(tl.where(on, h2, 0.0), axis=2), axis=0),
                         mask=cmask)


@triton.jit
def reduce_kernel(partials, out, P, RC, BP: tl.constexpr, BR: tl.constexpr):
    """out[j] = sum over p of partials[p, j] for j < RC (= R * C)."""
    j = tl.program_id(0) * BR + tl.arange(0, BR)
    jm = j < RC
    acc = tl.zeros((BP, BR), out.dtype.element_ty)
    for p0 in range(0, P, BP):
        p = p0 + tl.arange(0, BP)
        acc += tl.load(partials + p[:, None].to(tl.int64) * RC + j[None, :], mask=(p < P)[:, None] & jm[None, :],
                       other=0.0)
    tl.store(out + j, tl.sum(acc, axis=0), mask=jm)
