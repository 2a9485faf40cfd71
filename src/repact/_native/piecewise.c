/*
 * repact native CPU kernels for the piecewise quadratic s(x) = a0 + x * (a1 + a2 * x), where
 * (a0, a1, a2) are the coefficients of the segment x falls in: segment s holds
 * knots[s-1] <= x < knots[s] (K sorted knots, S = K + 1 segments; NaN falls in segment 0).
 *
 * Layout. A tensor is seen as (outer, C, inner) in memory order. Coefficients are "planar":
 * coef[(j * S + s) * Cc + c] multiplies x^j on segment s for channel c, Cc in {1, C}. With
 * Cc == 1 the caller passes outer = 1, C = 1, inner = numel (the tensor is one block). Blocks
 * (inner > 1) are processed with SIMD along the block; rows (inner == 1, channels last) with
 * SIMD along the channels.
 *
 * Kernels (each reads its inputs only and writes fresh outputs; sums are kept in double):
 *   forward   y = s(x)   (basis_forward: the same in RepAct's own basis, see hsb_*)
 *   stats     per channel: sum s(x), sum s(x)^2                       (RepAct-III batch statistics)
 *             with g: per channel sum g, sum g s(x)              (RepAct-III backward, first pass)
 *   backward  h = g                   (aff == NULL)
 *             h = alpha g + (beta s(x) + delta)   (aff: the gradient of a BatchNorm after s;
 *             RepAct-III passes s - mean and adds the small terms first: see train_backward)
 *             gx = h * s'(x);  gcoef[j][s][c] = sum over segment s of h * x^j
 *   train_forward / train_backward / train_sums   RepAct's whole training op (table from the
 *             branch weights, BatchNorm statistics and fold, the passes above, the table's VJP),
 *             see below; for the paper's branch sets the same passes in RepAct's own four-number
 *             basis (hsb_*)
 *
 * Built by repact/_native/__init__.py with -O3 (and -march=native where the compiler takes it)
 * and OpenMP; the library shares the OpenMP runtime that PyTorch has already loaded. The entry
 * points' prototypes come from the signature table there (a generated header, -include'd, so the
 * compiler checks every definition against it), and so does REPACT_NATIVE_ABI.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <omp.h>
#include "simd.h"

#define MAXK 8
/* elements between flushes of float partial sums into double: 32 per float lane (a float sum of
 * m terms is off by ~sqrt(m) roundings; at 128 per lane RepAct-III's branch-weight gradients came
 * out 2-4x further from float64 than the float32 reference's) */
#define CHUNK (32 * (VBYTES / 4))

/* threads: one per 32768 elements */
#define GRAIN 32768

/* ------------------------------------------------------------------------------------------ */
/* Kernels for one knot count K (a compile-time constant so loops unroll and vectorize)        */
/* ------------------------------------------------------------------------------------------ */

/* channel c's table (planar coef[(j * S + s) * Cc + c]) and the knots, as scalars c0, c1, c2, tk
 * and as vectors c0v, c1v, c2v, tv (needs zero, coef, t, S, Cc, c in scope) */
#define LOAD_TABLE(T, VT, K)                                                                     \
    T c0[K + 1], c1[K + 1], c2[K + 1], tk[K + 1];                                                   \
    VT c0v[K + 1], c1v[K + 1], c2v[K + 1], tv[K + 1];                                               \
    for (int s = 0; s <= K; ++s) {                                                                  \
        c0[s] = coef[(0 * S + s) * Cc + c];                                                         \
        c1[s] = coef[(1 * S + s) * Cc + c];                                                         \
        c2[s] = coef[(2 * S + s) * Cc + c];                                                         \
        c0v[s] = zero + c0[s]; c1v[s] = zero + c1[s]; c2v[s] = zero + c2[s];                        \
    }                                                                                               \
    for (int s = 0; s < K; ++s) { tk[s] = t[s]; tv[s] = zero + t[s]; }

/* OUT = s(V) for one vector: the segment's coefficients by one select per knot, then
 * a0 + v (a1 + a2 v), with a2 v taken as 0 where a2 == 0 (linear segments stay +-inf at +-inf) */
#define PQ_VEC(VT, VI, K, V, OUT)                                                                 \
    {                                                                                            \
        VT a0 = c0v[0], a1 = c1v[0], a2 = c2v[0];                                                \
        for (int k = 0; k < K; ++k) {                                                            \
            VI mk = (V) >= tv[k];                                                                \
            a0 = VSEL(VT, VI, mk, c0v[k + 1], a0);                                               \
            a1 = VSEL(VT, VI, mk, c1v[k + 1], a1);                                               \
            a2 = VSEL(VT, VI, mk, c2v[k + 1], a2);                                               \
        }                                                                                        \
        OUT = a0 + (V) * (a1 + (VT)((VI)(a2 * (V)) & (a2 != zero)));                             \
    }

/* a row kernel's locals: knots tk and the tables q0, q1, q2 of coef (3, S, C) of C channels */
#define ROW_TABLES(T, K)                                                                         \
    T tk[K + 1];                                                                                 \
    for (int s = 0; s < K; ++s) tk[s] = t[s];                                                    \
    const T* restrict q0 = coef;                                                                 \
    const T* restrict q1 = coef + S * C;                                                         \
    const T* restrict q2 = coef + 2 * S * C;

/* the same for one element: segment k's coefficients at P0[k * STRIDE], P1[...], P2[...], knots tk */
#define PQ_SCALAR_AT(T, K, V, OUT, P0, P1, P2, STRIDE)                                            \
    {                                                                                             \
        T a0 = (P0)[0], a1 = (P1)[0], a2 = (P2)[0];                                               \
        for (int k = 0; k < K; ++k) {                                                             \
            int m = (V) >= tk[k];                                                                 \
            a0 = m ? (P0)[(k + 1) * (STRIDE)] : a0;                                               \
            a1 = m ? (P1)[(k + 1) * (STRIDE)] : a1;                                               \
            a2 = m ? (P2)[(k + 1) * (STRIDE)] : a2;                                               \
        }                                                                                         \
        T q_ = (a2 == (T)0) ? (T)0 : a2 * (V);                                                    \
        OUT = a0 + (V) * (a1 + q_);                                                               \
    }

/* from the scalar tables c0, c1, c2 of one channel */
#define PQ_SCALAR(T, K, V, OUT) PQ_SCALAR_AT(T, K, V, OUT, c0, c1, c2, 1)

/* the sums passes' accumulation: s1 += g, s2 += g s (HAS_G; LOAD_G loads g) or s1 += s, s2 += s^2 */
#define SUMS_ADD(VT, HAS_G, LOAD_G, SV)                                                           \
    if (HAS_G) {                                                                                 \
        VT g;                                                                                    \
        LOAD_G;                                                                                  \
        s1 += g;                                                                                 \
        s2 += g * (SV);                                                                          \
    } else {                                                                                     \
        s1 += (SV);                                                                              \
        s2 += (SV) * (SV);                                                                       \
    }

/* the end of a sums pass's chunk of M elements: every CHUNK elements, the float lanes s1, s2 go
 * into their double sums d1, d2 (keeps float partial sums short) */
#define SUMS_CHUNK_END(M)                                                                        \
    since += (M);                                                                                \
    if (since >= CHUNK) {                                                                        \
        for (int l_ = 0; l_ < L; ++l_) { d1 += s1[l_]; d2 += s2[l_]; }                           \
        s1 = zero; s2 = zero; since = 0;                                                         \
    }

/* One vector of the backward, shared by its kernels: from v (and g) the knot masks mk[], the
 * slope-side coefficients a1, a2 with nz = (a2 != 0), and g replaced by the BatchNorm affine of g
 * and s(v) when aff (then MASK_TAIL, a statement, may zero lanes past the end); BWD_VEC_GX is
 * the input gradient g s'(v). */
#define BWD_VEC_SELECT(VT, VI, K, MASK_TAIL)                                                      \
    VI mk[K + 1];                                                                                \
    for (int k = 0; k < K; ++k) mk[k] = v >= tv[k];                                              \
    VT a1 = c1v[0], a2 = c2v[0];                                                                 \
    for (int k = 0; k < K; ++k) {                                                                \
        a1 = VSEL(VT, VI, mk[k], c1v[k + 1], a1);                                                \
        a2 = VSEL(VT, VI, mk[k], c2v[k + 1], a2);                                                \
    }                                                                                            \
    const VI nz = a2 != zero;                                                                    \
    if (aff) {                                                                                   \
        VT a0 = c0v[0];                                                                          \
        for (int k = 0; k < K; ++k) a0 = VSEL(VT, VI, mk[k], c0v[k + 1], a0);                    \
        VT s = a0 + v * (a1 + (VT)((VI)(a2 * v) & nz));                                          \
        g = alv * g + (bev * s + dev);                                                           \
        MASK_TAIL                                                                                \
    }
#define BWD_VEC_GX(VT, VI) (g * (a1 + (VT)((VI)((a2 + a2) * v) & nz)))

#define DEFINE_SUMS_BLOCKS(T, SUF, K, VT, VI)                                                   \
/* sum s and sum s^2 (gb == NULL), or sum g and sum g s (RepAct-III's backward), of nblk blocks  \
 * (n elements each, bs apart) into out[0], out[Cc] */                                            \
static void stats_block_##SUF##_k##K(const T* restrict xb, const T* restrict gb, int64_t nblk,\
                                     int64_t bs, int64_t n,                                         \
                                     const T* restrict t, const T* restrict coef, int64_t S,        \
                                     int64_t Cc, int64_t c, double* restrict out) {                 \
    enum { L = VBYTES / sizeof(T) };                                                                \
    const VT zero = {0};                                                                            \
    LOAD_TABLE(T, VT, K)                                                                            \
    VT s1 = zero, s2 = zero;                                                                        \
    double d1 = 0.0, d2 = 0.0;                                                                      \
    int64_t since = 0;                                                                              \
    for (int64_t b = 0; b < nblk; ++b)                                                              \
    for (int64_t i0 = 0; i0 < n; i0 += CHUNK) {                                                     \
        const int64_t m = (n - i0 < CHUNK) ? n - i0 : CHUNK;                                        \
        const T* restrict xc = xb + b * bs + i0;                                                    \
        const T* restrict gc = gb ? gb + b * bs + i0 : NULL;                                        \
        int64_t i = 0;                                                                              \
        for (; i + L <= m; i += L) {                                                                \
            VT v;                                                                                   \
            memcpy(&v, xc + i, sizeof v);                                                           \
            VT s;                                                                                   \
            PQ_VEC(VT, VI, K, v, s)                                                                 \
            SUMS_ADD(VT, gc, memcpy(&g, gc + i, sizeof g), s)                                       \
        }                                                                                           \
        for (; i < m; ++i) {                                                                        \
            T v = xc[i];                                                                            \
            int seg = 0;                                                                            \
            for (int k = 0; k < K; ++k) seg += (v >= tk[k]);                                        \
            T q = (c2[seg] == (T)0) ? (T)0 : c2[seg] * v;                                           \
            double s = (double)(c0[seg] + v * (c1[seg] + q));                                       \
            const double w = gc ? (double)gc[i] : s;                                                \
            d1 += w;                                                                                \
            d2 += w * s;                                                                            \
        }                                                                                           \
        SUMS_CHUNK_END(m)                                                                           \
    }                                                                                               \
    for (int l = 0; l < L; ++l) { d1 += s1[l]; d2 += s2[l]; }                                       \
    out[0] += d1;                                                                                   \
    out[Cc] += d2;                                                                                  \
}                                                                                                   \
                                                                                                    \
/* One pass per chunk: h (g, or the affine of g and s), gx = h s'(x), and the moment sums of      \
 * h, h x, h x^2 over all elements and over each {x >= t[k]}; a segment's sums are differences     \
 * of those (segment s = {x >= t[s-1]} minus {x >= t[s]}), so one compare per knot suffices.       \
 * nblk blocks of one channel, sums added to acc at the end. */                                    \
static void bwd_block_##SUF##_k##K(const T* restrict xb, const T* restrict gb, T* restrict gxb,\
                                   double* restrict acc, const double* restrict aff,                \
                                   int64_t nblk, int64_t bs, int64_t n, const T* restrict t,        \
                                   const T* restrict coef, int64_t S, int64_t Cc, int64_t c) {      \
    enum { L = VBYTES / sizeof(T) };                                                                \
    const VT zero = {0};                                                                            \
    LOAD_TABLE(T, VT, K)                                                                            \
    const T al = aff ? (T)aff[c] : (T)1, be = aff ? (T)aff[Cc + c] : (T)0;                          \
    const T de = aff ? (T)aff[2 * Cc + c] : (T)0;                                                   \
    const VT alv = zero + al, bev = zero + be, dev = zero + de;                                     \
    VT all0 = zero, all1 = zero, all2 = zero;                                                       \
    VT ge0[K + 1], ge1[K + 1], ge2[K + 1];                                                          \
    for (int k = 0; k <= K; ++k) { ge0[k] = zero; ge1[k] = zero; ge2[k] = zero; }                   \
    double sa[3] = {0, 0, 0}, sg[K + 1][3];                                                         \
    for (int k = 0; k <= K; ++k) sg[k][0] = sg[k][1] = sg[k][2] = 0.0;                              \
    int64_t since = 0;                                                                              \
    for (int64_t b = 0; b < nblk; ++b)                                                              \
    for (int64_t i0 = 0; i0 < n; i0 += CHUNK) {                                                     \
        const int64_t m = (n - i0 < CHUNK) ? n - i0 : CHUNK;                                        \
        const T* restrict xc = xb + b * bs + i0;                                                    \
        const T* restrict gc = gb + b * bs + i0;                                                    \
        T* restrict gxc = gxb ? gxb + b * bs + i0 : NULL;                                           \
        int64_t i = 0;                                                                              \
        for (; i + L <= m; i += L) {                                                                \
            VT v, g;                                                                                \
            memcpy(&v, xc + i, sizeof v);                                                           \
            memcpy(&g, gc + i, sizeof g);                                                           \
            BWD_VEC_SELECT(VT, VI, K, )                                                             \
            if (gxc) {                                                                              \
                VT out = BWD_VEC_GX(VT, VI);                                                        \
                memcpy(gxc + i, &out, sizeof out);                                                  \
            }                                                                                       \
            if (acc) {                                                                        \
                VT g1 = g * v, g2 = g1 * v;                                                         \
                all0 += g; all1 += g1; all2 += g2;                                                  \
                for (int k = 0; k < K; ++k) {                                                       \
                    ge0[k] += (VT)((VI)g & mk[k]);                                                  \
                    ge1[k] += (VT)((VI)g1 & mk[k]);                                                 \
                    ge2[k] += (VT)((VI)g2 & mk[k]);                                                 \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
        for (; i < m; ++i) {                                                                        \
            T v = xc[i], g = gc[i];                                                                 \
            int seg = 0;                                                                            \
            for (int k = 0; k < K; ++k) seg += (v >= tk[k]);                                        \
            if (aff) {                                                                              \
                T q = (c2[seg] == (T)0) ? (T)0 : c2[seg] * v;                                       \
                g = al * g + (be * (c0[seg] + v * (c1[seg] + q)) + de);                             \
            }                                                                                       \
            if (gxc) {                                                                              \
                T q = (c2[seg] == (T)0) ? (T)0 : (c2[seg] + c2[seg]) * v;                           \
                gxc[i] = g * (c1[seg] + q);                                                         \
            }                                                                                       \
            if (acc) {                                                                        \
                double dv = (double)v, dg = (double)g;                                              \
                sa[0] += dg; sa[1] += dg * dv; sa[2] += dg * dv * dv;                               \
                const double dg1 = dg * dv, dg2 = dg1 * dv;                                         \
                for (int k = 0; k < K; ++k) { /* branch-free: seg is data-dependent */              \
                    const double on = (double)(v >= tk[k]);                                         \
                    sg[k][0] += on * dg; sg[k][1] += on * dg1; sg[k][2] += on * dg2;                \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
        since += m;                                                                                 \
        if (acc && (since >= CHUNK || (b == nblk - 1 && i0 + m >= n))) {             \
            /* flush the float lanes into double sums (keeps float partial sums short) */           \
            for (int l = 0; l < L; ++l) {                                                           \
                sa[0] += all0[l]; sa[1] += all1[l]; sa[2] += all2[l];                               \
                for (int k = 0; k < K; ++k) {                                                       \
                    sg[k][0] += ge0[k][l]; sg[k][1] += ge1[k][l]; sg[k][2] += ge2[k][l];            \
                }                                                                                   \
            }                                                                                       \
            all0 = zero; all1 = zero; all2 = zero;                                                  \
            for (int k = 0; k <= K; ++k) { ge0[k] = zero; ge1[k] = zero; ge2[k] = zero; }           \
            since = 0;                                                                              \
        }                                                                                           \
    }                                                                                               \
    if (acc) {                                                                                      \
        for (int s = 0; s <= K; ++s)                                                                \
            for (int j = 0; j < 3; ++j) {                                                           \
                double above = (s == 0) ? sa[j] : sg[s - 1][j];                                     \
                double beyond = (s == K) ? 0.0 : sg[s][j];                                          \
                acc[(j * S + s) * Cc + c] += above - beyond;                                        \
            }                                                                                       \
    }                                                                                               \
}

#define DEFINE_KERNELS(T, SUF, K, VT, VI)                                                        \
                                                                                                 \
/* forward over a run of n elements of channel c: a run of n >= L elements ends with a full      \
 * vector that overlaps the one before it (those lanes are written twice with the same values),   \
 * so there is no scalar tail; shorter runs go element by element */                             \
static void fwd_block_##SUF##_k##K(const T* restrict xp, T* restrict yp, int64_t n,              \
                                   const T* restrict t, const T* restrict coef, int64_t S,       \
                                   int64_t Cc, int64_t c) {                                      \
    enum { L = VBYTES / sizeof(T) };                                                             \
    const VT zero = {0};                                                                         \
    LOAD_TABLE(T, VT, K)                                                                         \
    if (n < L) {                                                                                 \
        for (int64_t i = 0; i < n; ++i) {                                                        \
            T v = xp[i];                                                                         \
            PQ_SCALAR(T, K, v, yp[i])                                                            \
        }                                                                                        \
        return;                                                                                  \
    }                                                                                            \
    for (int64_t i = 0;; i += L) {                                                               \
        if (i + L > n) i = n - L;                                                                \
        VT v, out;                                                                               \
        memcpy(&v, xp + i, sizeof v);                                                            \
        PQ_VEC(VT, VI, K, v, out)                                                                \
        memcpy(yp + i, &out, sizeof out);                                                        \
        if (i + L >= n) break;                                                                   \
    }                                                                                            \
}                                                                                                \
static void fwd_row_##SUF##_k##K(const T* restrict xp, T* restrict yp, int64_t C,                \
                                 const T* restrict t, const T* restrict coef, int64_t S) {       \
    ROW_TABLES(T, K)                                                                             \
    for (int64_t c = 0; c < C; ++c) {                                                            \
        T v = xp[c];                                                                             \
        PQ_SCALAR_AT(T, K, v, yp[c], q0 + c, q1 + c, q2 + c, C)                                  \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
/* the block kernels of the sums passes, both walks (see FOR_THREAD_SHARE) */                    \
DEFINE_SUMS_BLOCKS(T, SUF, K, VT, VI)                   \
                                                                                                    \
static void stats_row_##SUF##_k##K(const T* restrict xp, const T* restrict gp, int64_t C,        \
                                   const T* restrict t,                                          \
                                   const T* restrict coef, int64_t S, double* restrict out) {    \
    ROW_TABLES(T, K)                                                                             \
    for (int64_t c = 0; c < C; ++c) {                                                            \
        T v = xp[c], y;                                                                          \
        PQ_SCALAR_AT(T, K, v, y, q0 + c, q1 + c, q2 + c, C)                                      \
        double s = (double)y;                                                                    \
        const double w = gp ? (double)gp[c] : s;                                                 \
        out[c] += w;                                                                             \
        out[C + c] += w * s;                                                                     \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
static void bwd_row_##SUF##_k##K(const T* restrict xp, const T* restrict gp, T* restrict gxp,    \
                                 double* restrict acc, const double* restrict aff, int64_t C,    \
                                 const T* restrict t, const T* restrict coef, int64_t S) {       \
    ROW_TABLES(T, K)                                                                             \
    for (int64_t c = 0; c < C; ++c) {                                                            \
        T v = xp[c], g = gp[c];                                                                  \
        int seg = 0;                                                                             \
        for (int k = 0; k < K; ++k) seg += (v >= tk[k]);                                         \
        T a0 = q0[seg * C + c], a1 = q1[seg * C + c], a2 = q2[seg * C + c];                      \
        if (aff) {                                                                               \
            T q = (a2 == (T)0) ? (T)0 : a2 * v;                                                  \
            g = (T)aff[c] * g + ((T)aff[C + c] * (a0 + v * (a1 + q)) + (T)aff[2 * C + c]);       \
        }                                                                                        \
        if (gxp) {                                                                               \
            T q = (a2 == (T)0) ? (T)0 : (a2 + a2) * v;                                           \
            gxp[c] = g * (a1 + q);                                                               \
        }                                                                                        \
        if (acc) {                                                                               \
            double dv = (double)v, dg = (double)g;                                               \
            acc[(0 * S + seg) * C + c] += dg;                                                    \
            acc[(1 * S + seg) * C + c] += dg * dv;                                               \
            acc[(2 * S + seg) * C + c] += dg * dv * dv;                                          \
        }                                                                                        \
    }                                                                                            \
}

#define DEFINE_ALL_K(T, SUF, VT, VI)                                                             \
DEFINE_KERNELS(T, SUF, 0, VT, VI) DEFINE_KERNELS(T, SUF, 1, VT, VI)                              \
DEFINE_KERNELS(T, SUF, 2, VT, VI) DEFINE_KERNELS(T, SUF, 3, VT, VI)                              \
DEFINE_KERNELS(T, SUF, 4, VT, VI) DEFINE_KERNELS(T, SUF, 5, VT, VI)                              \
DEFINE_KERNELS(T, SUF, 6, VT, VI) DEFINE_KERNELS(T, SUF, 7, VT, VI)                              \
DEFINE_KERNELS(T, SUF, 8, VT, VI)

DEFINE_ALL_K(float, f32, vf32, vi32)
DEFINE_ALL_K(double, f64, vf64, vi64)

#define KSWITCH(NAME, SUF, ...)                                                                  \
    switch (K) {                                                                                 \
        case 0: NAME##_##SUF##_k0(__VA_ARGS__); break;                                           \
        case 1: NAME##_##SUF##_k1(__VA_ARGS__); break;                                           \
        case 2: NAME##_##SUF##_k2(__VA_ARGS__); break;                                           \
        case 3: NAME##_##SUF##_k3(__VA_ARGS__); break;                                           \
        case 4: NAME##_##SUF##_k4(__VA_ARGS__); break;                                           \
        case 5: NAME##_##SUF##_k5(__VA_ARGS__); break;                                           \
        case 6: NAME##_##SUF##_k6(__VA_ARGS__); break;                                           \
        case 7: NAME##_##SUF##_k7(__VA_ARGS__); break;                                           \
        default: NAME##_##SUF##_k8(__VA_ARGS__); break;                                          \
    }

/* Split the work over threads. Rows (inner == 1, channels last): row ranges, body ROW(o).
 * Otherwise blocks of contiguous elements of one channel, body BLOCK(i, nblk, bs, len, c): nblk
 * blocks of len elements from i, bs apart. The forward (SUMS = 0) walks the flat range in memory
 * order, one contiguous piece per thread, cut at block boundaries where the table changes per
 * channel; the sums kernels (statistics, backward) with per-channel tables give each thread a
 * range of channels, all of a channel's blocks at once, so that their sums stay thread-local. */
#define FOR_THREAD_SHARE(SUMS, ROW, BLOCK)                                                       \
    {                                                                                            \
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();                             \
        if (inner == 1 && C > 1) {                                                               \
            int64_t o0 = outer * tid / nth, o1 = outer * (tid + 1) / nth;                        \
            for (int64_t o = o0; o < o1; ++o) { ROW }                                            \
        } else if (Cc > 1 && SUMS) {                                                             \
            int64_t c0 = C * tid / nth, c1 = C * (tid + 1) / nth;                                \
            for (int64_t c = c0; c < c1; ++c) {                                                  \
                const int64_t i = c * inner, nblk = outer, bs = C * inner, len = inner;          \
                { BLOCK }                                                                        \
            }                                                                                    \
        } else {                                                                                 \
            int64_t start = total * tid / nth, end = total * (tid + 1) / nth;                    \
            int64_t pos = start;                                                                 \
            while (pos < end) {                                                                  \
                int64_t blk = (Cc == 1) ? 0 : pos / inner;                                       \
                int64_t len = (Cc == 1) ? end - pos : inner - (pos - blk * inner);               \
                if (len > end - pos) len = end - pos;                                            \
                const int64_t i = pos, nblk = 1, bs = 0, c = (Cc == 1) ? 0 : blk % C;            \
                { BLOCK }                                                                        \
                pos += len;                                                                      \
            }                                                                                    \
        }                                                                                        \
    }

/* ------------------------------------------------------------------------------------------ */
/* Entry points                                                                                 */
/* ------------------------------------------------------------------------------------------ */

#define DEFINE_ENTRIES(T, SUF)                                                                   \
int repact_pq_forward_##SUF(const T* x, T* y, int64_t outer, int64_t C, int64_t inner,           \
                            int64_t K, const T* t, const T* coef, int64_t Cc, int nthreads) {    \
    if (K < 0 || K > MAXK) return 1;                                                             \
    const int64_t S = K + 1;                                                                     \
    const int64_t total = outer * C * inner;                                                     \
    if (total == 0) return 0;                                                                    \
    int nt = threads_for(total, GRAIN, nthreads);                                                \
    int failed = 0;                                                                              \
    _Pragma("omp parallel num_threads(nt)")                                                      \
    FOR_THREAD_SHARE(0,                                                                          \
        KSWITCH(fwd_row, SUF, x + o * C, y + o * C, C, t, coef, S),                              \
        KSWITCH(fwd_block, SUF, x + i, y + i, len, t, coef, S, Cc, c); (void)nblk; (void)bs;)    \
    return failed ? 2 : 0;                                                                       \
}                                                                                                \
                                                                                                 \
static int pq_sums_##SUF(const T* x, const T* g, int64_t outer, int64_t C, int64_t inner,        \
                         int64_t K, const T* t, const T* coef, int64_t Cc, int nthreads,         \
                         double* out) {                                                          \
    if (K < 0 || K > MAXK) return 1;                                                             \
    const int64_t S = K + 1;                                                                     \
    const int64_t total = outer * C * inner;                                                     \
    memset(out, 0, sizeof(double) * 2 * Cc);                                                     \
    if (total == 0) return 0;                                                                    \
    int nt = threads_for(total, GRAIN, nthreads);                                                \
    int failed = 0;                                                                              \
    _Pragma("omp parallel num_threads(nt)")                                                      \
    {                                                                                            \
        double* local = (double*)calloc((size_t)(2 * Cc), sizeof(double));                       \
        if (!local) {                                                                            \
            _Pragma("omp atomic write")                                                          \
            failed = 1;                                                                          \
        } else {                                                                                 \
            FOR_THREAD_SHARE(1,                                                                  \
                KSWITCH(stats_row, SUF, x + o * C, g ? g + o * C : NULL, C, t, coef, S, local),  \
                KSWITCH(stats_block, SUF, x + i, g ? g + i : NULL, nblk, bs, len, t, coef, S,    \
                        Cc, c, local + c))                                                       \
            _Pragma("omp critical(repact_pq_reduce)")                                            \
            for (int64_t j = 0; j < 2 * Cc; ++j) out[j] += local[j];                             \
            free(local);                                                                         \
        }                                                                                        \
    }                                                                                            \
    return failed ? 2 : 0;                                                                       \
}                                                                                                \
                                                                                                 \
int repact_pq_backward_##SUF(const T* x, const T* g, T* gx, double* gcoef, const double* aff,    \
                             int64_t outer, int64_t C, int64_t inner, int64_t K, const T* t,     \
                             const T* coef, int64_t Cc, int nthreads) {                          \
    if (K < 0 || K > MAXK) return 1;                                                             \
    const int64_t S = K + 1;                                                                     \
    const int64_t total = outer * C * inner;                                                     \
    const int64_t nacc = 3 * S * Cc;                                                             \
    if (gcoef) memset(gcoef, 0, sizeof(double) * nacc);                                          \
    if (total == 0) return 0;                                                                    \
    int nt = threads_for(total, GRAIN, nthreads);                                                \
    int failed = 0;                                                                              \
    _Pragma("omp parallel num_threads(nt)")                                                      \
    {                                                                                            \
        double* local = gcoef ? (double*)calloc((size_t)nacc, sizeof(double)) : NULL;            \
        if (gcoef && !local) {                                                                   \
            _Pragma("omp atomic write")                                                          \
            failed = 1;                                                                          \
        } else {                                                                                 \
            FOR_THREAD_SHARE(gcoef != NULL,                                                      \
                KSWITCH(bwd_row, SUF, x + o * C, g + o * C, gx ? gx + o * C : NULL, local, aff,  \
                        C, t, coef, S),                                                          \
                KSWITCH(bwd_block, SUF, x + i, g + i, gx ? gx + i : NULL, local, aff, nblk, bs,   \
                        len, t, coef, S, Cc, c))                                                 \
            if (local) {                                                                         \
                _Pragma("omp critical(repact_pq_reduce)")                                        \
                for (int64_t j = 0; j < nacc; ++j) gcoef[j] += local[j];                         \
                free(local);                                                                     \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
    return failed ? 2 : 0;                                                                       \
}

DEFINE_ENTRIES(float, f32)
DEFINE_ENTRIES(double, f64)

/* ------------------------------------------------------------------------------------------ */
/* RepAct's own basis: the paper's branches need four numbers, not a table                     */
/* ------------------------------------------------------------------------------------------ */
/*
 * A weighted sum of identity, ReLU, PReLU, leaky ReLU, abs and HardSwish branches, and its
 * BatchNorm fold, is for every x
 *     s(x) = E + x (A + B [x >= 0] + Q u(x)),   u(x) = clamp(x + 3, 0, 6)
 * (the piece table on the knots -3, 0, 3 in four numbers; Q = D / 6 for D hardswish(x)). That
 * takes about half the vector operations of the table's select chain, and its coefficient
 * gradients are four sums instead of 3 + 3K:
 *     ds/dE = 1,  ds/dA = x,  ds/dB = x [x >= 0],  ds/dQ = x u(x),
 *     s'(x) = A + B [x >= 0] + Q u(x) + Q x [-3 <= x < 3]   (the right derivative at the knots,
 *                                                           as the table's segments take it).
 * Coefficients are planar, coef[j * Cc + c] for j = E, A, B, Q. The training entry points take
 * this basis for K == HSWISH_BASIS. Rows (inner == 1, channels last) go through the equivalent
 * table (hsb_to_table) and the table kernels.
 */
#define HSWISH_BASIS (-1)
#define NHSB 4

/* u = u(V) and the slope T_ = A + B [V >= 0] + Q u, and the mask pos_ = V >= 0, for one vector
 * (needs zero, three, six, av, bv, qv in scope) */
#define HSB_VEC_T(VT, VI, V, U, T_)                                                              \
    VT U = (V) + three;                                                                          \
    U = VSEL(VT, VI, U > zero, U, zero);                                                         \
    U = VSEL(VT, VI, U < six, U, six);                                                           \
    const VI pos_ = (V) >= zero;                                                                 \
    const VT T_ = (av + (VT)((VI)bv & pos_)) + qv * U;

/* one vector of the sums pass: w = s (stats) or g, s1 += w, s2 += w s; MASKED drops the lanes
 * of an overlapping last vector that were counted already */
#define HSB_SUMS_VEC(VT, VI, OFF, MASKED)                                                                \
    {                                                                                            \
        VT v;                                                                                    \
        memcpy(&v, xc + (OFF), sizeof v);                                                        \
        HSB_VEC_T(VT, VI, v, u, t)                                                               \
        (void)u;                                                                                 \
        const VT s = ev + v * t;                                                                 \
        VT w = s;                                                                                \
        if (gc) memcpy(&w, gc + (OFF), sizeof w);                                                \
        if (MASKED) w = (VT)((VI)w & keep);                                                      \
        s1 += w;                                                                                 \
        s2 += w * s;                                                                             \
    }

/* one vector of the backward: h = g or its BatchNorm affine, gx = h s'(x), the four sums */
#define HSB_BWD_VEC(VT, VI, OFF, MASKED)                                                                 \
    {                                                                                            \
        VT v, g;                                                                                 \
        memcpy(&v, xc + (OFF), sizeof v);                                                        \
        memcpy(&g, gc + (OFF), sizeof g);                                                        \
        HSB_VEC_T(VT, VI, v, u, t)                                                               \
        if (has_aff) g = alv * g + (bev * (ev + v * t) + dev);                                   \
        if (gxc) {                                                                               \
            const VI mid = (v >= mthree) & (v < three);                                          \
            const VT o = g * (t + (VT)((VI)(qv * v) & mid));                                     \
            memcpy(gxc + (OFF), &o, sizeof o);                                                   \
        }                                                                                        \
        if (sums) {                                                                              \
            if (MASKED) g = (VT)((VI)g & keep);                                                  \
            const VT h1 = g * v;                                                                 \
            a0 += g;                                                                             \
            a1 += h1;                                                                            \
            a2 += (VT)((VI)h1 & pos_);                                                           \
            a3 += h1 * u;                                                                        \
        }                                                                                        \
    }


/* a thread's per-channel store for the sums: na doubles per channel (planar, local[j * C + c]) */
typedef struct {
    double* local;
} HsbStore;

static int hsb_store(HsbStore* st, int64_t C, int na) {
    st->local = (double*)calloc((size_t)(na * C), sizeof(double));
    return st->local != NULL;
}

/* flush the running vectors, add the store into out[j * Cc + c], free it */
static void hsb_store_finish(HsbStore* st, int64_t C, int na, double* out, int ok) {
    if (ok) {
        _Pragma("omp critical(repact_pq_reduce)")
        for (int64_t j = 0; j < na * C; ++j) out[j] += st->local[j];
    }
    free(st->local);
}

/* 0 for the first VBYTES / sizeof(T) entries, all ones after: lane l of the vector loaded at
 * offset r is kept iff l >= L - r */
static const int32_t HSB_KEEP32[2 * VBYTES / 4] = {[VBYTES / 4 ... 2 * VBYTES / 4 - 1] = -1};
static const int64_t HSB_KEEP64[2 * VBYTES / 8] = {[VBYTES / 8 ... 2 * VBYTES / 8 - 1] = -1};

/* a run's coefficients cf[j * cs] as scalars e, a, b, q and vectors ev, av, bv, qv, with the
 * constants zero, three, six */
#define HSB_COEFS(T, VT)                                                                         \
    const T e = cf[0], a = cf[cs], b = cf[2 * cs], q = cf[3 * cs];                               \
    const VT zero = {0}, three = zero + (T)3, six = zero + (T)6;                                 \
    const VT ev = zero + e, av = zero + a, bv = zero + b, qv = zero + q;

/* per-channel maps of L to 16 L elements run in straddling vectors (hsb_straddle) */
#ifdef REPACT_NO_STRADDLE /* (for measuring what the straddling walk gains) */
#define HSB_STRADDLE(T, inner) 0
#else
#define HSB_STRADDLE(T, inner) ((inner) >= VBYTES / (int64_t)sizeof(T) && (inner) < 16 * (VBYTES / (int64_t)sizeof(T)))
#endif

#define HSB_FWD 0
#define HSB_SUMS 1
#define HSB_BWD 2
/* channel c's coefficients as vectors E, A, B, Q and the backward's affine alpha, beta, delta
 * (1, 0, 0 without aff); needs zero, coef, aff, C in scope */
#define HSB_LANE_COEFS(T, E, A, B, Q, AL, BE, DE, c)                                              \
    E = zero + coef[(c)]; A = zero + coef[C + (c)]; B = zero + coef[2 * C + (c)];                \
    Q = zero + coef[3 * C + (c)];                                                                \
    AL = zero + (aff ? (T)aff[(c)] : (T)1); BE = zero + (aff ? (T)aff[C + (c)] : (T)0);          \
    DE = zero + (aff ? (T)aff[2 * C + (c)] : (T)0);

/* hsb_straddle's block sums a0..a3 (M elements) into channel CH of the store st */
#define HSB_STORE_DEPOSIT(VT, SUF, M, CH)                                                          \
    {                                                                                            \
        const VT acc_[NHSB] = {a0, a1, a2, a3};                                                  \
        double d_[NHSB] = {0.0, 0.0, 0.0, 0.0};                                                  \
        const int64_t ch_ = (CH);                                                                \
        hsb_deposit_##SUF(acc_, na, d_);                                                         \
        for (int j_ = 0; j_ < na; ++j_) st->local[j_ * C + ch_] += d_[j_];                       \
    }

#define DEFINE_HSB(T, SUF, VT, VI)                                                               \
static inline T hsb_t_##SUF(T v, T a, T b, T q, T* uo) {                                         \
    T u = v + (T)3;                                                                              \
    u = u > (T)0 ? u : (T)0;                                                                     \
    u = u < (T)6 ? u : (T)6;                                                                     \
    *uo = u;                                                                                     \
    return (a + (v >= (T)0 ? b : (T)0)) + q * u;                                                 \
}                                                                                                \
                                                                                                 \
/* y = s(x) over a run of n elements, coefficients cf[j * cs]; a run of n >= L ends with a full  \
 * vector overlapping the one before it (its lanes get the same values twice) */                 \
static void hsb_fwd_run_##SUF(const T* restrict xp, T* restrict yp, int64_t n,                    \
                              const T* restrict cf, int64_t cs) {                                \
    enum { L = VBYTES / sizeof(T) };                                                             \
    HSB_COEFS(T, VT)                                                                             \
    if (n < L) {                                                                                 \
        for (int64_t i = 0; i < n; ++i) {                                                        \
            T u;                                                                                 \
            const T t = hsb_t_##SUF(xp[i], a, b, q, &u);                                         \
            yp[i] = e + xp[i] * t;                                                               \
        }                                                                                        \
        return;                                                                                  \
    }                                                                                            \
    for (int64_t i = 0;; i += L) {                                                               \
        if (i + L > n) i = n - L;                                                                \
        VT v;                                                                                    \
        memcpy(&v, xp + i, sizeof v);                                                            \
        HSB_VEC_T(VT, VI, v, u, t)                                                               \
        (void)u;                                                                                 \
        const VT s = ev + v * t;                                                                 \
        memcpy(yp + i, &s, sizeof s);                                                            \
        if (i + L >= n) break;                                                                   \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
/* lanes to keep in a block's overlapping last vector: the last n % L (HSB_KEEP* from n % L) */  \
static inline VI hsb_keep_##SUF(int64_t n) {                                                     \
    enum { L = VBYTES / sizeof(T) };                                                             \
    const void* table = sizeof(T) == 4 ? (const void*)HSB_KEEP32 : (const void*)HSB_KEEP64;     \
    VI k;                                                                                        \
    memcpy(&k, (const char*)table + (n % L) * sizeof(T), sizeof k);                              \
    return k;                                                                                    \
}                                                                                                \
                                                                                                 \
/* a run's or block's vector sums acc[na] for one channel, lane by lane added to d[j] */        \
static inline void hsb_deposit_##SUF(const VT* acc, int na, double* d) {                         \
    enum { L = VBYTES / sizeof(T) };                                                             \
    for (int j = 0; j < na; ++j)                                                                 \
        for (int l = 0; l < L; ++l) d[j] += acc[j][l];                                           \
}                                                                                                \
                                                                                                 \
/* sum w and sum w s(x) (w = s, or g when gp) over a run of n elements of one channel, added to  \
 * o[0] and o[os] */                                                                            \
static void hsb_sums_run_##SUF(const T* restrict xp, const T* restrict gp, int64_t n,             \
                               const T* restrict cf, int64_t cs, double* restrict o, int64_t os) {\
    enum { L = VBYTES / sizeof(T) };                                                             \
    HSB_COEFS(T, VT)                                                                             \
    const VI keep = hsb_keep_##SUF(n);                                                           \
    VT s1 = zero, s2 = zero;                                                                     \
    double d1 = 0.0, d2 = 0.0;                                                                   \
    int64_t since = 0;                                                                           \
    if (n < L) {                                                                                 \
        for (int64_t i = 0; i < n; ++i) {                                                        \
            T u;                                                                                 \
            const T t = hsb_t_##SUF(xp[i], a, b, q, &u);                                         \
            const double s = (double)(e + xp[i] * t);                                            \
            const double w = gp ? (double)gp[i] : s;                                             \
            d1 += w;                                                                             \
            d2 += w * s;                                                                         \
        }                                                                                        \
    } else {                                                                                     \
        for (int64_t i0 = 0; i0 < n; i0 += CHUNK) {                                              \
            const int64_t m = n - i0 < CHUNK ? n - i0 : CHUNK;                                   \
            const T* restrict xc = xp + i0;                                                      \
            const T* restrict gc = gp ? gp + i0 : NULL;                                          \
            int64_t i = 0;                                                                       \
            for (; i + L <= m; i += L) HSB_SUMS_VEC(VT, VI, i, 0)                                        \
            if (i < m) HSB_SUMS_VEC(VT, VI, m - L, 1) /* CHUNK is a multiple of L: only the block's end */\
            SUMS_CHUNK_END(m)                                                                    \
        }                                                                                        \
    }                                                                                            \
    const VT sv[2] = {s1, s2};                                                                   \
    double dd[2] = {d1, d2};                                                                     \
    hsb_deposit_##SUF(sv, 2, dd);                                                                \
    o[0] += dd[0];                                                                               \
    o[os] += dd[1];                                                                              \
}                                                                                                \
                                                                                                 \
/* the backward over a run of n elements of one channel: h = g (af == NULL) or af[0] g +       \
 * af[as] s(x) + af[2 as], gx = h s'(x) (gxp != NULL), and (o != NULL) the four sums added to   \
 * o[j * os] */                                                                                  \
static void hsb_bwd_run_##SUF(const T* restrict xp, const T* restrict gp, T* restrict gxp,        \
                              int64_t n, const T* restrict cf, int64_t cs,                        \
                              const double* restrict af, int64_t as, double* restrict o,          \
                              int64_t os) {                                                       \
    enum { L = VBYTES / sizeof(T) };                                                             \
    HSB_COEFS(T, VT)                                                                             \
    const int has_aff = af != NULL, sums = o != NULL;                                            \
    const T al = has_aff ? (T)af[0] : (T)1, be = has_aff ? (T)af[as] : (T)0;                     \
    const T de = has_aff ? (T)af[2 * as] : (T)0;                                                 \
    const VT mthree = zero - (T)3, alv = zero + al, bev = zero + be, dev = zero + de;            \
    const VI keep = hsb_keep_##SUF(n);                                                           \
    VT a0 = zero, a1 = zero, a2 = zero, a3 = zero;                                               \
    double d[NHSB] = {0.0, 0.0, 0.0, 0.0};                                                       \
    int64_t since = 0;                                                                           \
    if (n < L) {                                                                                 \
        for (int64_t i = 0; i < n; ++i) {                                                        \
            const T v = xp[i];                                                                   \
            T g = gp[i], u;                                                                      \
            const T t = hsb_t_##SUF(v, a, b, q, &u);                                             \
            if (has_aff) g = al * g + (be * (e + v * t) + de);                                   \
            if (gxp) gxp[i] = g * (t + ((v >= (T)-3 && v < (T)3) ? q * v : (T)0));               \
            if (sums) {                                                                          \
                const double dg = (double)g, h1 = dg * (double)v;                                \
                d[0] += dg; d[1] += h1; d[2] += v >= (T)0 ? h1 : 0.0; d[3] += h1 * (double)u;    \
            }                                                                                    \
        }                                                                                        \
    } else {                                                                                     \
        for (int64_t i0 = 0; i0 < n; i0 += CHUNK) {                                              \
            const int64_t m = n - i0 < CHUNK ? n - i0 : CHUNK;                                   \
            const T* restrict xc = xp + i0;                                                      \
            const T* restrict gc = gp + i0;                                                      \
            T* restrict gxc = gxp ? gxp + i0 : NULL;                                             \
            int64_t i = 0;                                                                       \
            for (; i + L <= m; i += L) HSB_BWD_VEC(VT, VI, i, 0)                                         \
            if (i < m) HSB_BWD_VEC(VT, VI, m - L, 1)                                                     \
            since += m;                                                                          \
            if (sums && since >= CHUNK) {                                                        \
                for (int l = 0; l < L; ++l) { d[0] += a0[l]; d[1] += a1[l]; d[2] += a2[l]; d[3] += a3[l]; }\
                a0 = zero; a1 = zero; a2 = zero; a3 = zero; since = 0;                           \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
    if (sums) {                                                                                  \
        const VT av4[NHSB] = {a0, a1, a2, a3};                                                   \
        hsb_deposit_##SUF(av4, NHSB, d);                                                         \
        for (int j = 0; j < NHSB; ++j) o[j * os] += d[j];                                        \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
/* The full vectors of [pos, end) of a per-channel tensor with inner >= L, in vectors that may   \
 * straddle two blocks (each lane takes its own block's coefficients): no per-block start-up and \
 * no overlapping last vector, for maps of a few vectors. MODE HSB_FWD: out = s(x); HSB_SUMS:    \
 * sum w and sum w s (w = s, or g); HSB_BWD: out = gx (or NULL) and the four sums, g replaced by  \
 * its affine with aff. Each block's share of the sums goes to st at its end (st->local NULL:    \
 * none). Returns where the full vectors end; always inlined with a constant MODE. */            \
static inline __attribute__((always_inline)) int64_t hsb_straddle_##SUF(                         \
        int mode, const T* restrict x, const T* restrict g, T* restrict out, int64_t pos,         \
        int64_t end, int64_t C, int64_t inner, const T* restrict coef, const double* restrict aff,\
        HsbStore* st) {                                                                          \
    enum { L = VBYTES / sizeof(T) };                                                             \
    const int na = mode == HSB_SUMS ? 2 : NHSB, keep_sums = mode != HSB_FWD && st->local;        \
    const VT zero = {0}, three = zero + (T)3, six = zero + (T)6, mthree = zero - (T)3;           \
    int64_t c = (pos / inner) % C, bend = (pos / inner + 1) * inner, m = 0;                      \
    VT ce, ca, cb, cq, cl, cm, cd, a0 = zero, a1 = zero, a2 = zero, a3 = zero;                   \
    HSB_LANE_COEFS(T, ce, ca, cb, cq, cl, cm, cd, c)                                                \
    int64_t i = pos;                                                                             \
    for (; i + L <= end; i += L) {                                                               \
        const int64_t r = bend - i; /* lanes of the current block in this vector */              \
        VT ev = ce, av = ca, bv = cb, qv = cq, lv = cl, mv = cm, dv = cd;                        \
        VI nx = {0}; /* the lanes in the next block */                                           \
        if (r <= L) {                                                                            \
            c = c + 1 == C ? 0 : c + 1;                                                          \
            bend += inner;                                                                       \
            HSB_LANE_COEFS(T, ce, ca, cb, cq, cl, cm, cd, c)                                     \
            if (r < L) {                                                                         \
                nx = hsb_keep_##SUF(L - r);                                                      \
                ev = VSEL(VT, VI, nx, ce, ev); av = VSEL(VT, VI, nx, ca, av);                    \
                bv = VSEL(VT, VI, nx, cb, bv); qv = VSEL(VT, VI, nx, cq, qv);                    \
                if (mode == HSB_BWD && aff) {                                                    \
                    lv = VSEL(VT, VI, nx, cl, lv); mv = VSEL(VT, VI, nx, cm, mv);                \
                    dv = VSEL(VT, VI, nx, cd, dv);                                               \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        VT v, w0, w1, w2 = zero, w3 = zero;                                                      \
        memcpy(&v, x + i, sizeof v);                                                             \
        HSB_VEC_T(VT, VI, v, u, t)                                                               \
        const VT s = ev + v * t;                                                                 \
        if (mode == HSB_FWD) {                                                                   \
            memcpy(out + i, &s, sizeof s);                                                       \
            continue;                                                                            \
        }                                                                                        \
        if (mode == HSB_SUMS) {                                                                  \
            w0 = s;                                                                              \
            if (g) memcpy(&w0, g + i, sizeof w0);                                                \
            w1 = w0 * s;                                                                         \
        } else {                                                                                 \
            memcpy(&w0, g + i, sizeof w0);                                                       \
            if (aff) w0 = (lv * w0 + mv * s) + dv;                                               \
            if (out) {                                                                           \
                const VI mid = (v >= mthree) & (v < three);                                      \
                const VT o = w0 * (t + (VT)((VI)(qv * v) & mid));                                \
                memcpy(out + i, &o, sizeof o);                                                   \
            }                                                                                    \
            w1 = w0 * v;                                                                         \
            w2 = (VT)((VI)w1 & pos_);                                                            \
            w3 = w1 * u;                                                                         \
        }                                                                                        \
        if (!keep_sums) continue;                                                                \
        if (r > L) {                                                                             \
            a0 += w0; a1 += w1; a2 += w2; a3 += w3;                                              \
            m += L;                                                                              \
            continue;                                                                            \
        }                                                                                        \
        a0 += (VT)((VI)w0 & ~nx); a1 += (VT)((VI)w1 & ~nx);                                      \
        a2 += (VT)((VI)w2 & ~nx); a3 += (VT)((VI)w3 & ~nx);                                      \
        HSB_STORE_DEPOSIT(VT, SUF, m + r, c == 0 ? C - 1 : c - 1);                                \
        a0 = (VT)((VI)w0 & nx); a1 = (VT)((VI)w1 & nx); a2 = (VT)((VI)w2 & nx); a3 = (VT)((VI)w3 & nx);\
        m = L - r;                                                                               \
    }                                                                                            \
    if (keep_sums && m) HSB_STORE_DEPOSIT(VT, SUF, m, c);                                        \
    return i;                                                                                    \
}                                                                                                \
                                                                                                 \
/* One thread's share [pos, end) of a (outer, C, inner) tensor, Cc in {1, C}, in MODE (as in       \
 * hsb_straddle), run by run: a run is the piece of one block, or the whole share for one         \
 * coefficient set; per-channel maps of a few vectors go in straddling vectors. Shares are in     \
 * memory order (channel-major walks, or tiles of a few images, were slower here at every map     \
 * size: the per-block fold costs less than leaving memory order). Sums go to st. */             \
static inline __attribute__((always_inline)) void hsb_span_##SUF(                                 \
        int mode, const T* x, const T* g, T* out, int64_t pos, int64_t end, int64_t C,            \
        int64_t inner, const T* coef, int64_t Cc, const double* aff, HsbStore* st) {              \
    if (Cc > 1 && HSB_STRADDLE(T, inner))                                                        \
        pos = hsb_straddle_##SUF(mode, x, g, out, pos, end, C, inner, coef, aff, st);            \
    while (pos < end) {                                                                          \
        const int64_t blk = Cc == 1 ? 0 : pos / inner, c = Cc == 1 ? 0 : blk % C;                \
        int64_t stop = Cc == 1 ? end : (blk + 1) * inner;                                        \
        if (stop > end) stop = end;                                                              \
        const int64_t len = stop - pos;                                                          \
        double* o = st->local ? st->local + c : NULL;                                            \
        if (mode == HSB_FWD) hsb_fwd_run_##SUF(x + pos, out + pos, len, coef + c, Cc);           \
        else if (mode == HSB_SUMS)                                                               \
            hsb_sums_run_##SUF(x + pos, g ? g + pos : NULL, len, coef + c, Cc, o, Cc);           \
        else hsb_bwd_run_##SUF(x + pos, g + pos, out ? out + pos : NULL, len, coef + c, Cc,      \
                               aff ? aff + c : NULL, Cc, o, Cc);                                 \
        pos = stop;                                                                              \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
/* the passes over a whole tensor (outer, C, inner), Cc in {1, C}, inner > 1 when Cc > 1, each    \
 * thread one contiguous piece in memory order, block by block */                                \
static int hsb_forward_##SUF(const T* x, T* y, int64_t outer, int64_t C, int64_t inner,          \
                             const T* coef, int64_t Cc, int nthreads) {                          \
    const int64_t total = outer * C * inner;                                                     \
    if (total == 0) return 0;                                                                    \
    const int nt = threads_for(total, GRAIN, nthreads);                                          \
    _Pragma("omp parallel num_threads(nt)")                                                      \
    {                                                                                            \
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();                       \
        HsbStore none = {NULL};                                                      \
        hsb_span_##SUF(HSB_FWD, x, NULL, y, total * tid / nth, total * (tid + 1) / nth, C, inner, \
                       coef, Cc, NULL, &none);                                                   \
    }                                                                                            \
    return 0;                                                                                    \
}                                                                                                \
                                                                                                 \
/* the sums passes over a whole tensor: with sums, per channel sum w and sum w s(x) (w = s, or   \
 * g) into out[c], out[Cc + c]; otherwise the backward, gx and (out != NULL) the four sums per    \
 * channel, planar out[j * Cc + c], with aff (3, Cc) or NULL */                                  \
static int hsb_pass_##SUF(const T* x, const T* g, T* gx, double* out, const double* aff, int sums, \
                          int64_t outer, int64_t C, int64_t inner, const T* coef, int64_t Cc,    \
                          int nthreads) {                                                        \
    const int64_t total = outer * C * inner;                                                     \
    const int na = sums ? 2 : NHSB;                                                              \
    if (out) memset(out, 0, sizeof(double) * (size_t)(na * Cc));                                 \
    if (total == 0) return 0;                                                                    \
    const int nt = threads_for(total, GRAIN, nthreads);                                          \
    int failed = 0;                                                                              \
    _Pragma("omp parallel num_threads(nt)")                                                      \
    {                                                                                            \
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();                       \
        HsbStore st = {NULL};                                                        \
        const int ok = !out || hsb_store(&st, Cc, na);                                           \
        const int64_t p0 = total * tid / nth, p1 = total * (tid + 1) / nth;                      \
        if (ok && sums) hsb_span_##SUF(HSB_SUMS, x, g, NULL, p0, p1, C, inner, coef, Cc, NULL, &st);\
        else if (ok) hsb_span_##SUF(HSB_BWD, x, g, gx, p0, p1, C, inner, coef, Cc, aff, &st);    \
        if (!ok) {                                                                               \
            _Pragma("omp atomic write")                                                          \
            failed = 1;                                                                          \
        }                                                                                        \
        if (out) hsb_store_finish(&st, Cc, na, out, ok);                                         \
    }                                                                                            \
    return failed ? 2 : 0;                                                                       \
}

DEFINE_HSB(float, f32, vf32, vi32)
DEFINE_HSB(double, f64, vf64, vi64)

static const double HSB_KNOTS[3] = {-3.0, 0.0, 3.0};

/* the piece table (planar, S = 4) of a basis row (E, A, B, Q) */
static void hsb_to_table(const double* h, double* table /* (3, 4) planar j * 4 + s */) {
    const double E = h[0], A = h[1], B = h[2], Q = h[3];
    const double rows[3][4] = {{E, E, E, E}, {A, A + 3 * Q, A + B + 3 * Q, A + B + 6 * Q}, {0, Q, Q, 0}};
    for (int j = 0; j < 3; ++j)
        for (int s = 0; s < 4; ++s) table[j * 4 + s] = rows[j][s];
}

/* the basis sums (E, A, B, Q) from the table's per-segment sums g[j][s] (planar j * 4 + s):
 * d/dE = sum over segments of g0, d/dA = sum of g1, d/dB = g1 on x >= 0, d/dQ = x^2 + 3 x on
 * [-3, 3) and 6 x beyond */
static void hsb_from_table_grad(const double* g, double* h) {
    h[0] = g[0] + g[1] + g[2] + g[3];
    h[1] = g[4] + g[5] + g[6] + g[7];
    h[2] = g[6] + g[7];
    h[3] = g[9] + g[10] + 3.0 * (g[5] + g[6]) + 6.0 * g[7];
}

/* The passes of the training entry points for either form: K >= 0 a piece table on the knots t,
 * K == HSWISH_BASIS the basis above; its rows (channels last, per-channel) run the table kernels
 * on the equivalent table. */
static int hsb_rows(int64_t C, int64_t inner, int64_t Cc) { return Cc > 1 && inner == 1 && C > 1; }

#define DEFINE_TRAIN_PASSES(T, SUF)                                                              \
static T* hsb_table_##SUF(const T* coef, int64_t Cc, T* knots) {                                 \
    T* tab = (T*)malloc(sizeof(T) * (size_t)(12 * Cc));                                          \
    for (int k = 0; k < 3; ++k) knots[k] = (T)HSB_KNOTS[k];                                      \
    for (int64_t c = 0; tab && c < Cc; ++c) {                                                    \
        double h[NHSB], tb[12];                                                                  \
        for (int j = 0; j < NHSB; ++j) h[j] = (double)coef[j * Cc + c];                          \
        hsb_to_table(h, tb);                                                                     \
        for (int js = 0; js < 12; ++js) tab[js * Cc + c] = (T)tb[js];                            \
    }                                                                                            \
    return tab;                                                                                  \
}                                                                                                \
static int train_sums_##SUF(const T* x, const T* g, int64_t outer, int64_t C, int64_t inner,     \
                            int64_t K, const T* t, const T* coef, int64_t Cc, int nth,           \
                            double* out) {                                                       \
    if (K != HSWISH_BASIS) return pq_sums_##SUF(x, g, outer, C, inner, K, t, coef, Cc, nth, out);\
    if (!hsb_rows(C, inner, Cc)) return hsb_pass_##SUF(x, g, NULL, out, NULL, 1, outer, C, inner, coef, Cc, nth);\
    T kn[3];                                                                                     \
    T* tab = hsb_table_##SUF(coef, Cc, kn);                                                      \
    const int rc = tab ? pq_sums_##SUF(x, g, outer, C, inner, 3, kn, tab, Cc, nth, out) : 2;     \
    free(tab);                                                                                   \
    return rc;                                                                                   \
}                                                                                                \
static int train_fwd_##SUF(const T* x, T* y, int64_t outer, int64_t C, int64_t inner, int64_t K, \
                           const T* t, const T* coef, int64_t Cc, int nth) {                     \
    if (K != HSWISH_BASIS) return repact_pq_forward_##SUF(x, y, outer, C, inner, K, t, coef, Cc, nth);\
    if (!hsb_rows(C, inner, Cc)) return hsb_forward_##SUF(x, y, outer, C, inner, coef, Cc, nth);  \
    T kn[3];                                                                                     \
    T* tab = hsb_table_##SUF(coef, Cc, kn);                                                      \
    const int rc = tab ? repact_pq_forward_##SUF(x, y, outer, C, inner, 3, kn, tab, Cc, nth) : 2;\
    free(tab);                                                                                   \
    return rc;                                                                                   \
}                                                                                                \
/* gsum: the table's planar (3, S, Cc) sums, or for the basis its (4, Cc) sums */                \
static int train_bwd_##SUF(const T* x, const T* g, T* gx, double* gsum, const double* aff,       \
                           int64_t outer, int64_t C, int64_t inner, int64_t K, const T* t,       \
                           const T* coef, int64_t Cc, int nth) {                                 \
    if (K != HSWISH_BASIS)                                                                       \
        return repact_pq_backward_##SUF(x, g, gx, gsum, aff, outer, C, inner, K, t, coef, Cc, nth);\
    if (!hsb_rows(C, inner, Cc))                                                                 \
        return hsb_pass_##SUF(x, g, gx, gsum, aff, 0, outer, C, inner, coef, Cc, nth);            \
    T kn[3];                                                                                     \
    T* tab = hsb_table_##SUF(coef, Cc, kn);                                                      \
    double* gt = gsum ? (double*)malloc(sizeof(double) * (size_t)(12 * Cc)) : NULL;              \
    int rc = (tab && (gt || !gsum)) ? 0 : 2;                                                     \
    if (rc == 0) rc = repact_pq_backward_##SUF(x, g, gx, gt, aff, outer, C, inner, 3, kn, tab, Cc, nth);\
    for (int64_t c = 0; rc == 0 && gsum && c < Cc; ++c) {                                        \
        double gc[12], h[NHSB];                                                                  \
        for (int js = 0; js < 12; ++js) gc[js] = gt[js * Cc + c];                                \
        hsb_from_table_grad(gc, h);                                                              \
        for (int j = 0; j < NHSB; ++j) gsum[j * Cc + c] = h[j];                                  \
    }                                                                                            \
    free(tab);                                                                                   \
    free(gt);                                                                                    \
    return rc;                                                                                   \
}

DEFINE_TRAIN_PASSES(float, f32)
DEFINE_TRAIN_PASSES(double, f64)

/* y = s(x) with the basis coefficients coef (planar (4, Cc): E, A, B, Q), any layout */
#define DEFINE_BASIS_ENTRY(T, SUF)                                                               \
int repact_basis_forward_##SUF(const T* x, T* y, int64_t outer, int64_t C, int64_t inner,        \
                               const T* coef, int64_t Cc, int nthreads) {                        \
    return train_fwd_##SUF(x, y, outer, C, inner, HSWISH_BASIS, NULL, coef, Cc, nthreads);       \
}
DEFINE_BASIS_ENTRY(float, f32)
DEFINE_BASIS_ENTRY(double, f64)

/* ------------------------------------------------------------------------------------------ */
/* RepAct training steps: the whole op in one call each way                                     */
/* ------------------------------------------------------------------------------------------ */
/*
 * Parameters: raw branch weights w_raw (Cc, nb), the PReLU slope (Cc) or NULL, and the fused table
 * as a linear map of them, base and part (nb, S, 3) row-major:
 *     table[c] = sum_b w[c, b] * (base[b] + slope[c] * part[b]),   w = softmax(w_raw) for RepAct-II.
 * With K == HSWISH_BASIS, base and part are (nb, 4) and give the basis row (E, A, B, Q) instead.
 * gamma/beta (Cc) switch on RepAct-III's BatchNorm, y = gamma (s(x) - mean) / sqrt(var + eps) + beta.
 *
 * BatchNorm modes (bn): BN_NONE (RepAct-I/II); BN_BATCH, the batch statistics of this call's x
 * (the forward writes them to mean/var, (Cc) double); BN_GIVEN, batch statistics given: the
 * forward reads mean/var (computed over several processes from repact_train_sums), the backward
 * reads the sums of g and g (s - mean) over every process (gsums, (2, Cc)) and their count;
 * BN_CONST, constant statistics (the running ones): y is an affine map of s, no gradient through
 * mean/var.
 *
 * Statistics follow repact.ops.batchnorm: shifted sums S1 = sum(s - k), S2 = sum((s - k)^2) with
 * k = s at each table's first element, mean = k + S1 / n, var = max(S2 / n - (S1 / n)^2, 0); the
 * backward's sum of g (s - mean) is taken with the mean shifted out the same way.
 * Table math runs in double; the kernels see the table rounded to T, and so do the sums that use it.
 */
#define BN_NONE 0
#define BN_BATCH 1
#define BN_GIVEN 2
#define BN_CONST 3
/* the table's shape in either form: S segments (0 for the basis), S3 coefficients per channel
 * (row-major in base/part), row sj's planar offset, and how many rows hold the constant term */
#define TRAIN_SEGMENTS(K) ((K) == HSWISH_BASIS ? 0 : (K) + 1)
#define TRAIN_ROWS(S) ((S) ? 3 * (S) : NHSB)
#define TRAIN_PLANAR(sj, S, Cc) ((S) ? (((sj) % 3) * (S) + (sj) / 3) * (Cc) : (sj) * (Cc))
#define TRAIN_CONST(S) ((S) ? (S) : 1)
#define DEFINE_TRAIN(T, SUF)                                                                     \
static void train_table_##SUF(const T* w_raw, const T* slope, const T* base, const T* part,       \
                              int64_t nb, int64_t S, int64_t Cc, int softmax, double* w,         \
                              double* table, T* coef) {                                          \
    const int64_t S3 = TRAIN_ROWS(S);                                                            \
    for (int64_t c = 0; c < Cc; ++c) {                                                           \
        double* wc = w + c * nb;                                                                 \
        for (int64_t b = 0; b < nb; ++b) wc[b] = (double)w_raw[c * nb + b];                      \
        if (softmax) {                                                                           \
            double mx = wc[0], sum = 0.0;                                                        \
            for (int64_t b = 1; b < nb; ++b) mx = wc[b] > mx ? wc[b] : mx;                       \
            for (int64_t b = 0; b < nb; ++b) { wc[b] = exp(wc[b] - mx); sum += wc[b]; }          \
            for (int64_t b = 0; b < nb; ++b) wc[b] /= sum;                                       \
        }                                                                                        \
        const double sl = slope ? (double)slope[c] : 0.0;                                        \
        for (int64_t sj = 0; sj < S3; ++sj) {                                                    \
            double v = 0.0;                                                                      \
            for (int64_t b = 0; b < nb; ++b) {                                                   \
                double e = (double)base[b * S3 + sj];                                            \
                if (slope) e += sl * (double)part[b * S3 + sj];                                  \
                v += wc[b] * e;                                                                  \
            }                                                                                    \
            table[c * S3 + sj] = v;                                                              \
            coef[TRAIN_PLANAR(sj, S, Cc) + c] = (T)v;                                            \
        }                                                                                        \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
/* s(v) in double from channel c's coefficients (planar, as the kernels read them) */            \
static double train_eval_##SUF(double v, int64_t K, const T* t, const T* coef, int64_t Cc, int64_t c) {\
    if (K == HSWISH_BASIS) {                                                                     \
        double u = v + 3.0;                                                                      \
        u = u > 0.0 ? (u < 6.0 ? u : 6.0) : 0.0;                                                 \
        return (double)coef[c] + v * ((double)coef[Cc + c] + (v >= 0.0 ? (double)coef[2 * Cc + c] : 0.0)\
                                      + (double)coef[3 * Cc + c] * u);                            \
    }                                                                                            \
    const int64_t S = K + 1;                                                                     \
    int64_t seg = 0;                                                                             \
    for (int64_t k = 0; k < K; ++k) seg += v >= (double)t[k];                                    \
    const double a2 = (double)coef[(2 * S + seg) * Cc + c];                                      \
    return (double)coef[seg * Cc + c] + v * ((double)coef[(S + seg) * Cc + c] + (a2 == 0.0 ? 0.0 : a2 * v));\
}                                                                                                \
                                                                                                 \
/* coef with its constant rows lowered by shift[c] (s - shift, same kernels) into out */         \
static void train_shift_##SUF(const T* coef, T* out, int64_t S, int64_t Cc, const double* shift) {\
    memcpy(out, coef, sizeof(T) * (size_t)(TRAIN_ROWS(S) * Cc));                                 \
    for (int64_t c = 0; c < Cc; ++c)                                                             \
        for (int64_t js = 0; js < TRAIN_CONST(S); ++js) out[js * Cc + c] = (T)((double)coef[js * Cc + c] - shift[c]);\
}                                                                                                \
                                                                                                 \
/* g == NULL: shift[c] = s at the table's first element, out = S1, S2 of s - shift; else out =   \
 * sum g, sum g (s - shift) with the given shift (the mean) */                                   \
static int train_shifted_sums_##SUF(const T* x, const T* g, int64_t outer, int64_t C, int64_t inner,\
                                    int64_t K, const T* t, const T* coef, int64_t Cc, double* shift,\
                                    double* out, int nth) {                                      \
    const int64_t S = TRAIN_SEGMENTS(K);                                                         \
    T* sc = (T*)malloc(sizeof(T) * (size_t)(TRAIN_ROWS(S) * Cc));                                \
    if (!sc) return 2;                                                                           \
    for (int64_t c = 0; !g && c < Cc; ++c) {                                                     \
        const double k = train_eval_##SUF((double)x[Cc > 1 ? c * inner : 0], K, t, coef, Cc, c); \
        shift[c] = isfinite(k) ? k : 0.0;                                                        \
    }                                                                                            \
    train_shift_##SUF(coef, sc, S, Cc, shift);                                                   \
    const int rc = train_sums_##SUF(x, g, outer, C, inner, K, t, sc, Cc, nth, out);              \
    free(sc);                                                                                    \
    return rc;                                                                                   \
}                                                                                                \
                                                                                                 \
/* the parameters' table: w (Cc, nb) and table (Cc, S3) in double, coef (planar, T) */           \
typedef struct { double* w; double* table; T* coef; } TrainTable_##SUF;                          \
static int train_build_##SUF(TrainTable_##SUF* tt, int64_t K, const T* w_raw, const T* slope,   \
                             const T* base, const T* part, int64_t nb, int softmax, int64_t Cc) {\
    const int64_t S = TRAIN_SEGMENTS(K), S3 = TRAIN_ROWS(S);                                     \
    tt->w = (double*)malloc(sizeof(double) * (size_t)(Cc * (nb + S3)));                          \
    tt->coef = (T*)malloc(sizeof(T) * (size_t)(Cc * S3));                                        \
    if (!tt->w || !tt->coef) return 2;                                                           \
    tt->table = tt->w + Cc * nb;                                                                 \
    train_table_##SUF(w_raw, slope, base, part, nb, S, Cc, softmax, tt->w, tt->table, tt->coef); \
    return 0;                                                                                    \
}                                                                                                \
static void train_free_##SUF(TrainTable_##SUF* tt) { free(tt->w); free(tt->coef); }             \
                                                                                                 \
int repact_train_sums_##SUF(const T* x, const T* g, int64_t outer, int64_t C, int64_t inner,     \
                            int64_t K, const T* t, const T* w_raw, const T* slope, const T* base,\
                            const T* part, int64_t nb, int softmax, int64_t Cc, double* shift,   \
                            double* out, int nthreads) {                                         \
    if ((K < 0 && K != HSWISH_BASIS) || K > MAXK || nb < 1) return 1;                            \
    TrainTable_##SUF tt;                                                                         \
    int rc = train_build_##SUF(&tt, K, w_raw, slope, base, part, nb, softmax, Cc);               \
    if (rc == 0) rc = train_shifted_sums_##SUF(x, g, outer, C, inner, K, t, tt.coef, Cc, shift, out, nthreads);\
    train_free_##SUF(&tt);                                                                       \
    return rc;                                                                                   \
}                                                                                                \
                                                                                                 \
int repact_train_forward_##SUF(const T* x, T* y, int64_t outer, int64_t C, int64_t inner,        \
                               int64_t K, const T* t, const T* w_raw, const T* slope,            \
                               const T* base, const T* part, int64_t nb, int softmax,            \
                               int64_t Cc, const T* gamma, const T* beta, double eps, int bn,    \
                               double* mean, double* var, int nthreads) {                        \
    if ((K < 0 && K != HSWISH_BASIS) || K > MAXK || nb < 1 || bn < BN_NONE || bn > BN_CONST) return 1;\
    const int64_t S = TRAIN_SEGMENTS(K), S3 = TRAIN_ROWS(S), total = outer * C * inner;          \
    TrainTable_##SUF tt;                                                                         \
    double* st = (double*)malloc(sizeof(double) * (size_t)(3 * Cc));                             \
    int rc = st ? train_build_##SUF(&tt, K, w_raw, slope, base, part, nb, softmax, Cc) : 2;      \
    if (rc == 0 && bn == BN_BATCH) {                                                             \
        rc = train_shifted_sums_##SUF(x, NULL, outer, C, inner, K, t, tt.coef, Cc, st, st + Cc, nthreads);\
        const double n = (double)(total / Cc);                                                   \
        for (int64_t c = 0; rc == 0 && c < Cc; ++c) {                                            \
            const double d = st[Cc + c] / n, v = st[2 * Cc + c] / n - d * d;                     \
            mean[c] = st[c] + d;                                                                 \
            var[c] = v > 0.0 ? v : 0.0;                                                          \
        }                                                                                        \
    }                                                                                            \
    for (int64_t c = 0; rc == 0 && bn != BN_NONE && c < Cc; ++c) {                               \
        const double scale = (double)gamma[c] / sqrt(var[c] + eps);                              \
        const double shift = (double)beta[c] - mean[c] * scale;                                  \
        for (int64_t js = 0; js < S3; ++js) { /* rows js < TRAIN_CONST(S): constants */          \
            T* q = tt.coef + js * Cc + c;                                                        \
            *q = (T)(tt.table[c * S3 + (S ? (js % S) * 3 + (js / S) : js)] * scale               \
                     + (js < TRAIN_CONST(S) ? shift : 0.0));                                     \
        }                                                                                        \
    }                                                                                            \
    if (rc == 0) rc = train_fwd_##SUF(x, y, outer, C, inner, K, t, tt.coef, Cc, nthreads);       \
    if (st) train_free_##SUF(&tt);                                                               \
    free(st);                                                                                    \
    return rc;                                                                                   \
}                                                                                                \
                                                                                                 \
int repact_train_backward_##SUF(const T* x, const T* g, T* gx, int64_t outer, int64_t C,         \
                                int64_t inner, int64_t K, const T* t, const T* w_raw,            \
                                const T* slope, const T* base, const T* part, int64_t nb,        \
                                int softmax, int64_t Cc, const T* gamma, const double* mean,     \
                                const double* var, double eps, int bn, const double* gsums,      \
                                double count, T* g_w, T* g_slope, T* g_gamma, T* g_beta,         \
                                int nthreads) {                                                  \
    if ((K < 0 && K != HSWISH_BASIS) || K > MAXK || nb < 1 || bn < BN_NONE || bn > BN_CONST) return 1;\
    const int64_t S = TRAIN_SEGMENTS(K), S3 = TRAIN_ROWS(S), total = outer * C * inner;          \
    const int need_table = g_w != NULL || g_slope != NULL;                                       \
    TrainTable_##SUF tt;                                                                         \
    double* buf = (double*)malloc(sizeof(double) * (size_t)(Cc * S3 + 6 * Cc + nb));            \
    const int batch = bn == BN_BATCH || bn == BN_GIVEN;                                          \
    T* centered = batch ? (T*)malloc(sizeof(T) * (size_t)(Cc * S3)) : NULL;                      \
    const int have = buf && (centered || !batch);                                                \
    int rc = have ? train_build_##SUF(&tt, K, w_raw, slope, base, part, nb, softmax, Cc) : 2;    \
    if (rc == 0) {                                                                               \
        double* gc = buf;                   /* planar sums from the kernel (see train_bwd) */    \
        double* aff = gc + Cc * S3;         /* (3, Cc): alpha, beta, delta */                    \
        double* gs = aff + 3 * Cc;          /* (2, Cc): sum g, sum g (s - mean) */               \
        double* gwb = gs + 2 * Cc;          /* (nb) scratch */                                   \
        if (bn == BN_GIVEN) memcpy(gs, gsums, sizeof(double) * (size_t)(2 * Cc));                \
        else if (bn != BN_NONE)                                                                  \
            rc = train_shifted_sums_##SUF(x, g, outer, C, inner, K, t, tt.coef, Cc, (double*)mean, gs, nthreads);\
        const double n = bn == BN_GIVEN ? count : (double)(total / Cc);                          \
        /* the BatchNorm's backward: dL/ds = alpha g + (beta (s - mean) + delta), (s - mean) from  \
         * the table with the mean shifted out. The kernels add a value that is nearly the same   \
         * for every element (delta, or beta s + delta' with delta' = delta - beta mean) to       \
         * alpha g only after the varying beta (s - mean): added to alpha g in float it rounds    \
         * the same way for every element of a binade, an error that, summed with x^j over n      \
         * elements, grows like n while the gradients grow like sqrt(n) (30x the float32          \
         * reference's error on the branch weights at 1.6M elements). */                         \
        if (rc == 0 && batch) train_shift_##SUF(tt.coef, centered, S, Cc, mean);                 \
        for (int64_t c = 0; rc == 0 && bn != BN_NONE && c < Cc; ++c) {                           \
            const double sum_g = gs[c], invstd = 1.0 / sqrt(var[c] + eps);                       \
            const double sum_gshat = invstd * gs[Cc + c];                                        \
            const double alpha = (double)gamma[c] * invstd;                                      \
            const double be = bn == BN_CONST ? 0.0 : -alpha * invstd * sum_gshat / n;            \
            aff[c] = alpha;                                                                      \
            aff[Cc + c] = be;                                                                    \
            aff[2 * Cc + c] = bn == BN_CONST ? 0.0 : -alpha * sum_g / n;                         \
            if (g_gamma) g_gamma[c] = (T)sum_gshat;                                              \
            if (g_beta) g_beta[c] = (T)sum_g;                                                    \
        }                                                                                        \
        if (rc == 0 && (gx || need_table))                                                       \
            rc = train_bwd_##SUF(x, g, gx, need_table ? gc : NULL, bn != BN_NONE ? aff : NULL,   \
                                 outer, C, inner, K, t, batch ? centered : tt.coef, Cc,          \
                                 nthreads);                                                      \
        for (int64_t c = 0; rc == 0 && need_table && c < Cc; ++c) {                              \
            /* the table's VJP: d table[c] / d w[c, b] = base[b] + slope[c] part[b] */           \
            const double* wc = tt.w + c * nb;                                                    \
            const double sl = slope ? (double)slope[c] : 0.0;                                    \
            double gsl = 0.0, dot = 0.0;                                                         \
            for (int64_t b = 0; b < nb; ++b) {                                                   \
                double gb = 0.0, gp = 0.0;                                                       \
                for (int64_t sj = 0; sj < S3; ++sj) {                                            \
                    const double gt = gc[TRAIN_PLANAR(sj, S, Cc) + c];                           \
                    gb += gt * (double)base[b * S3 + sj];                                        \
                    if (slope) gp += gt * (double)part[b * S3 + sj];                             \
                }                                                                                \
                gwb[b] = gb + sl * gp;                                                           \
                gsl += wc[b] * gp;                                                               \
                dot += gwb[b] * wc[b];                                                           \
            }                                                                                    \
            for (int64_t b = 0; g_w && b < nb; ++b)                                              \
                g_w[c * nb + b] = (T)(softmax ? wc[b] * (gwb[b] - dot) : gwb[b]);                \
            if (g_slope && slope) g_slope[c] = (T)gsl;                                           \
        }                                                                                        \
    }                                                                                            \
    if (have) train_free_##SUF(&tt);                                                             \
    free(buf);                                                                                   \
    free(centered);                                                                              \
    return rc;                                                                                   \
}

DEFINE_TRAIN(float, f32)
DEFINE_TRAIN(double, f64)

int repact_native_abi_version(void) { return REPACT_NATIVE_ABI; }
int repact_native_vector_bytes(void) { return VBYTES; }
