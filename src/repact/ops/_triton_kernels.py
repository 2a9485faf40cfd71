"""repact's Triton kernels for the table op and ACON, and the helpers every kernel shares (RepAct's
training op: ``_triton_train``; the launches: ``repact.ops._triton``).

A tensor is seen as (O, C, I) in memory order (``repact.ops.layout``); a program takes a tile of
(BO, BC, BI) elements, with BC = 1 (blocks: one channel per tile) or BI = 1 (rows: channels
along the tile). Coefficients are (Cc, R) in float32 (float64 for float64 inputs), row c for
channel c (Cc = C) or row 0 for every element (Cc = 1): R = 4 for RepAct's basis
(E, A, B, Q of ``E + x (A + B [x >= 0] + Q clamp(x + 3, 0, 6))``), R = 3 (K + 1) for a table on K
knots (coefficient s * 3 + j multiplies x^j on segment s: the (Cc, S, 3) table as it is). Sums are
written per tile (partials, P = tiles per channel) and reduced in a second pass, in float32 or
float64.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tile(pid, O, C, I, BO: tl.constexpr, BC: tl.constexpr, BI: tl.constexpr):
    """Offsets, mask, outer and channel indices, and the tile's partial index for program ``pid``
    (the (O, C, I) tiling every repact Triton kernel walks; ACON's kernels too)."""
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
    return offs, mask, o, c, po * n_pi + pi


@triton.jit
def _coef(coef, r, c, cmask, R: tl.constexpr, PER_CHANNEL: tl.constexpr):
    """Coefficient r of channels c from the (Cc, R) table, shaped (1, BC, 1)."""
    if PER_CHANNEL:
        v = tl.load(coef + c * R + r, mask=cmask, other=0.0)
    else:
        v = tl.load(coef + c * 0 + r, mask=cmask, other=0.0)
    return v[None, :, None]


@triton.jit
def _row(coef, r, c, cmask, PER_CHANNEL: tl.constexpr, w, sl, base, part, R: tl.constexpr, NB: tl.constexpr,
         NBP: tl.constexpr, HAS_SLOPE: tl.constexpr, FROM_PARAMS: tl.constexpr):
    """Coefficient r of channels c, shaped (1, BC, 1): read from ``coef`` (Cc, R), or
    with FROM_PARAMS computed from RepAct's parameters, ``sum_b w[c, b] (base[b, r] + sl[c]
    part[b, r])`` with w (BC, NBP) the branch weights and sl (BC,) the slope (``_weights``)."""
    if FROM_PARAMS:
        b = tl.arange(0, NBP)
        bm = b < NB
        v = tl.sum(w * tl.load(base + b * R + r, mask=bm, other=0.0)[None, :], axis=1)
        if HAS_SLOPE:
            v += sl * tl.sum(w * tl.load(part + b * R + r, mask=bm, other=0.0)[None, :], axis=1)
        out = v[None, :, None]
    else:
        out = _coef(coef, r, c, cmask, R, PER_CHANNEL)
    return out


@triton.jit
def _evaluate_rows(x, coef, knots, c, cmask, K: tl.constexpr, BASIS: tl.constexpr, PER_CHANNEL: tl.constexpr,
                   w, sl, base, part, R: tl.constexpr, NB: tl.constexpr, NBP: tl.constexpr,
                   HAS_SLOPE: tl.constexpr, FROM_PARAMS: tl.constexpr):
    """s(x), its right derivative s'(x) and the parts the coefficient sums need: (s, ds, u, seg),
    in x's (compute) dtype; the rows come from ``_row``.

    Basis: u = clamp(x + 3, 0, 6), s = E + x (A + B [x >= 0] + Q u), s' = A + B [x >= 0] + Q u
    + Q x [-3 <= x < 3]. Table: seg = the segment (number of knots <= x; NaN falls in segment 0),
    s = a0 + x (a1 + a2 x) with a2 x taken as 0 where a2 == 0 (linear segments stay +-inf at
    +-inf), s' = a1 + 2 a2 x (the same), u = a2.
    """
    if BASIS:
        e = _row(coef, 0, c, cmask, PER_CHANNEL, w, sl, base, part, R, NB, NBP, HAS_SLOPE, FROM_PARAMS)
        a = _row(coef, 1, c, cmask, PER_CHANNEL, w, sl, base, part, R, NB, NBP, HAS_SLOPE, FROM_PARAMS)
        b = _row(coef, 2, c, cmask, PER_CHANNEL, w, sl, base, part, R, NB, NBP, HAS_SLOPE, FROM_PARAMS)
        q = _row(coef, 3, c, cmask, PER_CHANNEL, w, sl, base, part, R, NB, NBP, HAS_SLOPE, FROM_PARAMS)
        u = tl.minimum(tl.maximum(x + 3.0, 0.0), 6.0)
        t = a + tl.where(x >= 0, b, 0.0) + q * u
        s = e + x * t
        ds = t + tl.where((x >= -3.0) & (x < 3.0), q * x, 0.0)
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
            a0 = tl.where(on, _row(coef, sg * 3, c, cmask, PER_CHANNEL, w, sl, base, part, R, NB, NBP, HAS_SLOPE,
                                   FROM_PARAMS), a0)
            t = tl.where(on, _row(coef, sg * 3 + 1, c, cmask, PER_CHANNEL, w, sl, base, part, R, NB, NBP,
                                  HAS_SLOPE, FROM_PARAMS), t)
            u = tl.where(on, _row(coef, sg * 3 + 2, c, cmask, PER_CHANNEL, w, sl, base, part, R, NB, NBP,
                                  HAS_SLOPE, FROM_PARAMS), u)
        s = a0 + x * (t + tl.where(u == 0, 0.0, u * x))
        ds = t + tl.where(u == 0, 0.0, 2.0 * u * x)
    return s, ds, u, seg


@triton.jit
def _evaluate(x, coef, knots, c, cmask, K: tl.constexpr, R: tl.constexpr, BASIS: tl.constexpr,
              PER_CHANNEL: tl.constexpr):
    """``_evaluate_rows`` with the coefficients read from ``coef`` (Cc, R)."""
    return _evaluate_rows(x, coef, knots, c, cmask, K, BASIS, PER_CHANNEL, 0.0, 0.0, coef, coef, R, 1, 1, False,
                          False)


@triton.jit
def _phi(x, u, seg, r: tl.constexpr, BASIS: tl.constexpr):
    """ds/d(row r) at x: basis 1, x, x [x >= 0], x u; table x^j on segment s (r = 3 s + j), else 0."""
    if BASIS:
        if r == 0:
            v = tl.full(x.shape, 1.0, x.dtype)
        elif r == 1:
            v = x
        elif r == 2:
            v = tl.where(x >= 0, x, 0.0)
        else:
            v = x * u
    else:
        on = seg == r // 3
        if r % 3 == 0:
            v = tl.where(on, 1.0, 0.0).to(x.dtype)
        elif r % 3 == 1:
            v = tl.where(on, x, 0.0)
        else:
            v = tl.where(on, x * x, 0.0)
    return v


@triton.jit
def _tile_sum(v):
    """A (BO, BC, BI) tile summed to one value per channel, (BC,)."""
    return tl.sum(tl.sum(v, axis=2), axis=0)


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
def apply_kernel(x, y, coef, knots, O, C, I, K: tl.constexpr, R: tl.constexpr, BASIS: tl.constexpr,
                 PER_CHANNEL: tl.constexpr, F64: tl.constexpr, BO: tl.constexpr, BC: tl.constexpr, BI: tl.constexpr):
    """The table op's forward, y = s(x)."""
    offs, mask, _o, c, _ = _tile(tl.program_id(0), O, C, I, BO, BC, BI)
    cmask = c < C
    xv = _load_x(x, offs, mask, F64)
    s, _ds, _u, _seg = _evaluate(xv, coef, knots, c, cmask, K, R, BASIS, PER_CHANNEL)
    tl.store(y + offs, s.to(y.dtype.element_ty), mask=mask)


@triton.jit
def backward_kernel(x, g, gx, coef, knots, partials, O, C, I,
                    K: tl.constexpr, R: tl.constexpr, BASIS: tl.constexpr, PER_CHANNEL: tl.constexpr, NEED_X: tl.constexpr,
                    NEED_SUMS: tl.constexpr, F64: tl.constexpr, BO: tl.constexpr, BC: tl.constexpr, BI: tl.constexpr):
    """The table op's backward: gx = g s'(x) and per tile and channel the coefficient gradients'
    sums, g ds/d(coefficient r) (``_phi``). partials: (P, C, R), so that their sum over P is the
    table's gradient (Cc, R)."""
    offs, mask, _o, c, p = _tile(tl.program_id(0), O, C, I, BO, BC, BI)
    cmask = c < C
    xv = _load_x(x, offs, mask, F64)
    h = _load_x(g, offs, mask, F64)
    s, ds, u, seg = _evaluate(xv, coef, knots, c, cmask, K, R, BASIS, PER_CHANNEL)
    if NEED_X:
        tl.store(gx + offs, (h * ds).to(gx.dtype.element_ty), mask=mask)
    if NEED_SUMS:
        base = partials + (p * C + c) * R
        for r in tl.static_range(R):
            tl.store(base + r, _tile_sum(h * _phi(xv, u, seg, r, BASIS)), mask=cmask)


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
