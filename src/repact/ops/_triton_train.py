"""RepAct's training op in Triton kernels: each reads the raw parameters and computes its own
coefficients (see ``repact.ops._triton`` for the launches, ``_triton_kernels`` for the shared
helpers and the layout).

Parameters, in float32 (float64 for float64 inputs): ``w_raw`` (Cc, NB) branch weights (softmax
taken per row for RepAct-II), ``slope`` (Cc,) the PReLU slope, ``base``/``part`` (NB, R) the
linear map from the branch weights onto the coefficient rows (RepAct's basis, R = 4, or a table
on K knots, R = 3 (K + 1)): row r of channel c is ``sum_b w[c, b] (base[b, r] + slope[c] part[b, r])``.

Launches per call:

* RepAct-I/II: forward ``apply_kernel``; backward ``backward_kernel`` (MODE 0) and ``grad_kernel``;
* RepAct-III, batch statistics: forward ``stats_kernel``, ``stats_finalize_kernel`` (mean, var,
  and the running statistics updated in place) and ``apply_kernel`` (which also counts the
  batch in ``num_batches_tracked``); backward ``backward_kernel`` (MODE 2: every sum the
  gradients need), ``grad_kernel`` (the parameters' gradients and the BatchNorm's backward
  coefficients) and ``backward_kernel`` (MODE 3: the input's gradient);
* RepAct-III, constant (running) statistics: forward ``apply_kernel``; backward
  ``backward_kernel`` (MODE 1) and ``grad_kernel``.

Per-tile sums go to partials (P, ROWS, C) in the compute dtype; ``stats_finalize_kernel`` and
``grad_kernel`` reduce them over the P tiles and finish in float64.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._triton_kernels import _channel_values, _evaluate_rows, _load_x, _phi, _tile, _tile_sum


@triton.jit
def _weights(w_raw, slope, c, cmask, NB: tl.constexpr, NBP: tl.constexpr, PER_CHANNEL: tl.constexpr,
             HAS_SLOPE: tl.constexpr, SOFTMAX: tl.constexpr, ACC64: tl.constexpr):
    """The branch weights (BC, NBP) of channels c (0 past NB), after softmax for RepAct-II, and the
    slope (BC,) (0 without one); in float64 with ACC64, else in the parameters' dtype."""
    b = tl.arange(0, NBP)
    bm = b < NB
    if PER_CHANNEL:
        cc = c
    else:
        cc = c * 0
    w = tl.load(w_raw + cc[:, None] * NB + b[None, :], mask=cmask[:, None] & bm[None, :], other=0.0)
    if ACC64:
        w = w.to(tl.float64)
    if SOFTMAX:
        z = tl.where(bm[None, :], w, float("-inf"))
        e = tl.exp(z - tl.max(z, axis=1)[:, None])
        w = e / tl.sum(e, axis=1)[:, None]
    if HAS_SLOPE:
        sl = tl.load(slope + cc, mask=cmask, other=0.0).to(w.dtype)
    else:
        sl = tl.zeros(c.shape, w.dtype)
    return w, sl


@triton.jit
def _s(x, knots, c, cmask, w, sl, base, part, K: tl.constexpr, R: tl.constexpr, NB: tl.constexpr,
       NBP: tl.constexpr, BASIS: tl.constexpr, PER_CHANNEL: tl.constexpr, HAS_SLOPE: tl.constexpr):
    """(s, s', u, seg) of ``_evaluate_rows`` with the coefficients made from the parameters."""
    return _evaluate_rows(x, base, knots, c, cmask, K, BASIS, PER_CHANNEL, w, sl, base, part, R, NB, NBP,
                          HAS_SLOPE, True)


@triton.jit
def _first_value(x, knots, c, cmask, I, w, sl, base, part, K: tl.constexpr, R: tl.constexpr, NB: tl.constexpr,
                 NBP: tl.constexpr, BASIS: tl.constexpr, PER_CHANNEL: tl.constexpr, HAS_SLOPE: tl.constexpr,
                 F64: tl.constexpr):
    """The statistics' shift per table, (1, BC, 1): s at the table's first element (element (0, c, 0)
    of the view), 0 where that is not finite (``repact.ops.batchnorm``)."""
    xv = tl.load(x + c.to(tl.int64) * I, mask=cmask, other=0.0)
    xv = xv.to(tl.float64) if F64 else xv.to(tl.float32)
    s = _s(xv[None, :, None], knots, c, cmask, w, sl, base, part, K, R, NB, NBP, BASIS, PER_CHANNEL, HAS_SLOPE)[0]
    return tl.where(s - s == 0, s, 0.0)  # NaN and +-inf give NaN


@triton.jit
def _invstd(var, F64: tl.constexpr, EPS: tl.constexpr):
    """1 / sqrt(var + EPS), correctly rounded square root."""
    if F64:
        out = 1.0 / tl.sqrt(var.to(tl.float64) + EPS)
    else:
        out = 1.0 / tl.sqrt_rn(var.to(tl.float32) + EPS)
    return out


@triton.jit
def _lerp(a, b, f):
    """torch.lerp's two forms, so that a factor of 1 lands exactly on b."""
    return tl.where(f < 0.5, a + f * (b - a), b - (b - a) * (1.0 - f))


@triton.jit
def _reduce_row(partials, row, ROWS: tl.constexpr, P, C, c, cmask, BP: tl.constexpr, BCF: tl.constexpr):
    """sum over p of partials[p, row, c] for channels c, in float64, (BCF,)."""
    acc = tl.zeros((BP, BCF), tl.float64)
    for p0 in range(0, P, BP):
        p = p0 + tl.arange(0, BP)
        acc += tl.load(partials + (p[:, None].to(tl.int64) * ROWS + row) * C + c[None, :],
                       mask=(p < P)[:, None] & cmask[None, :], other=0.0).to(tl.float64)
    return tl.sum(acc, axis=0)


@triton.jit(do_not_specialize=["I"])
def stats_kernel(x, w_raw, slope, base, part, knots, partials, O, C, I,
                 K: tl.constexpr, R: tl.constexpr, NB: tl.constexpr, NBP: tl.constexpr, BASIS: tl.constexpr,
                 PER_CHANNEL: tl.constexpr, HAS_SLOPE: tl.constexpr, SOFTMAX: tl.constexpr, F64: tl.constexpr,
                 BO: tl.constexpr, BC: tl.constexpr, BI: tl.constexpr):
    """Per tile and channel, sum(s - k) and sum((s - k)^2) with k = ``_first_value``. partials (P, 2, C)."""
    offs, mask, _o, c, p = _tile(tl.program_id(0), O, C, I, BO, BC, BI)
    cmask = c < C
    w, sl = _weights(w_raw, slope, c, cmask, NB, NBP, PER_CHANNEL, HAS_SLOPE, SOFTMAX, F64)
    xv = _load_x(x, offs, mask, F64)
    s = _s(xv, knots, c, cmask, w, sl, base, part, K, R, NB, NBP, BASIS, PER_CHANNEL, HAS_SLOPE)[0]
    k = _first_value(x, knots, c, cmask, I, w, sl, base, part, K, R, NB, NBP, BASIS, PER_CHANNEL, HAS_SLOPE, F64)
    d = tl.where(mask, s - k, 0.0)
    out = partials + p * 2 * C + c
    tl.store(out, _tile_sum(d), mask=cmask)
    tl.store(out + C, _tile_sum(d * d), mask=cmask)


@triton.jit(do_not_specialize=["P", "I", "count"])
def stats_finalize_kernel(x, w_raw, slope, base, part, knots, partials, P, mean, var, run_mean, run_var, nbt, C, I,
                          count, K: tl.constexpr, R: tl.constexpr, NB: tl.constexpr, NBP: tl.constexpr,
                          BASIS: tl.constexpr, PER_CHANNEL: tl.constexpr, HAS_SLOPE: tl.constexpr,
                          SOFTMAX: tl.constexpr, F64: tl.constexpr, RUNNING: tl.constexpr, CUMULATIVE: tl.constexpr,
                          MOMENTUM: tl.constexpr, BCF: tl.constexpr, BP: tl.constexpr):
    """mean and (biased) var per table from ``stats_kernel``'s partials over ``count`` values each,
    in float64; with RUNNING also the running statistics, as ``repact.ops.batchnorm.update_running``
    (the factor MOMENTUM, or 1 / (num_batches_tracked + 1) with CUMULATIVE; the unbiased var)."""
    c = tl.program_id(0) * BCF + tl.arange(0, BCF)
    cmask = c < C
    w, sl = _weights(w_raw, slope, c, cmask, NB, NBP, PER_CHANNEL, HAS_SLOPE, SOFTMAX, F64)
    k = _first_value(x, knots, c, cmask, I, w, sl, base, part, K, R, NB, NBP, BASIS, PER_CHANNEL, HAS_SLOPE, F64)
    k = tl.sum(tl.sum(k, axis=2), axis=0).to(tl.float64)
    n = count.to(tl.float64)
    d = _reduce_row(partials, 0, 2, P, C, c, cmask, BP, BCF) / n
    m = k + d
    v = tl.maximum(_reduce_row(partials, 1, 2, P, C, c, cmask, BP, BCF) / n - d * d, 0.0)
    tl.store(mean + c, m.to(mean.dtype.element_ty), mask=cmask)
    tl.store(var + c, v.to(var.dtype.element_ty), mask=cmask)
    if RUNNING:
        f = tl.zeros((BCF,), tl.float64)
        if CUMULATIVE:
            f += 1.0 / (tl.load(nbt) + 1).to(tl.float64)
        else:
            f += MOMENTUM
        ub = v * (n / tl.maximum(n - 1.0, 1.0))
        rm = _lerp(tl.load(run_mean + c, mask=cmask, other=0.0).to(tl.float64), m, f)
        rv = _lerp(tl.load(run_var + c, mask=cmask, other=0.0).to(tl.float64), ub, f)
        tl.store(run_mean + c, rm.to(run_mean.dtype.element_ty), mask=cmask)
        tl.store(run_var + c, rv.to(run_var.dtype.element_ty), mask=cmask)


@triton.jit(do_not_specialize=["I"])
def apply_kernel(x, y, w_raw, slope, base, part, knots, mean, var, gamma, beta, nbt, O, C, I,
                 K: tl.constexpr, R: tl.constexpr, NB: tl.constexpr, NBP: tl.constexpr, BASIS: tl.constexpr,
                 PER_CHANNEL: tl.constexpr, HAS_SLOPE: tl.constexpr, SOFTMAX: tl.constexpr, BN: tl.constexpr,
                 EPS: tl.constexpr, BUMP: tl.constexpr, F64: tl.constexpr,
                 BO: tl.constexpr, BC: tl.constexpr, BI: tl.constexpr):
    """y = s(x), or with BN gamma (s(x) - mean) / sqrt(var + EPS) + beta; BUMP: program 0 adds 1
    to num_batches_tracked (after ``stats_finalize_kernel`` read it)."""
    pid = tl.program_id(0)
    offs, mask, _o, c, _ = _tile(pid, O, C, I, BO, BC, BI)
    cmask = c < C
    w, sl = _weights(w_raw, slope, c, cmask, NB, NBP, PER_CHANNEL, HAS_SLOPE, SOFTMAX, F64)
    xv = _load_x(x, offs, mask, F64)
    s = _s(xv, knots, c, cmask, w, sl, base, part, K, R, NB, NBP, BASIS, PER_CHANNEL, HAS_SLOPE)[0]
    if BN:
        scale = _channel_values(gamma, c, cmask, PER_CHANNEL) * _invstd(_channel_values(var, c, cmask, PER_CHANNEL),
                                                                        F64, EPS)
        s = (s - _channel_values(mean, c, cmask, PER_CHANNEL)) * scale + _channel_values(beta, c, cmask, PER_CHANNEL)
    tl.store(y + offs, s.to(y.dtype.element_ty), mask=mask)
    if BUMP:
        if pid == 0:
            tl.store(nbt, tl.load(nbt) + 1)


@triton.jit(do_not_specialize=["I"])
def backward_kernel(x, g, gx, w_raw, slope, base, part, knots, mean, var, gamma, aff, partials, O, C, I,
                    K: tl.constexpr, R: tl.constexpr, NB: tl.constexpr, NBP: tl.constexpr, BASIS: tl.constexpr,
                    PER_CHANNEL: tl.constexpr, HAS_SLOPE: tl.constexpr, SOFTMAX: tl.constexpr, MODE: tl.constexpr,
                    EPS: tl.constexpr, NEED_X: tl.constexpr, NEED_SUMS: tl.constexpr, F64: tl.constexpr,
                    BO: tl.constexpr, BC: tl.constexpr, BI: tl.constexpr):
    """The input's gradient gx = h s'(x) and per tile and channel the sums the parameters' need,
    with phi_r = ds/d(row r) (``_phi``) and d = s - mean:

    * MODE 0 (RepAct-I/II): h = g; sums h phi_r (R rows);
    * MODE 1 (constant statistics): h = alpha g, alpha = gamma / sqrt(var + EPS); sums g, g d,
      h phi_r (2 + R);
    * MODE 2 (batch statistics, first pass; no gx): sums g, g d and per row g phi_r, phi_r,
      d phi_r (2 + 3 R);
    * MODE 3 (batch statistics, second pass; no sums): h = alpha g + c1 + c2 d with aff (3, C) =
      (alpha, c1, c2) from ``grad_kernel``.

    MODE 2's partials start after 3 C values: the buffer holds aff (3, C) first (``grad_kernel``).
    """
    offs, mask, _o, c, p = _tile(tl.program_id(0), O, C, I, BO, BC, BI)
    cmask = c < C
    w, sl = _weights(w_raw, slope, c, cmask, NB, NBP, PER_CHANNEL, HAS_SLOPE, SOFTMAX, F64)
    xv = _load_x(x, offs, mask, F64)
    gv = _load_x(g, offs, mask, F64)
    s, ds, u, seg = _s(xv, knots, c, cmask, w, sl, base, part, K, R, NB, NBP, BASIS, PER_CHANNEL, HAS_SLOPE)
    if MODE == 0:
        h = gv
    elif MODE == 1:
        h = gv * (_channel_values(gamma, c, cmask, PER_CHANNEL)
                  * _invstd(_channel_values(var, c, cmask, PER_CHANNEL), F64, EPS)).to(gv.dtype)
    elif MODE == 3:
        h = (_channel_values(aff, c, cmask, PER_CHANNEL) * gv + _channel_values(aff + C, c, cmask, PER_CHANNEL)
             + _channel_values(aff + 2 * C, c, cmask, PER_CHANNEL) * (s - _channel_values(mean, c, cmask, PER_CHANNEL)))
    else:
        h = gv
    if NEED_X:
        tl.store(gx + offs, (h * ds).to(gx.dtype.element_ty), mask=mask)
    if NEED_SUMS:
        if MODE == 0:
            out = partials + p * R * C + c
            for r in tl.static_range(R):
                tl.store(out + r * C, _tile_sum(h * _phi(xv, u, seg, r, BASIS)), mask=cmask)
        else:
            d = tl.where(mask, s - _channel_values(mean, c, cmask, PER_CHANNEL), 0.0)
            if MODE == 1:
                out = partials + p * (2 + R) * C + c
            else:  # (after grad_kernel's aff (3, C), in one buffer)
                out = partials + (3 + p * (2 + 3 * R)) * C + c
            tl.store(out, _tile_sum(gv), mask=cmask)
            tl.store(out + C, _tile_sum(gv * d), mask=cmask)
            for r in tl.static_range(R):
                phi = _phi(xv, u, seg, r, BASIS)
                if MODE == 1:
                    tl.store(out + (2 + r) * C, _tile_sum(h * phi), mask=cmask)
                else:
                    tl.store(out + (2 + 3 * r) * C, _tile_sum(gv * phi), mask=cmask)
                    tl.store(out + (3 + 3 * r) * C, _tile_sum(tl.where(mask, phi, 0.0)), mask=cmask)
                    tl.store(out + (4 + 3 * r) * C, _tile_sum(d * phi), mask=cmask)


@triton.jit(do_not_specialize=["P", "count"])
def grad_kernel(partials, P, totals, w_raw, slope, base, part, gamma, var, aff, gw, gsl, ggm, gbt, C, count,
                R: tl.constexpr, ROWS: tl.constexpr, NB: tl.constexpr, NBP: tl.constexpr, PER_CHANNEL: tl.constexpr,
                HAS_SLOPE: tl.constexpr, SOFTMAX: tl.constexpr, MODE: tl.constexpr, GIVEN: tl.constexpr,
                EPS: tl.constexpr, NEED_W: tl.constexpr, BCF: tl.constexpr, BP: tl.constexpr):
    """The parameters' gradients from ``backward_kernel``'s partials (MODE 0, 1 or 2; ROWS per
    tile: R, 2 + R, 2 + 3 R), in float64:

    * the coefficient rows' gradients G_r: the sums h phi_r, or for MODE 2
      alpha sum g phi_r + c1 sum phi_r + c2 sum d phi_r, the BatchNorm's backward
      dL/ds = alpha g + c1 + c2 d with alpha = gamma / sqrt(var + eps),
      c1 = -alpha sum g / count, c2 = -alpha sum g d / ((var + eps) count);
    * with NEED_W, the branch weights' (gw (Cc, NB): sum_r G_r (base[b, r] + slope part[b, r]),
      through softmax's Jacobian for RepAct-II) and the slope's (gsl (Cc,): sum_b w_b sum_r G_r part[b, r]);
    * MODE 1, 2: gamma's (sum g d / sqrt(var + eps)) and beta's (sum g), and for MODE 2 aff
      (3, C) = (alpha, c1, c2) for the second pass. GIVEN: sum g and sum g d over every process
      of a group come in totals (2, C), with count theirs; gamma's and beta's stay this process's.
    """
    c = tl.program_id(0) * BCF + tl.arange(0, BCF)
    cmask = c < C
    if MODE == 2:  # one buffer (given as both): aff (3, C), then the partials
        partials = aff + 3 * C
    alpha = tl.zeros((BCF,), tl.float64)
    c1 = tl.zeros((BCF,), tl.float64)
    c2 = tl.zeros((BCF,), tl.float64)
    if MODE != 0:
        sg = _reduce_row(partials, 0, ROWS, P, C, c, cmask, BP, BCF)
        sgd = _reduce_row(partials, 1, ROWS, P, C, c, cmask, BP, BCF)
        inv = 1.0 / tl.sqrt(tl.load(var + c, mask=cmask, other=1.0).to(tl.float64) + EPS)
        tl.store(ggm + c, (inv * sgd).to(ggm.dtype.element_ty), mask=cmask)
        tl.store(gbt + c, sg.to(gbt.dtype.element_ty), mask=cmask)
        if MODE == 2:
            if GIVEN:
                sg = tl.load(totals + c, mask=cmask, other=0.0).to(tl.float64)
                sgd = tl.load(totals + C + c, mask=cmask, other=0.0).to(tl.float64)
            n = count.to(tl.float64)
            alpha = tl.load(gamma + c, mask=cmask, other=0.0).to(tl.float64) * inv
            c1 = -alpha * sg / n
            c2 = -alpha * inv * inv * sgd / n
            tl.store(aff + c, alpha.to(aff.dtype.element_ty), mask=cmask)
            tl.store(aff + C + c, c1.to(aff.dtype.element_ty), mask=cmask)
            tl.store(aff + 2 * C + c, c2.to(aff.dtype.element_ty), mask=cmask)
    if NEED_W:
        w, sl = _weights(w_raw, slope, c, cmask, NB, NBP, PER_CHANNEL, HAS_SLOPE, SOFTMAX, True)
        b = tl.arange(0, NBP)
        bm = b < NB
        gb = tl.zeros((BCF, NBP), tl.float64)
        gp = tl.zeros((BCF, NBP), tl.float64)
        for r in tl.static_range(R):
            if MODE == 0:
                gr = _reduce_row(partials, r, ROWS, P, C, c, cmask, BP, BCF)
            elif MODE == 1:
                gr = _reduce_row(partials, 2 + r, ROWS, P, C, c, cmask, BP, BCF)
            else:
                gr = (alpha * _reduce_row(partials, 2 + 3 * r, ROWS, P, C, c, cmask, BP, BCF)
                      + c1 * _reduce_row(partials, 3 + 3 * r, ROWS, P, C, c, cmask, BP, BCF)
                      + c2 * _reduce_row(partials, 4 + 3 * r, ROWS, P, C, c, cmask, BP, BCF))
            gb += gr[:, None] * tl.load(base + b * R + r, mask=bm, other=0.0).to(tl.float64)[None, :]
            if HAS_SLOPE:
                gp += gr[:, None] * tl.load(part + b * R + r, mask=bm, other=0.0).to(tl.float64)[None, :]
        gwv = gb + sl[:, None] * gp
        if HAS_SLOPE:
            tl.store(gsl + c, tl.sum(w * gp, axis=1).to(gsl.dtype.element_ty), mask=cmask)
        if SOFTMAX:
            gwv = w * (gwv - tl.sum(gwv * w, axis=1)[:, None])
        if PER_CHANNEL:
            cc = c
        else:
            cc = c * 0
        tl.store(gw + cc[:, None] * NB + b[None, :], gwv.to(gw.dtype.element_ty), mask=cmask[:, None] & bm[None, :])
