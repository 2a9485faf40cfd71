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
 *             h = alpha g + beta s(x) + delta   (aff: the gradient of a BatchNorm after s)
 *             gx = h * s'(x);  gcoef[j][s][c] = sum over segment s of h * x^j
 *   train_forward / train_backward   RepAct's whole training op (table from the branch weights,
 *             BatchNorm statistics and fold, the passes above, the table's VJP), see below; for
 *             the paper's branch sets the same passes in RepAct's own four-number basis (hsb_*)
 *
 * Built by repact/_native/__init__.py with -O3 (and -march=native where the compiler takes it)
 * and OpenMP; the library shares the OpenMP runtime that PyTorch has already loaded.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <omp.h>

#define MAXK 8
/* elements between flushes of float partial sums into double: 128 per float lane */
#define CHUNK (128 * (VBYTES / 4))

/* Portable SIMD through GCC/Clang vector extensions: 64-byte vectors with AVX-512, 32 with AVX,
 * 16 otherwise. Casting between same-size vector types reinterprets the bits. */
#if defined(__AVX512F__)
#define VBYTES 64
#elif defined(__AVX__)
#define VBYTES 32
#else
#define VBYTES 16
#endif
typedef float vf32 __attribute__((vector_size(VBYTES)));
typedef int32_t vi32 __attribute__((vector_size(VBYTES)));
typedef double vf64 __attribute__((vector_size(VBYTES)));
typedef int64_t vi64 __attribute__((vector_size(VBYTES)));

static int pick_threads(int64_t work, int nthreads) {
    int64_t grain = 32768;
    int64_t nt = (work + grain - 1) / grain;
    if (nt > nthreads) nt = nthreads;
    if (nt < 1) nt = 1;
    return (int)nt;
}

/* select per lane: m ? a : b (m is all-ones or all-zeros per lane) */
#define VSEL(VT, VI, m, a, b) ((VT)((((VI)(a)) & (m)) | (((VI)(b)) & ~(m))))

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

/* the same for one element, from scalar tables c0, c1, c2 and knots tk */
#define PQ_SCALAR(T, K, V, OUT)                                                                   \
    {                                                                                            \
        T a0 = c0[0], a1 = c1[0], a2 = c2[0];                                                    \
        for (int k = 0; k < K; ++k) {                                                            \
            int m = (V) >= tk[k];                                                                \
            a0 = m ? c0[k + 1] : a0;                                                             \
            a1 = m ? c1[k + 1] : a1;                                                             \
            a2 = m ? c2[k + 1] : a2;                                                             \
        }                                                                                        \
        T q_ = (a2 == (T)0) ? (T)0 : a2 * (V);                                                   \
        OUT = a0 + (V) * (a1 + q_);                                                              \
    }

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

/* each channel's table in one place: ctab[(c * 3 + j) * S + s] from planar coef[(j * S + s) * Cc + c] */
#define INTERLEAVE_TABLE(ctab, coef, Cc, S)                                                      \
    for (int64_t c_ = 0; c_ < (Cc); ++c_)                                                        \
        for (int64_t js_ = 0; js_ < 3 * (S); ++js_) (ctab)[c_ * 3 * (S) + js_] = (coef)[js_ * (Cc) + c_]

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
        g = alv * g + bev * s + dev;                                                             \
        MASK_TAIL                                                                                \
    }
#define BWD_VEC_GX(VT, VI) (g * (a1 + (VT)((VI)((a2 + a2) * v) & nz)))

#define DEFINE_SUMS_BLOCKS(T, SUF, K, VT, VI, ST)                                                   \
/* sum s and sum s^2 (gb == NULL), or sum g and sum g s (RepAct-III's backward), of nblk blocks  \
 * (n elements each, bs apart) into out[0], out[Cc] (ST = 0), or of one block into the channel's  \
 * running sums parked in st (ST = 1; see stats_finish) */                                        \
static void stats_block##ST##_##SUF##_k##K(const T* restrict xb, const T* restrict gb, int64_t nblk,\
                                     int64_t bs, int64_t n,                                         \
                                     const T* restrict t, const T* restrict coef, int64_t S,        \
                                     int64_t Cc, int64_t c, double* restrict out,                   \
                                     char* restrict st) {                                           \
    enum { L = VBYTES / sizeof(T) };                                                                \
    const VT zero = {0};                                                                            \
    LOAD_TABLE(T, VT, K)                                                                            \
    VT s1 = zero, s2 = zero;                                                                        \
    double d1 = 0.0, d2 = 0.0;                                                                      \
    int64_t since = 0;                                                                              \
    if (ST) { /* resume the channel's running sums */                                               \
        const VT* sv_ = (const VT*)st;                                                              \
        const double* sd_ = (const double*)(st + 2 * VBYTES);                                       \
        s1 = sv_[0]; s2 = sv_[1]; d1 = sd_[0]; d2 = sd_[1];                                         \
        since = *(const int64_t*)(sd_ + 2);                                                         \
    }                                                                                               \
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
    if (ST) {                                                                                       \
        VT* sv_ = (VT*)st;                                                                          \
        double* sd_ = (double*)(st + 2 * VBYTES);                                                   \
        sv_[0] = s1; sv_[1] = s2; sd_[0] = d1; sd_[1] = d2;                                         \
        *(int64_t*)(sd_ + 2) = since;                                                               \
    } else {                                                                                        \
        for (int l = 0; l < L; ++l) { d1 += s1[l]; d2 += s2[l]; }                                   \
        out[0] += d1;                                                                               \
        out[Cc] += d2;                                                                              \
    }                                                                                               \
}                                                                                                   \
                                                                                                    \
/* One pass per chunk: h (g, or the affine of g and s), gx = h s'(x), and the moment sums of      \
 * h, h x, h x^2 over all elements and over each {x >= t[k]}; a segment's sums are differences     \
 * of those (segment s = {x >= t[s-1]} minus {x >= t[s]}), so one compare per knot suffices.       \
 * ST = 0: nblk blocks of one channel, sums added to acc at the end; ST = 1: one block, the        \
 * channel's running sums resumed from and parked in st (bwd_finish adds them to acc). */          \
static void bwd_block##ST##_##SUF##_k##K(const T* restrict xb, const T* restrict gb, T* restrict gxb,\
                                   double* restrict acc, const double* restrict aff,                \
                                   int64_t nblk, int64_t bs, int64_t n, const T* restrict t,        \
                                   const T* restrict coef, int64_t S, int64_t Cc, int64_t c,        \
                                   char* restrict st) {                                             \
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
    if (ST) { /* resume the channel's running sums */                                               \
        const VT* sv_ = (const VT*)st;                                                              \
        const double* sd_ = (const double*)(st + (3 + 3 * K) * VBYTES);                             \
        all0 = sv_[0]; all1 = sv_[1]; all2 = sv_[2];                                                \
        for (int k = 0; k < K; ++k) { ge0[k] = sv_[3 + 3 * k]; ge1[k] = sv_[4 + 3 * k]; ge2[k] = sv_[5 + 3 * k]; }\
        for (int j = 0; j < 3; ++j) sa[j] = sd_[j];                                                 \
        for (int k = 0; k < K; ++k) for (int j = 0; j < 3; ++j) sg[k][j] = sd_[3 + 3 * k + j];      \
        since = *(const int64_t*)(sd_ + 3 + 3 * K);                                                 \
    }                                                                                               \
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
            if (ST || acc) {                                                                        \
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
                g = al * g + be * (c0[seg] + v * (c1[seg] + q)) + de;                               \
            }                                                                                       \
            if (gxc) {                                                                              \
                T q = (c2[seg] == (T)0) ? (T)0 : (c2[seg] + c2[seg]) * v;                           \
                gxc[i] = g * (c1[seg] + q);                                                         \
            }                                                                                       \
            if (ST || acc) {                                                                        \
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
        if ((ST || acc) && (since >= CHUNK || (!ST && b == nblk - 1 && i0 + m >= n))) {             \
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
    if (ST) { /* park the running sums until the channel's next block */                            \
        VT* sv_ = (VT*)st;                                                                          \
        double* sd_ = (double*)(st + (3 + 3 * K) * VBYTES);                                         \
        sv_[0] = all0; sv_[1] = all1; sv_[2] = all2;                                                \
        for (int k = 0; k < K; ++k) { sv_[3 + 3 * k] = ge0[k]; sv_[4 + 3 * k] = ge1[k]; sv_[5 + 3 * k] = ge2[k]; }\
        for (int j = 0; j < 3; ++j) sd_[j] = sa[j];                                                 \
        for (int k = 0; k < K; ++k) for (int j = 0; j < 3; ++j) sd_[3 + 3 * k + j] = sg[k][j];      \
        *(int64_t*)(sd_ + 3 + 3 * K) = since;                                                       \
    } else if (acc) {                                                                               \
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
static void fwd_block_##SUF##_k##K(const T* restrict xb, T* restrict yb, int64_t nblk,           \
                                   int64_t bs, int64_t n, const T* restrict t,                   \
                                   const T* restrict coef, int64_t S, int64_t Cc, int64_t c) {   \
    T c0[K + 1], c1[K + 1], c2[K + 1], tk[K + 1];                                                \
    for (int s = 0; s <= K; ++s) {                                                               \
        c0[s] = coef[(0 * S + s) * Cc + c];                                                      \
        c1[s] = coef[(1 * S + s) * Cc + c];                                                      \
        c2[s] = coef[(2 * S + s) * Cc + c];                                                      \
    }                                                                                            \
    for (int s = 0; s < K; ++s) tk[s] = t[s];                                                    \
    for (int64_t b = 0; b < nblk; ++b) {                                                         \
    const T* restrict xp = xb + b * bs;                                                          \
    T* restrict yp = yb + b * bs;                                                                \
    for (int64_t i = 0; i < n; ++i) {                                                            \
        T v = xp[i];                                                                             \
        PQ_SCALAR(T, K, v, yp[i])                                                                   \
    }                                                                                            \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
/* forward over the flat range [pos, end) of a tensor with a per-channel table, block by block      \
 * (inner elements per block, channel (block index) mod C); ctab holds each channel's table in one  \
 * place, ctab[(c * 3 + j) * (K + 1) + s]. A block of n >= L elements ends with a full vector that  \
 * overlaps the one before it (those lanes are written twice with the same values), so there is no  \
 * scalar tail; smaller blocks go element by element. */                                            \
static void fwd_span_##SUF##_k##K(const T* restrict x, T* restrict y, int64_t pos, int64_t end,     \
                                  int64_t inner, int64_t C, const T* restrict t,                    \
                                  const T* restrict ctab) {                                         \
    enum { L = VBYTES / sizeof(T) };                                                                \
    const VT zero = {0};                                                                            \
    T tk[K + 1];                                                                                    \
    VT tv[K + 1];                                                                                   \
    for (int s = 0; s < K; ++s) { tk[s] = t[s]; tv[s] = zero + t[s]; }                              \
    int64_t blk = pos / inner, c = blk % C;                                                         \
    while (pos < end) {                                                                             \
        int64_t stop = (blk + 1) * inner;                                                           \
        if (stop > end) stop = end;                                                                 \
        const T* restrict q = ctab + c * 3 * (K + 1);                                               \
        const T* restrict xp = x + pos;                                                             \
        T* restrict yp = y + pos;                                                                   \
        const int64_t n = stop - pos;                                                               \
        if (n >= L) {                                                                               \
            VT c0v[K + 1], c1v[K + 1], c2v[K + 1];                                                  \
            for (int s = 0; s <= K; ++s) {                                                          \
                c0v[s] = zero + q[s];                                                               \
                c1v[s] = zero + q[K + 1 + s];                                                       \
                c2v[s] = zero + q[2 * (K + 1) + s];                                                 \
            }                                                                                       \
            for (int64_t i = 0;; i += L) {                                                          \
                if (i + L > n) i = n - L; /* the last, overlapping vector */                        \
                VT v;                                                                               \
                memcpy(&v, xp + i, sizeof v);                                                       \
                VT out;                                                                             \
                PQ_VEC(VT, VI, K, v, out)                                                           \
                memcpy(yp + i, &out, sizeof out);                                                   \
                if (i + L >= n) break;                                                              \
            }                                                                                       \
        } else {                                                                                    \
            T c0[K + 1], c1[K + 1], c2[K + 1];                                                      \
            for (int s = 0; s <= K; ++s) {                                                          \
                c0[s] = q[s];                                                                       \
                c1[s] = q[K + 1 + s];                                                               \
                c2[s] = q[2 * (K + 1) + s];                                                         \
            }                                                                                       \
            for (int64_t i = 0; i < n; ++i) {                                                       \
                T v = xp[i];                                                                        \
                PQ_SCALAR(T, K, v, yp[i])                                                           \
            }                                                                                       \
        }                                                                                           \
        pos = stop;                                                                                 \
        ++blk;                                                                                      \
        if (++c == C) c = 0;                                                                        \
    }                                                                                               \
}                                                                                                   \
static void fwd_row_##SUF##_k##K(const T* restrict xp, T* restrict yp, int64_t C,                \
                                 const T* restrict t, const T* restrict coef, int64_t S) {       \
    T tk[K + 1];                                                                                 \
    for (int s = 0; s < K; ++s) tk[s] = t[s];                                                    \
    const T* restrict q0 = coef;                                                                 \
    const T* restrict q1 = coef + S * C;                                                         \
    const T* restrict q2 = coef + 2 * S * C;                                                     \
    for (int64_t c = 0; c < C; ++c) {                                                            \
        T v = xp[c];                                                                             \
        T a0 = q0[c], a1 = q1[c], a2 = q2[c];                                                    \
        for (int k = 0; k < K; ++k) {                                                            \
            int m = v >= tk[k];                                                                  \
            a0 = m ? q0[(k + 1) * C + c] : a0;                                                   \
            a1 = m ? q1[(k + 1) * C + c] : a1;                                                   \
            a2 = m ? q2[(k + 1) * C + c] : a2;                                                   \
        }                                                                                        \
        T q = a2 * v;                                                                            \
        q = (a2 == (T)0) ? (T)0 : q;                                                             \
        yp[c] = a0 + v * (a1 + q);                                                               \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
/* the block kernels of the sums passes, both walks (see FOR_THREAD_SHARE) */                    \
DEFINE_SUMS_BLOCKS(T, SUF, K, VT, VI, 0) DEFINE_SUMS_BLOCKS(T, SUF, K, VT, VI, 1)                   \
                                                                                                    \
static void stats_row_##SUF##_k##K(const T* restrict xp, const T* restrict gp, int64_t C,        \
                                   const T* restrict t,                                          \
                                   const T* restrict coef, int64_t S, double* restrict out) {    \
    T tk[K + 1];                                                                                 \
    for (int s = 0; s < K; ++s) tk[s] = t[s];                                                    \
    const T* restrict q0 = coef;                                                                 \
    const T* restrict q1 = coef + S * C;                                                         \
    const T* restrict q2 = coef + 2 * S * C;                                                     \
    for (int64_t c = 0; c < C; ++c) {                                                            \
        T v = xp[c];                                                                             \
        T a0 = q0[c], a1 = q1[c], a2 = q2[c];                                                    \
        for (int k = 0; k < K; ++k) {                                                            \
            int m = v >= tk[k];                                                                  \
            a0 = m ? q0[(k + 1) * C + c] : a0;                                                   \
            a1 = m ? q1[(k + 1) * C + c] : a1;                                                   \
            a2 = m ? q2[(k + 1) * C + c] : a2;                                                   \
        }                                                                                        \
        T q = (a2 == (T)0) ? (T)0 : a2 * v;                                                      \
        double s = (double)(a0 + v * (a1 + q));                                                  \
        const double w = gp ? (double)gp[c] : s;                                                 \
        out[c] += w;                                                                             \
        out[C + c] += w * s;                                                                     \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
static void bwd_row_##SUF##_k##K(const T* restrict xp, const T* restrict gp, T* restrict gxp,    \
                                 double* restrict acc, const double* restrict aff, int64_t C,    \
                                 const T* restrict t, const T* restrict coef, int64_t S) {       \
    T tk[K + 1];                                                                                 \
    for (int s = 0; s < K; ++s) tk[s] = t[s];                                                    \
    const T* restrict q0 = coef;                                                                 \
    const T* restrict q1 = coef + S * C;                                                         \
    const T* restrict q2 = coef + 2 * S * C;                                                     \
    for (int64_t c = 0; c < C; ++c) {                                                            \
        T v = xp[c], g = gp[c];                                                                  \
        int seg = 0;                                                                             \
        for (int k = 0; k < K; ++k) seg += (v >= tk[k]);                                         \
        T a0 = q0[seg * C + c], a1 = q1[seg * C + c], a2 = q2[seg * C + c];                      \
        if (aff) {                                                                               \
            T q = (a2 == (T)0) ? (T)0 : a2 * v;                                                  \
            g = (T)aff[c] * g + (T)aff[C + c] * (a0 + v * (a1 + q)) + (T)aff[2 * C + c];         \
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
}                                                                                                   \
                                                                                                    \
/* a parked state into the channel's sums (out[0], out[Cc]) */                                      \
static void stats_finish_##SUF##_k##K(const char* restrict st, double* restrict out, int64_t Cc) {  \
    enum { L = VBYTES / sizeof(T) };                                                                \
    const VT* sv = (const VT*)st;                                                                   \
    const double* sd = (const double*)(st + 2 * VBYTES);                                            \
    double d1 = sd[0], d2 = sd[1];                                                                  \
    for (int l = 0; l < L; ++l) { d1 += sv[0][l]; d2 += sv[1][l]; }                                 \
    out[0] += d1;                                                                                   \
    out[Cc] += d2;                                                                                  \
}                                                                                                   \
                                                                                                    \
/* a parked state into the channel's per-segment moment sums acc[(j * S + s) * Cc] */               \
static void bwd_finish_##SUF##_k##K(const char* restrict st, double* restrict acc, int64_t S, int64_t Cc) {\
    enum { L = VBYTES / sizeof(T), NV = 3 + 3 * K };                                                \
    const VT* sv = (const VT*)st;                                                                   \
    const double* sd = (const double*)(st + NV * VBYTES);                                           \
    double d[NV];                                                                                   \
    for (int q = 0; q < NV; ++q) {                                                                  \
        d[q] = sd[q];                                                                               \
        for (int l = 0; l < L; ++l) d[q] += sv[q][l];                                               \
    }                                                                                               \
    for (int s = 0; s <= K; ++s)                                                                    \
        for (int j = 0; j < 3; ++j) {                                                               \
            double above = (s == 0) ? d[j] : d[3 * s + j];                                          \
            double beyond = (s == K) ? 0.0 : d[3 * (s + 1) + j];                                    \
            acc[(j * S + s) * Cc] += above - beyond;                                                \
        }                                                                                           \
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
 * blocks of len elements from i, bs apart.
 * - The forward walks the flat range in memory order, one contiguous piece per thread, cut at block
 *   boundaries where the table changes per channel.
 * - The sums kernels (statistics, backward) with per-channel tables give each thread a range of
 *   channels, so that their sums stay thread-local. Over large blocks (inner >= STATE_WALK_MIN)
 *   a thread walks its channels image by image, in memory order, parking each channel's running
 *   sums in a state of STRIDE bytes between its blocks (BLOCK_ST(i, len, c, st), then
 *   FINISH(st, c)); over small blocks, where that costs more than it saves, it takes one channel
 *   at a time, all its blocks at once (the running sums stay in registers). */
#define STATE_WALK_MIN 256
#define FOR_THREAD_SHARE(SUMS, ROW, BLOCK, BLOCK_ST, FINISH, STRIDE)                             \
    FOR_THREAD_SHARE_IMPL(ROW, BLOCK, SUMS, BLOCK_ST, FINISH, STRIDE)
#define FOR_THREAD_SHARE_IN_ORDER(ROW, BLOCK) FOR_THREAD_SHARE_IMPL(ROW, BLOCK, 0, , , 64)
#define FOR_THREAD_SHARE_IMPL(ROW, BLOCK, SUMS, BLOCK_ST, FINISH, STRIDE)                        \
    {                                                                                            \
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();                             \
        if (inner == 1 && C > 1) {                                                               \
            int64_t o0 = outer * tid / nth, o1 = outer * (tid + 1) / nth;                        \
            for (int64_t o = o0; o < o1; ++o) { ROW }                                            \
        } else if (Cc > 1 && SUMS && inner >= STATE_WALK_MIN) {                                  \
            const int64_t c0 = C * tid / nth, c1 = C * (tid + 1) / nth;                          \
            const int64_t stride = (STRIDE);                                                     \
            const size_t bytes = (size_t)((c1 > c0 ? c1 - c0 : 1) * stride);                     \
            char* states = (char*)aligned_alloc(64, bytes);                                      \
            if (!states) {                                                                       \
                _Pragma("omp atomic write")                                                      \
                failed = 1;                                                                      \
            } else {                                                                             \
                memset(states, 0, bytes);                                                        \
                for (int64_t b = 0; b < outer; ++b)                                              \
                    for (int64_t c = c0; c < c1; ++c) {                                          \
                        const int64_t i = (b * C + c) * inner, len = inner;                      \
                        char* st = states + (c - c0) * stride;                                   \
                        (void)i; (void)len; (void)st;                                            \
                        { BLOCK_ST }                                                             \
                    }                                                                            \
                for (int64_t c = c0; c < c1; ++c) {                                              \
                    const char* st = states + (c - c0) * stride;                                 \
                    (void)st;                                                                    \
                    { FINISH }                                                                   \
                }                                                                                \
                free(states);                                                                    \
            }                                                                                    \
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

/* bytes of a parked state (a multiple of 64): NV vectors, NV doubles, a count */
static int64_t state_stride(int64_t nv) { return (nv * (VBYTES + 8) + 8 + 63) / 64 * 64; }

/* ------------------------------------------------------------------------------------------ */
/* Per-channel backward sums, AVX-512 float, K <= 4                                             */
/* ------------------------------------------------------------------------------------------ */
/* Faster than both walks above where it applies: each thread walks its piece in memory order
 * (no jumps between images, no TLB or prefetch misses per block), keeps a block's sums in
 * registers (at most CHUNK elements at a time), and at the block's end folds its 3 + 3K
 * accumulators (<= 15) into one vector (a shuffle tree: vector i's sum lands in lane RED_LANE[i])
 * added to the channel's running vector; those are flushed into doubles every RED_FLUSH elements
 * of the channel. (Parking 3 + 3K vectors per channel between blocks costs more than the fold.) */
#if VBYTES == 64 && defined(__AVX512F__)
#include <immintrin.h>
#define RED_OK 1
#define RED_FLUSH 512 /* elements of a channel between flushes of its running vector */
#define LOADN_f32(dst, src, r) ((dst) = (vf32)_mm512_maskz_loadu_ps((__mmask16)((1u << (unsigned)(r)) - 1u), (src)))
#define STOREN_f32(dst, v, r) _mm512_mask_storeu_ps((dst), (__mmask16)((1u << (unsigned)(r)) - 1u), (__m512)(v))
static inline vi32 lanes_below_f32(int64_t r) {
    const vi32 iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    const vi32 zero = {0};
    return iota < (zero + (int32_t)r);
}
static const int RED_LANE[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};

static inline vf32 red_pair(vf32 a, vf32 b, vi32 m0, vi32 m1) {
    return __builtin_shuffle(a, b, m0) + __builtin_shuffle(a, b, m1);
}

/* the first two levels of the tree's shuffles: halves (RED_A*), then quarters (RED_B*) */
#define RED_A0 ((vi32){0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23})
#define RED_A1 ((vi32){8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31})
#define RED_B0 ((vi32){0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27})
#define RED_B1 ((vi32){4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31})

static inline vf32 red_tree(vf32 v0, vf32 v1, vf32 v2, vf32 v3, vf32 v4, vf32 v5, vf32 v6, vf32 v7,
                            vf32 v8, vf32 v9, vf32 v10, vf32 v11, vf32 v12, vf32 v13, vf32 v14,
                            vf32 v15) {
    const vi32 a0 = RED_A0, a1 = RED_A1, b0 = RED_B0, b1 = RED_B1;
    const vi32 c0 = {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29};
    const vi32 c1 = {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31};
    const vi32 d0 = {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30};
    const vi32 d1 = {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31};
    vf32 w0 = red_pair(v0, v1, a0, a1), w1 = red_pair(v2, v3, a0, a1);
    vf32 w2 = red_pair(v4, v5, a0, a1), w3 = red_pair(v6, v7, a0, a1);
    vf32 w4 = red_pair(v8, v9, a0, a1), w5 = red_pair(v10, v11, a0, a1);
    vf32 w6 = red_pair(v12, v13, a0, a1), w7 = red_pair(v14, v15, a0, a1);
    vf32 u0 = red_pair(w0, w1, b0, b1), u1 = red_pair(w2, w3, b0, b1);
    vf32 u2 = red_pair(w4, w5, b0, b1), u3 = red_pair(w6, w7, b0, b1);
    return red_pair(red_pair(u0, u1, c0, c1), red_pair(u2, u3, c0, c1), d0, d1);
}

/* one vector of a block: h, gx, and the moment sums (the bwd_block arithmetic); TAIL masks lanes
 * at and past r */
#define RED_STEP(K, TAIL)                                                                        \
    {                                                                                            \
        vf32 v, g;                                                                               \
        if (TAIL) {                                                                              \
            LOADN_f32(v, xp + i, n - i);                                                         \
            LOADN_f32(g, gp + i, n - i);                                                         \
        } else {                                                                                 \
            memcpy(&v, xp + i, sizeof v);                                                        \
            memcpy(&g, gp + i, sizeof g);                                                        \
        }                                                                                        \
        BWD_VEC_SELECT(vf32, vi32, K, if (TAIL) g = (vf32)((vi32)g & lanes_below_f32(n - i));)      \
        if (gxp) {                                                                               \
            vf32 out = BWD_VEC_GX(vf32, vi32);                                                      \
            if (TAIL) STOREN_f32(gxp + i, out, n - i);                                           \
            else memcpy(gxp + i, &out, sizeof out);                                              \
        }                                                                                        \
        vf32 g1 = g * v, g2 = g1 * v;                                                            \
        acc[0] += g; acc[1] += g1; acc[2] += g2;                                                 \
        for (int k = 0; k < K; ++k) {                                                            \
            acc[3 + 3 * k] += (vf32)((vi32)g & mk[k]);                                           \
            acc[4 + 3 * k] += (vf32)((vi32)g1 & mk[k]);                                          \
            acc[5 + 3 * k] += (vf32)((vi32)g2 & mk[k]);                                          \
        }                                                                                        \
    }

/* the walk of a folding span: the knots as vectors, then block by block (CHUNK pieces of long
 * blocks) over [pos, end), channel c, its table as vectors; RED_SPAN_END(RED) adds the block's folded vector to
 * the channel's running one (flushed into doubles every RED_FLUSH elements) and moves on */
#define RED_SPAN_BEGIN(K)                                                                        \
    const vf32 zero = {0};                                                                       \
    const int64_t S = K + 1;                                                                     \
    vf32 tv[K + 1];                                                                              \
    for (int s = 0; s < K; ++s) tv[s] = zero + t[s];                                             \
    int64_t blk = pos / inner, c = blk % C;                                                      \
    while (pos < end) {                                                                          \
        const int64_t bend = (blk + 1) * inner;                                                  \
        int64_t stop = bend < end ? bend : end;                                                  \
        if (stop - pos > CHUNK) stop = pos + CHUNK;                                              \
        const float* restrict q = ctab + c * 3 * S;                                              \
        vf32 c0v[K + 1], c1v[K + 1], c2v[K + 1];                                                 \
        for (int s = 0; s <= K; ++s) {                                                           \
            c0v[s] = zero + q[s];                                                                \
            c1v[s] = zero + q[S + s];                                                            \
            c2v[s] = zero + q[2 * S + s];                                                        \
        }
#define RED_SPAN_END(RED)                                                                        \
        {                                                                                        \
            float* restrict ca = chacc + 16 * c;                                                 \
            vf32 cur;                                                                            \
            memcpy(&cur, ca, sizeof cur);                                                        \
            cur += (RED);                                                                        \
            cnt[c] += stop - pos;                                                                \
            if (cnt[c] >= RED_FLUSH) { /* keep float partial sums short */                       \
                for (int l = 0; l < 16; ++l) chd[16 * c + l] += cur[l];                          \
                cur = zero;                                                                      \
                cnt[c] = 0;                                                                      \
            }                                                                                    \
            memcpy(ca, &cur, sizeof cur);                                                        \
        }                                                                                        \
        pos = stop;                                                                              \
        if (pos == bend) {                                                                       \
            ++blk;                                                                               \
            if (++c == C) c = 0;                                                                 \
        }

/* a thread's piece [pos, end) in memory order, block by block; AFF: the BatchNorm affine of g */
#define DEFINE_RED_SPAN(K, AFF)                                                                     \
static void bwd_red_span_f32_k##K##_a##AFF(const float* restrict x, const float* restrict gg,       \
                                           float* restrict gxx, int64_t pos, int64_t end,           \
                                           int64_t inner, int64_t C, const float* restrict t,       \
                                           const float* restrict ctab, const float* restrict afft,  \
                                           float* restrict chacc, double* restrict chd,             \
                                           int64_t* restrict cnt) {                                 \
    RED_SPAN_BEGIN(K)                                                                               \
        const int aff = AFF;                                                                        \
        const vf32 alv = zero + (AFF ? afft[3 * c] : 1.0f), bev = zero + (AFF ? afft[3 * c + 1] : 0.0f);\
        const vf32 dev = zero + (AFF ? afft[3 * c + 2] : 0.0f);                                     \
        const float* restrict xp = x + pos;                                                         \
        const float* restrict gp = gg + pos;                                                        \
        float* restrict gxp = gxx ? gxx + pos : NULL;                                               \
        const int64_t n = stop - pos;                                                               \
        vf32 acc[16];                                                                               \
        for (int qq = 0; qq < 16; ++qq) acc[qq] = zero;                                             \
        int64_t i = 0;                                                                              \
        for (; i + 16 <= n; i += 16) RED_STEP(K, 0)                                                 \
        if (i < n) RED_STEP(K, 1)                                                                   \
        vf32 red = red_tree(acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7], acc[8], \
                            acc[9], acc[10], acc[11], acc[12], acc[13], acc[14], acc[15]);          \
        RED_SPAN_END(red)                                                                           \
    }                                                                                               \
}

DEFINE_RED_SPAN(1, 0) DEFINE_RED_SPAN(2, 0) DEFINE_RED_SPAN(3, 0) DEFINE_RED_SPAN(4, 0)
DEFINE_RED_SPAN(1, 1) DEFINE_RED_SPAN(2, 1) DEFINE_RED_SPAN(3, 1) DEFINE_RED_SPAN(4, 1)

/* statistics (GS = 0: sum s, sum s^2) or the III backward's sums (GS = 1: sum g, sum g s) over a
 * thread's piece, folded the same way (two accumulators per block, in lanes RED_LANE[0], [1]) */
#define DEFINE_RED_SUMS(K, GS)                                                                      \
static void sums_red_span_g##GS##_f32_k##K(const float* restrict x, const float* restrict gg,       \
                                           int64_t pos, int64_t end, int64_t inner, int64_t C,      \
                                           const float* restrict t, const float* restrict ctab,     \
                                           float* restrict chacc, double* restrict chd,             \
                                           int64_t* restrict cnt) {                                 \
    RED_SPAN_BEGIN(K)                                                                               \
        const float* restrict xp = x + pos;                                                         \
        const float* restrict gp = GS ? gg + pos : NULL;                                            \
        const int64_t n = stop - pos;                                                               \
        vf32 s1 = zero, s2 = zero;                                                                  \
        int64_t i = 0;                                                                              \
        for (; i + 16 <= n; i += 16) {                                                              \
            vf32 v, sv;                                                                             \
            memcpy(&v, xp + i, sizeof v);                                                           \
            PQ_VEC(vf32, vi32, K, v, sv)                                                            \
            SUMS_ADD(vf32, GS, memcpy(&g, gp + i, sizeof g), sv)                                    \
        }                                                                                           \
        if (i < n) {                                                                                \
            vf32 v, sv;                                                                             \
            LOADN_f32(v, xp + i, n - i);                                                            \
            PQ_VEC(vf32, vi32, K, v, sv)                                                            \
            sv = (vf32)((vi32)sv & lanes_below_f32(n - i));                                         \
            SUMS_ADD(vf32, GS, LOADN_f32(g, gp + i, n - i), sv)                                     \
        }                                                                                           \
        vf32 red = red_tree(s1, s2, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero,\
                            zero, zero, zero);                                                      \
        RED_SPAN_END(red)                                                                           \
    }                                                                                               \
}

DEFINE_RED_SUMS(0, 0) DEFINE_RED_SUMS(1, 0) DEFINE_RED_SUMS(2, 0) DEFINE_RED_SUMS(3, 0) DEFINE_RED_SUMS(4, 0) DEFINE_RED_SUMS(5, 0) DEFINE_RED_SUMS(6, 0) DEFINE_RED_SUMS(7, 0) DEFINE_RED_SUMS(8, 0)
DEFINE_RED_SUMS(0, 1) DEFINE_RED_SUMS(1, 1) DEFINE_RED_SUMS(2, 1) DEFINE_RED_SUMS(3, 1) DEFINE_RED_SUMS(4, 1) DEFINE_RED_SUMS(5, 1) DEFINE_RED_SUMS(6, 1) DEFINE_RED_SUMS(7, 1) DEFINE_RED_SUMS(8, 1)

/* a thread's running vectors (zeroed), their double sums, counts per channel, and nlocal sums */
typedef struct {
    float* chacc;
    double* chd;
    int64_t* cnt;
    double* local;
    int ok;
} FoldBuffers;

static FoldBuffers fold_buffers(int64_t C, int64_t nlocal) {
    FoldBuffers b;
    b.chacc = (float*)aligned_alloc(64, (size_t)C * 64);
    b.chd = (double*)calloc((size_t)C * 16, sizeof(double));
    b.cnt = (int64_t*)calloc((size_t)C, sizeof(int64_t));
    b.local = (double*)calloc((size_t)nlocal, sizeof(double));
    b.ok = b.chacc && b.chd && b.cnt && b.local;
    if (b.chacc) memset(b.chacc, 0, (size_t)C * 64);
    return b;
}

static void fold_free(FoldBuffers* b) {
    free(b->chacc);
    free(b->chd);
    free(b->cnt);
    free(b->local);
}

/* per-channel sums of pq_sums over blocks (inner > 1); -1 where this does not apply */
static int sums_red_walk_f32(const float* x, const float* g, int64_t outer, int64_t C, int64_t inner,
                             int64_t K, const float* t, const float* coef, int64_t Cc, int nthreads,
                             double* out) {
    if (K < 0 || K > MAXK || Cc != C || C < 2 || inner < 2) return -1;
    const int64_t S = K + 1, total = outer * C * inner;
    float* ctab = (float*)malloc(sizeof(float) * (size_t)(Cc * 3 * S));
    if (!ctab) return 2;
    INTERLEAVE_TABLE(ctab, coef, Cc, S);
    int nt = pick_threads(total, nthreads);
    int failed = 0;
    _Pragma("omp parallel num_threads(nt)")
    {
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        FoldBuffers fb = fold_buffers(C, 2 * C);
        if (!fb.ok) {
            _Pragma("omp atomic write")
            failed = 1;
        } else {
            const int64_t pos = total * tid / nth, end = total * (tid + 1) / nth;
            if (g) KSWITCH(sums_red_span_g1, f32, x, g, pos, end, inner, C, t, ctab, fb.chacc, fb.chd, fb.cnt)
            else KSWITCH(sums_red_span_g0, f32, x, g, pos, end, inner, C, t, ctab, fb.chacc, fb.chd, fb.cnt)
            for (int64_t c = 0; c < C; ++c) {
                fb.local[c] = fb.chd[16 * c + RED_LANE[0]] + (double)fb.chacc[16 * c + RED_LANE[0]];
                fb.local[C + c] = fb.chd[16 * c + RED_LANE[1]] + (double)fb.chacc[16 * c + RED_LANE[1]];
            }
            _Pragma("omp critical(repact_pq_reduce)")
            for (int64_t j = 0; j < 2 * C; ++j) out[j] += fb.local[j];
        }
        fold_free(&fb);
    }
    free(ctab);
    return failed ? 2 : 0;
}

/* the whole backward (with sums) for a per-channel table over blocks (inner > 1); returns -1
 * where it does not apply (then the caller's walks run) */
static int bwd_red_walk_f32(const float* x, const float* g, float* gx, double* gcoef,
                            const double* aff, int64_t outer, int64_t C, int64_t inner, int64_t K,
                            const float* t, const float* coef, int64_t Cc, int nthreads) {
    if (K < 1 || K > 4 || Cc != C || C < 2 || inner < 2) return -1;
    const int64_t S = K + 1, total = outer * C * inner, nacc = 3 * S * Cc;
    int nt = pick_threads(total, nthreads);
    int failed = 0;
    /* each channel's table (and BatchNorm affine) in one place */
    float* ctab = (float*)malloc(sizeof(float) * (size_t)(Cc * 3 * S));
    float* afft = aff ? (float*)malloc(sizeof(float) * (size_t)(3 * Cc)) : NULL;
    if (!ctab || (aff && !afft)) { free(ctab); free(afft); return 2; }
    INTERLEAVE_TABLE(ctab, coef, Cc, S);
    for (int64_t c = 0; aff && c < Cc; ++c)
        for (int j = 0; j < 3; ++j) afft[3 * c + j] = (float)aff[j * Cc + c];
    _Pragma("omp parallel num_threads(nt)")
    {
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        FoldBuffers fb = fold_buffers(C, nacc);
        if (!fb.ok) {
            _Pragma("omp atomic write")
            failed = 1;
        } else {
            const int64_t pos = total * tid / nth, end = total * (tid + 1) / nth;
            const int a = aff != NULL;
#define RED_CALL(KK) \
            if (a) bwd_red_span_f32_k##KK##_a1(x, g, gx, pos, end, inner, C, t, ctab, afft, fb.chacc, fb.chd, fb.cnt); \
            else bwd_red_span_f32_k##KK##_a0(x, g, gx, pos, end, inner, C, t, ctab, afft, fb.chacc, fb.chd, fb.cnt);
            switch (K) {
                case 1: RED_CALL(1) break;
                case 2: RED_CALL(2) break;
                case 3: RED_CALL(3) break;
                default: RED_CALL(4) break;
            }
#undef RED_CALL
            for (int64_t c = 0; c < C; ++c) {
                double d[16];
                for (int q = 0; q < 16; ++q) d[q] = fb.chd[16 * c + RED_LANE[q]] + (double)fb.chacc[16 * c + RED_LANE[q]];
                for (int64_t s = 0; s <= K; ++s)
                    for (int j = 0; j < 3; ++j) {
                        double above = (s == 0) ? d[j] : d[3 * s + j];
                        double beyond = (s == K) ? 0.0 : d[3 * (s + 1) + j];
                        fb.local[(j * S + s) * Cc + c] += above - beyond;
                    }
            }
            _Pragma("omp critical(repact_pq_reduce)")
            for (int64_t j = 0; j < nacc; ++j) gcoef[j] += fb.local[j];
        }
        fold_free(&fb);
    }
    free(ctab);
    free(afft);
    return failed ? 2 : 0;
}
#else
#define RED_OK 0
static int sums_red_walk_f32(const float* x, const float* g, int64_t outer, int64_t C, int64_t inner,
                             int64_t K, const float* t, const float* coef, int64_t Cc, int nthreads,
                             double* out) {
    (void)x; (void)g; (void)outer; (void)C; (void)inner; (void)K; (void)t; (void)coef; (void)Cc;
    (void)nthreads; (void)out;
    return -1;
}
static int bwd_red_walk_f32(const float* x, const float* g, float* gx, double* gcoef,
                            const double* aff, int64_t outer, int64_t C, int64_t inner, int64_t K,
                            const float* t, const float* coef, int64_t Cc, int nthreads) {
    (void)x; (void)g; (void)gx; (void)gcoef; (void)aff; (void)outer; (void)C; (void)inner;
    (void)K; (void)t; (void)coef; (void)Cc; (void)nthreads;
    return -1;
}
#endif

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
    int nt = pick_threads(total, nthreads);                                                      \
    int failed = 0;                                                                              \
    if (Cc > 1 && !(inner == 1 && C > 1)) {                                                      \
        /* per-channel table over blocks: each thread one contiguous piece, in memory order */   \
        T* ctab = (T*)malloc(sizeof(T) * (size_t)(Cc * 3 * S));                                  \
        if (!ctab) return 2;                                                                     \
        INTERLEAVE_TABLE(ctab, coef, Cc, S);                                                     \
        _Pragma("omp parallel num_threads(nt)")                                                  \
        {                                                                                        \
            int tid = omp_get_thread_num(), nth = omp_get_num_threads();                         \
            const int64_t start = total * tid / nth, end = total * (tid + 1) / nth;              \
            KSWITCH(fwd_span, SUF, x, y, start, end, inner, C, t, ctab)                          \
        }                                                                                        \
        free(ctab);                                                                              \
        return 0;                                                                                \
    }                                                                                            \
    _Pragma("omp parallel num_threads(nt)")                                                      \
    FOR_THREAD_SHARE_IN_ORDER(                                                                   \
        KSWITCH(fwd_row, SUF, x + o * C, y + o * C, C, t, coef, S),                              \
        KSWITCH(fwd_block, SUF, x + i, y + i, nblk, bs, len, t, coef, S, Cc, c))                 \
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
    if (RED_OK && sizeof(T) == 4) {                                                              \
        int red = sums_red_walk_f32((const float*)x, (const float*)g, outer, C, inner, K,        \
                                    (const float*)t, (const float*)coef, Cc, nthreads, out);     \
        if (red >= 0) return red;                                                                \
    }                                                                                            \
    int nt = pick_threads(total, nthreads);                                                      \
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
                KSWITCH(stats_block0, SUF, x + i, g ? g + i : NULL, nblk, bs, len, t, coef, S,   \
                        Cc, c, local + c, NULL),                                                 \
                KSWITCH(stats_block1, SUF, x + i, g ? g + i : NULL, 1, 0, len, t, coef, S, Cc,   \
                        c, NULL, st),                                                            \
                KSWITCH(stats_finish, SUF, st, local + c, Cc), state_stride(2))                  \
            _Pragma("omp critical(repact_pq_reduce)")                                            \
            for (int64_t j = 0; j < 2 * Cc; ++j) out[j] += local[j];                             \
            free(local);                                                                         \
        }                                                                                        \
    }                                                                                            \
    return failed ? 2 : 0;                                                                       \
}                                                                                                \
                                                                                                 \
int repact_pq_stats_##SUF(const T* x, int64_t outer, int64_t C, int64_t inner, int64_t K,        \
                          const T* t, const T* coef, int64_t Cc, int nthreads, double* out) {    \
    return pq_sums_##SUF(x, NULL, outer, C, inner, K, t, coef, Cc, nthreads, out);               \
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
    if (RED_OK && sizeof(T) == 4 && gcoef) {                                                     \
        int red = bwd_red_walk_f32((const float*)x, (const float*)g, (float*)gx, gcoef, aff,     \
                                   outer, C, inner, K, (const float*)t, (const float*)coef, Cc,  \
                                   nthreads);                                                    \
        if (red >= 0) return red;                                                                \
    }                                                                                            \
    int nt = pick_threads(total, nthreads);                                                      \
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
                KSWITCH(bwd_block0, SUF, x + i, g + i, gx ? gx + i : NULL, local, aff, nblk, bs,  \
                        len, t, coef, S, Cc, c, NULL),                                           \
                KSWITCH(bwd_block1, SUF, x + i, g + i, gx ? gx + i : NULL, NULL, aff, 1, 0, len, \
                        t, coef, S, Cc, c, st),                                                  \
                KSWITCH(bwd_finish, SUF, st, local + c, S, Cc), state_stride(3 + 3 * K))         \
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
        if (has_aff) g = (alv * g + bev * (ev + v * t)) + dev;                                   \
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

/* Per-channel sums walk memory in order; a block's vector sums then go to its channel. With
 * AVX-512 float they are folded into one vector (two sums: lanes 0-7, 8-15; four: 0-3, 8-11,
 * 4-7, 12-15) added to the channel's running vector, which is flushed into doubles every
 * RED_FLUSH elements; elsewhere each block's sums are added up lane by lane. */
#if RED_OK
#define HSB_FOLD 1
static const int HSB_OWNER[2][16] = {{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},
                                     {0, 0, 0, 0, 2, 2, 2, 2, 1, 1, 1, 1, 3, 3, 3, 3}};
static void hsb_fold_flush(float* restrict fv, int64_t* restrict cnt, double* restrict o, int64_t os, int na) {
    for (int l = 0; l < 16; ++l) { o[HSB_OWNER[na == 4][l] * os] += fv[l]; fv[l] = 0.0f; }
    *cnt = 0;
}
static inline void hsb_fold_deposit(float* restrict fv, int64_t* restrict cnt, const void* acc, int na, int64_t m,
                             double* restrict o, int64_t os) {
    vf32 a[4];
    memcpy(a, acc, sizeof(vf32) * (size_t)na);
    vf32 v = red_pair(a[0], a[1], RED_A0, RED_A1);
    if (na == 4) v = red_pair(v, red_pair(a[2], a[3], RED_A0, RED_A1), RED_B0, RED_B1);
    vf32 cur;
    memcpy(&cur, fv, sizeof cur);
    cur += v;
    memcpy(fv, &cur, sizeof cur);
    *cnt += m;
    if (*cnt >= RED_FLUSH) hsb_fold_flush(fv, cnt, o, os, na);
}
#else
#define HSB_FOLD 0
static void hsb_fold_flush(float* fv, int64_t* cnt, double* o, int64_t os, int na) {
    (void)fv; (void)cnt; (void)o; (void)os; (void)na;
}
static void hsb_fold_deposit(float* fv, int64_t* cnt, const void* acc, int na, int64_t m, double* o, int64_t os) {
    (void)fv; (void)cnt; (void)acc; (void)na; (void)m; (void)o; (void)os;
}
#endif

/* a thread's per-channel store for the sums: na doubles per channel (planar, local[j * C + c])
 * and, when folding, a running vector and an element count per channel */
typedef struct {
    double* local;
    float* fold;
    int64_t* cnt;
} HsbStore;

static int hsb_store(HsbStore* st, int64_t C, int na, int fold) {
    st->local = (double*)calloc((size_t)(na * C), sizeof(double));
    st->fold = fold ? (float*)aligned_alloc(64, (size_t)C * 64) : NULL;
    st->cnt = fold ? (int64_t*)calloc((size_t)C, sizeof(int64_t)) : NULL;
    if (st->fold) memset(st->fold, 0, (size_t)C * 64);
    return st->local && (!fold || (st->fold && st->cnt));
}

/* flush the running vectors, add the store into out[j * Cc + c], free it */
static void hsb_store_finish(HsbStore* st, int64_t C, int na, double* out, int ok) {
    for (int64_t c = 0; ok && st->fold && c < C; ++c) hsb_fold_flush(st->fold + 16 * c, st->cnt + c, st->local + c, C, na);
    if (ok) {
        _Pragma("omp critical(repact_pq_reduce)")
        for (int64_t j = 0; j < na * C; ++j) out[j] += st->local[j];
    }
    free(st->local);
    free(st->fold);
    free(st->cnt);
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
#define HSB_STRADDLE(T, inner) ((inner) >= VBYTES / (int64_t)sizeof(T) && (inner) < 16 * (VBYTES / (int64_t)sizeof(T)))

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
        hsb_deposit_##SUF(acc_, na, (M), st->fold ? st->fold + 16 * ch_ : NULL,                  \
                          st->cnt ? st->cnt + ch_ : NULL, st->local + ch_, C, d_);               \
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
/* a run's or block's vector sums acc[na] (m elements) for one channel: folded into the channel's \
 * running vector (AVX-512 float; flushes into o[j * os]), or lane by lane added to d[j] */      \
static inline void hsb_deposit_##SUF(const VT* acc, int na, int64_t m, float* fold, int64_t* cnt,  \
                                     double* o, int64_t os, double* d) {                         \
    enum { L = VBYTES / sizeof(T) };                                                             \
    if (HSB_FOLD && sizeof(T) == 4 && fold) {                                                    \
        hsb_fold_deposit(fold, cnt, acc, na, m, o, os);                                          \
        return;                                                                                  \
    }                                                                                            \
    for (int j = 0; j < na; ++j)                                                                 \
        for (int l = 0; l < L; ++l) d[j] += acc[j][l];                                           \
}                                                                                                \
                                                                                                 \
/* sum w and sum w s(x) (w = s, or g when gp) over a run of n elements of one channel, added to  \
 * o[0] and o[os] (with fold: the vector sums folded into the channel's running vector) */      \
static void hsb_sums_run_##SUF(const T* restrict xp, const T* restrict gp, int64_t n,             \
                               const T* restrict cf, int64_t cs, double* restrict o, int64_t os,  \
                               float* fold, int64_t* cnt) {                                       \
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
    hsb_deposit_##SUF(sv, 2, n, fold, cnt, o, os, dd);                                           \
    d1 = dd[0];                                                                                  \
    d2 = dd[1];                                                                                  \
    if (d1 != 0.0 || d2 != 0.0) { /* (with folding, only blocks that flushed) */                 \
        o[0] += d1;                                                                              \
        o[os] += d2;                                                                             \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
/* the backward over a run of n elements of one channel: h = g (af == NULL) or af[0] g +       \
 * af[as] s(x) + af[2 as], gx = h s'(x) (gxp != NULL), and (o != NULL) the four sums added to   \
 * o[j * os] (or folded, as in hsb_sums_run) */                                                  \
static void hsb_bwd_run_##SUF(const T* restrict xp, const T* restrict gp, T* restrict gxp,        \
                              int64_t n, const T* restrict cf, int64_t cs,                        \
                              const double* restrict af, int64_t as, double* restrict o,          \
                              int64_t os, float* fold, int64_t* cnt) {                            \
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
            if (has_aff) g = (al * g + be * (e + v * t)) + de;                                   \
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
        hsb_deposit_##SUF(av4, NHSB, n, fold, cnt, o, os, d);                                    \
    }                                                                                            \
    if (sums && (d[0] != 0.0 || d[1] != 0.0 || d[2] != 0.0 || d[3] != 0.0))                      \
        for (int j = 0; j < NHSB; ++j) o[j * os] += d[j];                                        \
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
        float* fv = st->fold ? st->fold + 16 * c : NULL;                                         \
        int64_t* cn = st->cnt ? st->cnt + c : NULL;                                              \
        double* o = st->local ? st->local + c : NULL;                                            \
        if (mode == HSB_FWD) hsb_fwd_run_##SUF(x + pos, out + pos, len, coef + c, Cc);           \
        else if (mode == HSB_SUMS)                                                               \
            hsb_sums_run_##SUF(x + pos, g ? g + pos : NULL, len, coef + c, Cc, o, Cc, fv, cn);   \
        else hsb_bwd_run_##SUF(x + pos, g + pos, out ? out + pos : NULL, len, coef + c, Cc,      \
                               aff ? aff + c : NULL, Cc, o, Cc, fv, cn);                         \
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
    const int nt = pick_threads(total, nthreads);                                                \
    _Pragma("omp parallel num_threads(nt)")                                                      \
    {                                                                                            \
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();                       \
        HsbStore none = {NULL, NULL, NULL};                                                      \
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
    const int nt = pick_threads(total, nthreads);                                                \
    int failed = 0;                                                                              \
    _Pragma("omp parallel num_threads(nt)")                                                      \
    {                                                                                            \
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();                       \
        HsbStore st = {NULL, NULL, NULL};                                                        \
        const int ok = !out || hsb_store(&st, Cc, na, HSB_FOLD && sizeof(T) == 4 && Cc > 1);     \
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
 * gamma/beta (Cc) switch on RepAct-III's training BatchNorm (batch statistics over each table row).
 *
 * forward:  y = s(x) (I/II), or gamma (s(x) - mean) / sqrt(var + eps) + beta with the batch mean
 *           and (biased) variance of s(x), written to mean/var (Cc, double) (III).
 * backward: gx, and the gradients of w_raw, slope, gamma, beta (each output may be NULL).
 * Table math runs in double; the kernels see the table rounded to T, and so do the sums that use it.
 */
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
int repact_train_forward_##SUF(const T* x, T* y, int64_t outer, int64_t C, int64_t inner,        \
                               int64_t K, const T* t, const T* w_raw, const T* slope,            \
                               const T* base, const T* part, int64_t nb, int softmax,            \
                               int64_t Cc, const T* gamma, const T* beta, double eps,            \
                               double* mean, double* var, int nthreads) {                        \
    if ((K < 0 && K != HSWISH_BASIS) || K > MAXK || nb < 1) return 1;                            \
    const int64_t S = TRAIN_SEGMENTS(K), S3 = TRAIN_ROWS(S), total = outer * C * inner;          \
    double* w = (double*)malloc(sizeof(double) * (size_t)(Cc * nb + Cc * S3 + 2 * Cc));          \
    T* coef = (T*)malloc(sizeof(T) * (size_t)(Cc * S3));                                         \
    int rc = (w && coef) ? 0 : 2;                                                                \
    if (rc == 0) {                                                                               \
        double* table = w + Cc * nb;                                                             \
        double* st = table + Cc * S3;                                                            \
        train_table_##SUF(w_raw, slope, base, part, nb, S, Cc, softmax, w, table, coef);         \
        if (gamma) {                                                                             \
            rc = train_sums_##SUF(x, NULL, outer, C, inner, K, t, coef, Cc, nthreads, st);       \
            const double n = (double)(total / Cc);                                               \
            for (int64_t c = 0; rc == 0 && c < Cc; ++c) {                                        \
                const double m = st[c] / n;                                                      \
                double v = st[Cc + c] / n - m * m;                                               \
                v = v > 0.0 ? v : 0.0;                                                           \
                mean[c] = m;                                                                     \
                var[c] = v;                                                                      \
                const double scale = (double)gamma[c] / sqrt(v + eps);                           \
                const double shift = (double)beta[c] - m * scale;                                \
                for (int64_t js = 0; js < S3; ++js) { /* rows js < TRAIN_CONST(S): constants */  \
                    T* q = coef + js * Cc + c;                                                   \
                    *q = (T)((double)*q * scale + (js < TRAIN_CONST(S) ? shift : 0.0));          \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        if (rc == 0) rc = train_fwd_##SUF(x, y, outer, C, inner, K, t, coef, Cc, nthreads);      \
    }                                                                                            \
    free(w);                                                                                     \
    free(coef);                                                                                  \
    return rc;                                                                                   \
}                                                                                                \
                                                                                                 \
int repact_train_backward_##SUF(const T* x, const T* g, T* gx, int64_t outer, int64_t C,         \
                                int64_t inner, int64_t K, const T* t, const T* w_raw,            \
                                const T* slope, const T* base, const T* part, int64_t nb,        \
                                int softmax, int64_t Cc, const T* gamma, const double* mean,     \
                                const double* var, double eps, T* g_w, T* g_slope, T* g_gamma,   \
                                T* g_beta, int nthreads) {                                       \
    if ((K < 0 && K != HSWISH_BASIS) || K > MAXK || nb < 1) return 1;                            \
    const int64_t S = TRAIN_SEGMENTS(K), S3 = TRAIN_ROWS(S), total = outer * C * inner;          \
    const int need_table = g_w != NULL || g_slope != NULL;                                       \
    double* w = (double*)malloc(sizeof(double) * (size_t)(Cc * nb + 2 * Cc * S3 + 3 * Cc + nb)); \
    T* coef = (T*)malloc(sizeof(T) * (size_t)(Cc * S3));                                         \
    int rc = (w && coef) ? 0 : 2;                                                                \
    if (rc == 0) {                                                                               \
        double* table = w + Cc * nb;                                                             \
        double* gc = table + Cc * S3;       /* planar sums from the kernel (see train_bwd) */    \
        double* aff = gc + Cc * S3;         /* (3, Cc): alpha, beta, delta */                    \
        double* gwb = aff + 3 * Cc;         /* (nb) scratch */                                   \
        train_table_##SUF(w_raw, slope, base, part, nb, S, Cc, softmax, w, table, coef);         \
        if (gamma) {                                                                             \
            /* BN backward: dL/ds = alpha g + beta s + delta needs sum g and sum g s first */    \
            rc = train_sums_##SUF(x, g, outer, C, inner, K, t, coef, Cc, nthreads, gc);          \
            const double n = (double)(total / Cc);                                               \
            for (int64_t c = 0; rc == 0 && c < Cc; ++c) {                                        \
                const double sum_g = gc[c], sum_gs = gc[Cc + c];                                 \
                const double invstd = 1.0 / sqrt(var[c] + eps);                                  \
                const double sum_gshat = invstd * (sum_gs - mean[c] * sum_g);                    \
                const double gam = (double)gamma[c];                                             \
                const double alpha = gam * invstd;                                               \
                const double be = -gam * invstd * invstd * sum_gshat / n;                        \
                aff[c] = alpha;                                                                  \
                aff[Cc + c] = be;                                                                \
                aff[2 * Cc + c] = -alpha * sum_g / n - be * mean[c];                             \
                if (g_gamma) g_gamma[c] = (T)sum_gshat;                                          \
                if (g_beta) g_beta[c] = (T)sum_g;                                                \
            }                                                                                    \
        }                                                                                        \
        if (rc == 0 && (gx || need_table))                                                       \
            rc = train_bwd_##SUF(x, g, gx, need_table ? gc : NULL, gamma ? aff : NULL,           \
                                 outer, C, inner, K, t, coef, Cc, nthreads);                     \
        for (int64_t c = 0; rc == 0 && need_table && c < Cc; ++c) {                              \
            /* the table's VJP: d table[c] / d w[c, b] = base[b] + slope[c] part[b] */           \
            const double* wc = w + c * nb;                                                       \
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
    free(w);                                                                                     \
    free(coef);                                                                                  \
    return rc;                                                                                   \
}

DEFINE_TRAIN(float, f32)
DEFINE_TRAIN(double, f64)

int repact_native_abi_version(void) { return 5; }
