/*
 * repact native CPU kernels for the piecewise quadratic y = a0 + x * (a1 + a2 * x), where the
 * coefficients (a0, a1, a2) are those of the segment that x falls in: segment s holds
 * knots[s-1] <= x < knots[s] (knots sorted, K of them, S = K + 1 segments).
 *
 * Layout. The tensor is seen as (outer, C, inner) in memory order. Coefficients are "planar":
 * coef[(j * S + s) * Cc + c] is the x^j coefficient of segment s for channel c, Cc in {1, C}.
 * With Cc == 1 the caller passes outer = 1, C = 1, inner = numel (the whole tensor is one block).
 *
 * Every kernel reads its inputs only and writes fresh outputs. Moment sums (the gradient of the
 * coefficients) are accumulated in double.
 *
 * Built by repact/_native/__init__.py with -O3 (and -march=native where the compiler takes it)
 * and OpenMP; the library shares the OpenMP runtime that PyTorch has already loaded.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#define MAXK 8
#define LANES 16
#define FLUSH 4096

static int pick_threads(int64_t work, int nthreads) {
    int64_t grain = 32768;
    int64_t nt = (work + grain - 1) / grain;
    if (nt > nthreads) nt = nthreads;
    if (nt < 1) nt = 1;
    return (int)nt;
}

/* ------------------------------------------------------------------------------------------ */
/* Forward                                                                                     */
/* ------------------------------------------------------------------------------------------ */

#define DEFINE_FWD_BLOCK(T, SUF, K)                                                              \
static void fwd_block_##SUF##_k##K(const T* restrict xp, T* restrict yp, int64_t n,              \
                                   const T* restrict t, const T* restrict coef, int64_t S,       \
                                   int64_t Cc, int64_t c) {                                      \
    T c0[K + 1], c1[K + 1], c2[K + 1], tk[K + 1];                                                \
    for (int s = 0; s <= K; ++s) {                                                               \
        c0[s] = coef[(0 * S + s) * Cc + c];                                                      \
        c1[s] = coef[(1 * S + s) * Cc + c];                                                      \
        c2[s] = coef[(2 * S + s) * Cc + c];                                                      \
    }                                                                                            \
    for (int s = 0; s < K; ++s) tk[s] = t[s];                                                    \
    for (int64_t i = 0; i < n; ++i) {                                                            \
        T v = xp[i];                                                                             \
        T a0 = c0[0], a1 = c1[0], a2 = c2[0];                                                    \
        for (int k = 0; k < K; ++k) {                                                            \
            int m = v >= tk[k];                                                                  \
            a0 = m ? c0[k + 1] : a0;                                                             \
            a1 = m ? c1[k + 1] : a1;                                                             \
            a2 = m ? c2[k + 1] : a2;                                                             \
        }                                                                                        \
        T q = a2 * v;                                                                            \
        q = (a2 == (T)0) ? (T)0 : q; /* keeps +-inf finite-slope segments at +-inf, not NaN */    \
        yp[i] = a0 + v * (a1 + q);                                                               \
    }                                                                                            \
}                                                                                                \
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
}

#define DEFINE_FWD_ALL_K(T, SUF)                                                                 \
DEFINE_FWD_BLOCK(T, SUF, 0) DEFINE_FWD_BLOCK(T, SUF, 1) DEFINE_FWD_BLOCK(T, SUF, 2)              \
DEFINE_FWD_BLOCK(T, SUF, 3) DEFINE_FWD_BLOCK(T, SUF, 4) DEFINE_FWD_BLOCK(T, SUF, 5)              \
DEFINE_FWD_BLOCK(T, SUF, 6) DEFINE_FWD_BLOCK(T, SUF, 7) DEFINE_FWD_BLOCK(T, SUF, 8)

#define FWD_SWITCH(SUF, KIND, ...)                                                               \
    switch (K) {                                                                                 \
        case 0: fwd_##KIND##_##SUF##_k0(__VA_ARGS__); break;                                     \
        case 1: fwd_##KIND##_##SUF##_k1(__VA_ARGS__); break;                                     \
        case 2: fwd_##KIND##_##SUF##_k2(__VA_ARGS__); break;                                     \
        case 3: fwd_##KIND##_##SUF##_k3(__VA_ARGS__); break;                                     \
        case 4: fwd_##KIND##_##SUF##_k4(__VA_ARGS__); break;                                     \
        case 5: fwd_##KIND##_##SUF##_k5(__VA_ARGS__); break;                                     \
        case 6: fwd_##KIND##_##SUF##_k6(__VA_ARGS__); break;                                     \
        case 7: fwd_##KIND##_##SUF##_k7(__VA_ARGS__); break;                                     \
        default: fwd_##KIND##_##SUF##_k8(__VA_ARGS__); break;                                    \
    }

#define DEFINE_FWD_ENTRY(T, SUF)                                                                 \
int repact_pq_forward_##SUF(const T* x, T* y, int64_t outer, int64_t C, int64_t inner,           \
                            int64_t K, const T* t, const T* coef, int64_t Cc, int nthreads) {    \
    if (K < 0 || K > MAXK) return 1;                                                             \
    const int64_t S = K + 1;                                                                     \
    const int64_t total = outer * C * inner;                                                     \
    if (total == 0) return 0;                                                                    \
    if (inner == 1 && C > 1) {                                                                   \
        int nt = pick_threads(total, nthreads);                                                  \
        _Pragma("omp parallel for num_threads(nt) schedule(static)")                             \
        for (int64_t o = 0; o < outer; ++o) {                                                    \
            FWD_SWITCH(SUF, row, x + o * C, y + o * C, C, t, coef, S)                            \
        }                                                                                        \
        return 0;                                                                                \
    }                                                                                            \
    int nt = pick_threads(total, nthreads);                                                      \
    _Pragma("omp parallel num_threads(nt)")                                                      \
    {                                                                                            \
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();                             \
        int64_t start = total * tid / nth, end = total * (tid + 1) / nth;                        \
        int64_t i = start;                                                                       \
        while (i < end) {                                                                        \
            int64_t blk = i / inner, off = i - blk * inner;                                      \
            int64_t c = (Cc == 1) ? 0 : blk % C;                                                 \
            int64_t len = inner - off;                                                           \
            if (len > end - i) len = end - i;                                                    \
            FWD_SWITCH(SUF, block, x + i, y + i, len, t, coef, S, Cc, c)                         \
            i += len;                                                                            \
        }                                                                                        \
    }                                                                                            \
    return 0;                                                                                    \
}

DEFINE_FWD_ALL_K(float, f32)
DEFINE_FWD_ALL_K(double, f64)
DEFINE_FWD_ENTRY(float, f32)
DEFINE_FWD_ENTRY(double, f64)

/* ------------------------------------------------------------------------------------------ */
/* Backward: gx = g * (a1 + 2 a2 x); gcoef[j][s][c] += sum over segment s of g * x^j          */
/* ------------------------------------------------------------------------------------------ */

#define DEFINE_BWD_BLOCK(T, SUF, K)                                                              \
static void bwd_block_##SUF##_k##K(const T* restrict xp, const T* restrict gp, T* restrict gxp,  \
                                   double* restrict acc, int64_t n, const T* restrict t,         \
                                   const T* restrict coef, int64_t S, int64_t Cc, int64_t c) {   \
    T c1[K + 1], c2[K + 1], tk[K + 1];                                                           \
    for (int s = 0; s <= K; ++s) {                                                               \
        c1[s] = coef[(1 * S + s) * Cc + c];                                                      \
        c2[s] = coef[(2 * S + s) * Cc + c];                                                      \
    }                                                                                            \
    for (int s = 0; s < K; ++s) tk[s] = t[s];                                                    \
    if (gxp) {                                                                                   \
        for (int64_t i = 0; i < n; ++i) {                                                        \
            T v = xp[i];                                                                         \
            T a1 = c1[0], a2 = c2[0];                                                            \
            for (int k = 0; k < K; ++k) {                                                        \
                int m = v >= tk[k];                                                              \
                a1 = m ? c1[k + 1] : a1;                                                         \
                a2 = m ? c2[k + 1] : a2;                                                         \
            }                                                                                    \
            T q = (a2 + a2) * v;                                                                 \
            q = (a2 == (T)0) ? (T)0 : q;                                                         \
            gxp[i] = gp[i] * (a1 + q);                                                           \
        }                                                                                        \
    }                                                                                            \
    if (acc) {                                                                                   \
        T lane[3 * (K + 1)][LANES];                                                              \
        int64_t i = 0;                                                                           \
        while (i < n) {                                                                          \
            int64_t stop = i + FLUSH; if (stop > n) stop = n;                                    \
            memset(lane, 0, sizeof(lane));                                                       \
            int64_t vend = i + ((stop - i) / LANES) * LANES;                                     \
            for (; i < vend; i += LANES) {                                                       \
                for (int l = 0; l < LANES; ++l) {                                                \
                    T v = xp[i + l], gv = gp[i + l];                                             \
                    int seg = 0;                                                                 \
                    for (int k = 0; k < K; ++k) seg += (v >= tk[k]);                             \
                    T gx1 = gv * v, gx2 = gx1 * v;                                               \
                    for (int s = 0; s <= K; ++s) {                                               \
                        int on = (seg == s);                                                     \
                        lane[s][l] += on ? gv : (T)0;                                            \
                        lane[(K + 1) + s][l] += on ? gx1 : (T)0;                                 \
                        lane[2 * (K + 1) + s][l] += on ? gx2 : (T)0;                             \
                    }                                                                            \
                }                                                                                \
            }                                                                                    \
            for (int j = 0; j < 3 * (K + 1); ++j) {                                              \
                double sum = 0.0;                                                                \
                for (int l = 0; l < LANES; ++l) sum += (double)lane[j][l];                       \
                acc[(j / (K + 1) * S + j % (K + 1)) * Cc + c] += sum;                            \
            }                                                                                    \
            for (; i < stop; ++i) {                                                              \
                double v = (double)xp[i], gv = (double)gp[i];                                    \
                int seg = 0;                                                                     \
                for (int k = 0; k < K; ++k) seg += (xp[i] >= tk[k]);                             \
                acc[(0 * S + seg) * Cc + c] += gv;                                               \
                acc[(1 * S + seg) * Cc + c] += gv * v;                                           \
                acc[(2 * S + seg) * Cc + c] += gv * v * v;                                       \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
}                                                                                                \
static void bwd_row_##SUF##_k##K(const T* restrict xp, const T* restrict gp, T* restrict gxp,    \
                                 double* restrict acc, int64_t C, const T* restrict t,           \
                                 const T* restrict coef, int64_t S) {                            \
    T tk[K + 1];                                                                                 \
    for (int s = 0; s < K; ++s) tk[s] = t[s];                                                    \
    const T* restrict q1 = coef + S * C;                                                         \
    const T* restrict q2 = coef + 2 * S * C;                                                     \
    if (gxp) {                                                                                   \
        for (int64_t c = 0; c < C; ++c) {                                                        \
            T v = xp[c];                                                                         \
            T a1 = q1[c], a2 = q2[c];                                                            \
            for (int k = 0; k < K; ++k) {                                                        \
                int m = v >= tk[k];                                                              \
                a1 = m ? q1[(k + 1) * C + c] : a1;                                               \
                a2 = m ? q2[(k + 1) * C + c] : a2;                                               \
            }                                                                                    \
            T q = (a2 + a2) * v;                                                                 \
            q = (a2 == (T)0) ? (T)0 : q;                                                         \
            gxp[c] = gp[c] * (a1 + q);                                                           \
        }                                                                                        \
    }                                                                                            \
    if (acc) {                                                                                   \
        for (int64_t c = 0; c < C; ++c) {                                                        \
            double v = (double)xp[c], gv = (double)gp[c];                                        \
            double gx1 = gv * v, gx2 = gx1 * v;                                                  \
            T xv = xp[c];                                                                        \
            for (int s = 0; s <= K; ++s) {                                                       \
                int on = 1;                                                                      \
                if (s > 0) on = on && (xv >= tk[s - 1]);                                         \
                if (s < K) on = on && !(xv >= tk[s]);                                            \
                acc[(0 * S + s) * C + c] += on ? gv : 0.0;                                       \
                acc[(1 * S + s) * C + c] += on ? gx1 : 0.0;                                      \
                acc[(2 * S + s) * C + c] += on ? gx2 : 0.0;                                      \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
}

#define DEFINE_BWD_ALL_K(T, SUF)                                                                 \
DEFINE_BWD_BLOCK(T, SUF, 0) DEFINE_BWD_BLOCK(T, SUF, 1) DEFINE_BWD_BLOCK(T, SUF, 2)              \
DEFINE_BWD_BLOCK(T, SUF, 3) DEFINE_BWD_BLOCK(T, SUF, 4) DEFINE_BWD_BLOCK(T, SUF, 5)              \
DEFINE_BWD_BLOCK(T, SUF, 6) DEFINE_BWD_BLOCK(T, SUF, 7) DEFINE_BWD_BLOCK(T, SUF, 8)

#define BWD_SWITCH(SUF, KIND, ...)                                                               \
    switch (K) {                                                                                 \
        case 0: bwd_##KIND##_##SUF##_k0(__VA_ARGS__); break;                                     \
        case 1: bwd_##KIND##_##SUF##_k1(__VA_ARGS__); break;                                     \
        case 2: bwd_##KIND##_##SUF##_k2(__VA_ARGS__); break;                                     \
        case 3: bwd_##KIND##_##SUF##_k3(__VA_ARGS__); break;                                     \
        case 4: bwd_##KIND##_##SUF##_k4(__VA_ARGS__); break;                                     \
        case 5: bwd_##KIND##_##SUF##_k5(__VA_ARGS__); break;                                     \
        case 6: bwd_##KIND##_##SUF##_k6(__VA_ARGS__); break;                                     \
        case 7: bwd_##KIND##_##SUF##_k7(__VA_ARGS__); break;                                     \
        default: bwd_##KIND##_##SUF##_k8(__VA_ARGS__); break;                                    \
    }

#define DEFINE_BWD_ENTRY(T, SUF)                                                                 \
int repact_pq_backward_##SUF(const T* x, const T* g, T* gx, double* gcoef, int64_t outer,        \
                             int64_t C, int64_t inner, int64_t K, const T* t, const T* coef,     \
                             int64_t Cc, int nthreads) {                                         \
    if (K < 0 || K > MAXK) return 1;                                                             \
    const int64_t S = K + 1;                                                                     \
    const int64_t total = outer * C * inner;                                                     \
    const int64_t nacc = 3 * S * Cc;                                                             \
    if (gcoef) memset(gcoef, 0, sizeof(double) * nacc);                                          \
    if (total == 0) return 0;                                                                    \
    int nt = pick_threads(total, nthreads);                                                      \
    int failed = 0;                                                                              \
    _Pragma("omp parallel num_threads(nt)")                                                      \
    {                                                                                            \
        double* local = NULL;                                                                    \
        if (gcoef) {                                                                             \
            local = (double*)calloc((size_t)nacc, sizeof(double));                               \
            if (!local) {                                                                        \
                _Pragma("omp atomic write")                                                      \
                failed = 1;                                                                      \
            }                                                                                    \
        }                                                                                        \
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();                             \
        if (!(gcoef && !local)) {                                                                \
            if (inner == 1 && C > 1) {                                                           \
                int64_t o0 = outer * tid / nth, o1 = outer * (tid + 1) / nth;                    \
                for (int64_t o = o0; o < o1; ++o) {                                              \
                    BWD_SWITCH(SUF, row, x + o * C, g + o * C, gx ? gx + o * C : NULL, local,    \
                               C, t, coef, S)                                                    \
                }                                                                                \
            } else {                                                                             \
                int64_t start = total * tid / nth, end = total * (tid + 1) / nth;                \
                int64_t i = start;                                                               \
                while (i < end) {                                                                \
                    int64_t blk = i / inner, off = i - blk * inner;                              \
                    int64_t c = (Cc == 1) ? 0 : blk % C;                                         \
                    int64_t len = inner - off;                                                   \
                    if (len > end - i) len = end - i;                                            \
                    BWD_SWITCH(SUF, block, x + i, g + i, gx ? gx + i : NULL, local, len, t,      \
                               coef, S, Cc, c)                                                   \
                    i += len;                                                                    \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        if (local) {                                                                             \
            _Pragma("omp critical(repact_pq_reduce)")                                            \
            for (int64_t j = 0; j < nacc; ++j) gcoef[j] += local[j];                             \
            free(local);                                                                         \
        }                                                                                        \
    }                                                                                            \
    return failed ? 2 : 0;                                                                       \
}

DEFINE_BWD_ALL_K(float, f32)
DEFINE_BWD_ALL_K(double, f64)
DEFINE_BWD_ENTRY(float, f32)
DEFINE_BWD_ENTRY(double, f64)

int repact_native_abi_version(void) { return 1; }
