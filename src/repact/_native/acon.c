/*
 * repact native CPU kernels for ACON ("Activate or Not", arXiv 2009.04759):
 *
 *     y = d x sigmoid(beta d x) + p2 x,   d = p1 - p2   (p1 = 1, p2 = 0, beta = 1 where NULL)
 *
 * ACON-A/B/C per channel or per layer, and meta-ACON-C's elementwise part (beta per sample and
 * channel, per sample or per element). One call each way: the backward recomputes the sigmoid
 * from x and gives gx and the parameters' gradients in the same pass.
 *
 * Layout as in piecewise.c: the tensor is (outer, C, inner) in memory order; blocks (inner > 1)
 * run in SIMD vectors along the block, rows (inner == 1, channels last) along the channels.
 * Blocks of one to sixteen vectors with parameters of their own (7x7, 14x14 maps) run in vectors
 * that may straddle two blocks, each lane with its block's parameters (fwd_straddle); where no
 * parameter depends on the sample, they read their lanes' parameters from a table laid out like
 * one sample, built once per call (param_table), whole samples four at a time (one table read
 * per four vectors; no per-block steps), and backward sums per element of that table, then per
 * channel in double every FLUSH_ROWS samples. A
 * parameter of element (o, c, i) is read at [(o / od) so + c sc], od rows of outer per sample:
 * (so, sc) = (0, 0) one value, (0, 1) per channel, (C, 1) per sample and channel, (1, 0) per
 * sample; beta may also be laid out like x (beta_full), its gradient then written per element.
 *
 * The sigmoid: e = exp(-|z|) (Cody-Waite reduction and a polynomial, ~1 ulp; 0 below the
 * smallest normal number), r = 1 / (1 + e); sigmoid(z) = r and 1 - sigmoid(z) = e r for z >= 0,
 * the other way round for z < 0, so neither overflows nor cancels for any |z|. Backward, per
 * element, with u = d x, z = beta u, s = sigmoid(z), q = 1 - s, core = s (1 + z q):
 *     gx = g (core d + p2),   dL/dp1 = sum g x core,   dL/dp2 = sum (g x - g x core),
 *     dL/dbeta = sum g (u s) (u q)
 * summed in float lanes (flushed into double every FLUSH vectors and at each block's end, each
 * vector's lanes added pairwise), per slot and thread in double,
 * then over threads in thread order (the same sums for the same thread count).
 *
 * Entry points (prototypes from repact/_native/__init__.py's table; 0 = done, 1 = bad arguments,
 * 2 = out of memory): repact_acon_forward_{f32,f64}, repact_acon_backward_{f32,f64}.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "simd.h"

/* a x + b as one fused multiply-add where the CPU has one (ISO C mode leaves contraction off) */
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif

/* inlined even where the compiler's heuristics would not: the element helpers of the kernels' loops */
#define ALWAYS_INLINE inline __attribute__((always_inline))

/* vectors between flushes of the float sums into double (128 additions per lane) */
#define FLUSH 128
/* rows between flushes of the per-channel float sums of the row kernels */
#define FLUSH_ROWS 64

/* threads: one per 16384 elements */
#define GRAIN 16384

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

/* vmax_SUF(a, lo): max(a, lo) lane by lane, NaN staying NaN (one instruction on x86: maxps/maxpd
 * give their second operand where either is NaN); X is the intrinsics' ps or pd, D the x86 vector
 * type's suffix (none or d) */
#define DEFINE_VMAX(VT, VI, SUF, X, D)                                                           \
static inline VT vmax_##SUF(VT a, VT lo) {                                                       \
    VMAX_BODY(VT, VI, X, D)                                                                      \
}
#if defined(__AVX512F__)
#define VMAX_BODY(VT, VI, X, D) return (VT)_mm512_max_##X((__m512##D)lo, (__m512##D)a);
#elif defined(__AVX__)
#define VMAX_BODY(VT, VI, X, D) return (VT)_mm256_max_##X((__m256##D)lo, (__m256##D)a);
#elif defined(__SSE2__)
#define VMAX_BODY(VT, VI, X, D) return (VT)_mm_max_##X((__m128##D)lo, (__m128##D)a);
#else
#define VMAX_BODY(VT, VI, X, D) return VSEL(VT, VI, a < lo, lo, a);
#endif
DEFINE_VMAX(vf32, vi32, f32, ps, )
DEFINE_VMAX(vf64, vi64, f64, pd, d)

/* e^a for a <= 0 (NaN stays NaN): a = n ln2 + f, |f| <= ln2 / 2, e^a = 2^n e^f with
 * e^f = 1 + f + f^2 q(f), q of degree 4 fitted for the least largest relative error on
 * |f| <= ln2 / 2 (1e-9 in exact arithmetic; float32 rounding dominates). t = a log2(e) + magic
 * rounds n into t's low bits, with the exponent bias added: 2^n is those bits shifted into place */
static inline vf32 exp_neg_f32(vf32 a) {
    const vf32 zero = {0};
    const vf32 lo = zero - 88.0f, magic = zero + 12583039.0f; /* 1.5 * 2^23 + 127 */
    a = vmax_f32(a, lo);                                     /* n >= -127; -127 makes 2^n = 0 */
    const vf32 t = a * 1.44269504088896341f + magic;
    const vf32 n = t - magic;
    vf32 f = a - n * 0.693359375f;
    f = f + n * 2.12194440054690583e-4f;
    vf32 p = zero + 0.00134643882928729f;
    p = p * f + 0.00835743862908753f;
    p = p * f + 0.0416721718732817f;
    p = p * f + 0.166666638620208f;
    p = p * f + 0.499999994222965f;
    p = p * f + 1.0f;
    p = p * f + 1.0f;
    return p * (vf32)((vu32)t << 23);
}

/* exp_neg_f32 in double: a Taylor polynomial of degree 13 (~1 ulp) */
static inline vf64 exp_neg_f64(vf64 a) {
    const vf64 zero = {0};
    const vf64 lo = zero - 709.0, magic = zero + 6755399441056767.0; /* 1.5 * 2^52 + 1023 */
    a = vmax_f64(a, lo);                                              /* n >= -1023 */
    const vf64 t = a * 1.4426950408889634074 + magic;
    const vf64 n = t - magic;
    vf64 f = a - n * 6.93147180369123816490e-01;
    f = f - n * 1.90821492927058770002e-10;
    vf64 p = zero + 1.0 / 6227020800.0;
    static const double inv_fact[] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                                      1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0,
                                      1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0};
    for (int k = 0; k < 13; ++k) p = p * f + inv_fact[k];
    return p * (vf64)((vu64)t << 52);
}

/* S = sigmoid(Z), Q = 1 - sigmoid(Z) from e = exp(-|Z|) alone */
#define SIG_PARTS(VT, VI, SUF, SIGN, Z, S, Q)                                                   \
    {                                                                                            \
        const VT e_ = exp_neg_##SUF((VT)((VI)(Z) | (SIGN)));                                     \
        const VT r_ = one / (one + e_);                                                          \
        const VT er_ = e_ * r_;                                                                  \
        const VI pos_ = (Z) >= zero;                                                             \
        S = VSEL(VT, VI, pos_, r_, er_);                                                         \
        Q = VSEL(VT, VI, pos_, er_, r_);                                                         \
    }

/* OUT = y of one vector XV with parameters DV (= p1 - p2), P2V, BV; the sigmoid as SIG_PARTS's,
 * s = (1 or e) / (1 + e), one operation fewer where q is not needed */
#define FWD_VEC(VT, VI, SUF, SIGN, XV, DV, P2V, BV, OUT)                                         \
    {                                                                                            \
        const VT u_ = (XV) * (DV);                                                               \
        const VT z_ = u_ * (BV);                                                                 \
        const VT e_ = exp_neg_##SUF((VT)((VI)z_ | (SIGN)));                                      \
        const VT s_ = VSEL(VT, VI, z_ >= zero, one, e_) / (one + e_);                            \
        OUT = u_ * s_;                                                                           \
        if (has_p2) OUT = OUT + (XV) * (P2V);                                                    \
    }

/* GX = g dy/dx; TA = g x core, TB = g x, TC = g dy/dbeta (the three sums' terms) */
#define BWD_VEC(VT, VI, SUF, SIGN, XV, GV, DV, P2V, BV, GX, TA, TB, TC)                           \
    {                                                                                            \
        const VT u_ = (XV) * (DV);                                                               \
        const VT z_ = u_ * (BV);                                                                 \
        VT s_, q_;                                                                               \
        SIG_PARTS(VT, VI, SUF, SIGN, z_, s_, q_)                                                 \
        const VT core_ = s_ * (one + z_ * q_);                                                   \
        GX = has_p2 ? (GV) * (core_ * (DV) + (P2V)) : (GV) * (core_ * (DV));                     \
        TB = (GV) * (XV);                                                                        \
        TA = TB * core_;                                                                         \
        TC = (GV) * (u_ * s_) * (u_ * q_);                                                       \
    }

/* the straddling walks' step to the next block (channel c + 1, or channel 0 of the next row)
 * and its parameters as vectors dv, p2v, btv */
#define STRADDLE_NEXT(SUF)                                                                       \
    if (++c == C) {                                                                              \
        c = 0;                                                                                   \
        if (++ro == a->od) { ro = 0; ++r; }                                                      \
    }                                                                                            \
    bend += inner;                                                                               \
    block_params_##SUF(a, r, c, &d, &p2, &bt);                                                   \
    dv = zero + d; p2v = zero + p2; btv = zero + bt;

/* Parameter maps: value at [(o / od) so + c sc]; NULL gives the default */
typedef struct {
    int64_t so, sc;
} AconMap;

#define DEFINE_ACON(T, VT, VI, SUF, SIGN)                                                        \
typedef struct {                                                                                 \
    const T* p1;                                                                                 \
    const T* p2;                                                                                 \
    const T* beta;                                                                               \
    AconMap m1, m2, mb;                                                                          \
    int beta_full;                                                                               \
    int64_t od;                                                                                  \
} AconParams_##SUF;                                                                              \
                                                                                                 \
static inline T pval_##SUF(const T* p, AconMap m, int64_t r, int64_t c, T dflt) {                \
    return p ? p[r * m.so + c * m.sc] : dflt;                                                    \
}                                                                                                \
                                                                                                 \
/* L channels' values from c on (n of them valid; the rest 0) */                                 \
static inline VT pvec_##SUF(const T* p, AconMap m, int64_t r, int64_t c, int64_t n, T dflt) {    \
    const VT zero = {0};                                                                         \
    if (!p) return zero + dflt;                                                                  \
    if (!m.sc) return zero + p[r * m.so];                                                        \
    VT v = zero;                                                                                 \
    memcpy(&v, p + r * m.so + c, (size_t)n * sizeof(T));                                         \
    return v;                                                                                    \
}                                                                                                \
                                                                                                 \
/* one vector's y at [at, at + m bytes): x there, parameters dv, p2v and beta bv, or beta from bf \
 * there when given; lanes past m are zeros (the full vectors pass m = sizeof(VT)) */            \
static ALWAYS_INLINE void fwd_at_##SUF(const T* restrict x, T* restrict y, const T* restrict bf, \
                                       int64_t at, size_t m, VT dv, VT p2v, VT bv, int has_p2) { \
    const VT zero = {0}, one = zero + 1;                                                         \
    VT xv = zero, out;                                                                           \
    memcpy(&xv, x + at, m);                                                                      \
    if (bf) { bv = zero; memcpy(&bv, bf + at, m); }                                              \
    FWD_VEC(VT, VI, SUF, SIGN, xv, dv, p2v, bv, out)                                             \
    memcpy(y + at, &out, m);                                                                     \
}                                                                                                \
                                                                                                 \
/* fwd_at's backward: gx and gbf (beta's gradient per element) there when given; *ta, *tb, *tc the \
 * sums' terms (zero past m: g is zero-padded) */                                                \
static ALWAYS_INLINE void bwd_at_##SUF(const T* restrict x, const T* restrict g, T* restrict gx, \
                                       const T* restrict bf, T* restrict gbf, int64_t at, size_t m, VT dv, \
                                       VT p2v, VT bv, int has_p2, VT* ta, VT* tb, VT* tc) {      \
    const VT zero = {0}, one = zero + 1;                                                         \
    VT xv = zero, gv = zero, o;                                                                  \
    memcpy(&xv, x + at, m);                                                                      \
    memcpy(&gv, g + at, m);                                                                      \
    if (bf) { bv = zero; memcpy(&bv, bf + at, m); }                                              \
    BWD_VEC(VT, VI, SUF, SIGN, xv, gv, dv, p2v, bv, o, *ta, *tb, *tc)                            \
    if (gx) memcpy(gx + at, &o, m);                                                              \
    if (gbf) memcpy(gbf + at, tc, m);                                                            \
}                                                                                                \
                                                                                                 \
/* a block piece of len elements with scalar parameters (beta from bf when given) */             \
static void fwd_piece_##SUF(const T* restrict x, T* restrict y, const T* restrict bf, int64_t len, \
                            T d, T p2, T bt, int has_p2) {                                       \
    const int L = VBYTES / (int)sizeof(T);                                                       \
    const VT zero = {0};                                                                         \
    const VT dv = zero + d, p2v = zero + p2, btv = zero + bt;                                    \
    int64_t i = 0;                                                                               \
    for (; i + L <= len; i += L) fwd_at_##SUF(x, y, bf, i, sizeof(VT), dv, p2v, btv, has_p2);    \
    if (i < len) fwd_at_##SUF(x, y, bf, i, (size_t)(len - i) * sizeof(T), dv, p2v, btv, has_p2); \
}                                                                                                \
                                                                                                 \
/* the lanes of v summed pairwise (a tree of log2 L additions) */                                \
static inline T hsum_##SUF(VT v) {                                                               \
    enum { L = VBYTES / sizeof(T) };                                                             \
    T h[L];                                                                                      \
    memcpy(h, &v, sizeof v);                                                                     \
    for (int w = L / 2; w >= 1; w /= 2)                                                          \
        for (int l = 0; l < w; ++l) h[l] += h[l + w];                                            \
    return h[0];                                                                                 \
}                                                                                                \
                                                                                                 \
/* acc += the lanes' sums of sa, sb, sc (in double from there on); the vectors start again at 0 */ \
static inline void flush_##SUF(VT* sa, VT* sb, VT* sc, double acc[3]) {                          \
    const VT zero = {0};                                                                         \
    acc[0] += hsum_##SUF(*sa); acc[1] += hsum_##SUF(*sb); acc[2] += hsum_##SUF(*sc);             \
    *sa = zero; *sb = zero; *sc = zero;                                                          \
}                                                                                                \
                                                                                                 \
/* backward of a block piece: gx (when given), gbf (per-element beta gradient, when given) and   \
 * acc += (sum g x core, sum g x, sum g dy/dbeta) */                                             \
static void bwd_piece_##SUF(const T* restrict x, const T* restrict g, T* restrict gx,            \
                            const T* restrict bf, T* restrict gbf, int64_t len, T d, T p2, T bt, \
                            int has_p2, double acc[3]) {                                         \
    const int L = VBYTES / (int)sizeof(T);                                                       \
    const VT zero = {0};                                                                         \
    const VT dv = zero + d, p2v = zero + p2, btv = zero + bt;                                    \
    VT sa = zero, sb = zero, sc = zero;                                                          \
    int since = 0;                                                                               \
    int64_t i = 0;                                                                               \
    for (; i + L <= len; i += L) {                                                               \
        VT ta, tb, tc;                                                                           \
        bwd_at_##SUF(x, g, gx, bf, gbf, i, sizeof(VT), dv, p2v, btv, has_p2, &ta, &tb, &tc);     \
        sa += ta; sb += tb; sc += tc;                                                            \
        if (++since == FLUSH) { flush_##SUF(&sa, &sb, &sc, acc); since = 0; }                    \
    }                                                                                            \
    if (i < len) { /* zero-padded: g = 0 adds nothing to the sums */                             \
        VT ta, tb, tc;                                                                           \
        bwd_at_##SUF(x, g, gx, bf, gbf, i, (size_t)(len - i) * sizeof(T), dv, p2v, btv, has_p2,  \
                     &ta, &tb, &tc);                                                             \
        sa += ta; sb += tb; sc += tc;                                                            \
    }                                                                                            \
    flush_##SUF(&sa, &sb, &sc, acc);                                                             \
}                                                                                                \
                                                                                                 \
/* one row of C channels (row o of sample r); bf: the row's beta when per element */             \
static void fwd_row_##SUF(const T* restrict x, T* restrict y, const T* restrict bf, int64_t C,   \
                          const AconParams_##SUF* a, int64_t r) {                                \
    const int L = VBYTES / (int)sizeof(T);                                                       \
    const VT zero = {0};                                                                         \
    const int has_p2 = a->p2 != NULL;                                                            \
    for (int64_t c = 0; c < C; c += L) {                                                         \
        const int64_t n = C - c < L ? C - c : L;                                                 \
        const size_t m = (size_t)n * sizeof(T);                                                  \
        const VT p2v = pvec_##SUF(a->p2, a->m2, r, c, n, 0);                                     \
        const VT dv = pvec_##SUF(a->p1, a->m1, r, c, n, 1) - p2v;                                \
        const VT bv = bf ? zero : pvec_##SUF(a->beta, a->mb, r, c, n, 1); /* (bf: from there) */ \
        fwd_at_##SUF(x, y, bf, c, m, dv, p2v, bv, has_p2);                                       \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
/* backward of one row: gx, gbf as the block piece; acc (3, Cp) float sums per channel (or NULL). \
 * (Its own loads rather than bwd_at's: through bwd_at, gx came out one ulp off in places, the   \
 * compiler fusing the multiply-adds differently.) */                                            \
static void bwd_row_##SUF(const T* restrict x, const T* restrict g, T* restrict gx,              \
                          const T* restrict bf, T* restrict gbf, int64_t C, int64_t Cp,          \
                          const AconParams_##SUF* a, int64_t r, T* restrict acc) {               \
    const int L = VBYTES / (int)sizeof(T);                                                       \
    const VT zero = {0}, one = zero + 1;                                                         \
    const int has_p2 = a->p2 != NULL;                                                            \
    for (int64_t c = 0; c < C; c += L) {                                                         \
        const int64_t n = C - c < L ? C - c : L;                                                 \
        const size_t m = (size_t)n * sizeof(T);                                                  \
        const VT p2v = pvec_##SUF(a->p2, a->m2, r, c, n, 0);                                     \
        const VT dv = pvec_##SUF(a->p1, a->m1, r, c, n, 1) - p2v;                                \
        VT bv, xv = zero, gv = zero, o, ta, tb, tc, s;                                           \
        if (bf) { bv = zero; memcpy(&bv, bf + c, m); }                                           \
        else bv = pvec_##SUF(a->beta, a->mb, r, c, n, 1);                                        \
        memcpy(&xv, x + c, m);                                                                   \
        memcpy(&gv, g + c, m);                                                                   \
        BWD_VEC(VT, VI, SUF, SIGN, xv, gv, dv, p2v, bv, o, ta, tb, tc)                           \
        if (gx) memcpy(gx + c, &o, m);                                                           \
        if (gbf) memcpy(gbf + c, &tc, m);                                                        \
        if (!acc) continue;                                                                      \
        memcpy(&s, acc + c, sizeof s); s += ta; memcpy(acc + c, &s, sizeof s);                   \
        memcpy(&s, acc + Cp + c, sizeof s); s += tb; memcpy(acc + Cp + c, &s, sizeof s);         \
        memcpy(&s, acc + 2 * Cp + c, sizeof s); s += tc; memcpy(acc + 2 * Cp + c, &s, sizeof s); \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
/* the three sums of channel c (or of a whole piece, c's slot) into the thread's slots */        \
static inline void add_slots_##SUF(double* g1, double* g2, double* gb, const AconParams_##SUF* a, \
                                   int64_t r, int64_t c, double sa, double sb, double sc) {      \
    if (g1) g1[r * a->m1.so + c * a->m1.sc] += sa;                                               \
    if (g2) g2[r * a->m2.so + c * a->m2.sc] += sb - sa;                                          \
    if (gb) gb[r * a->mb.so + c * a->mb.sc] += sc;                                               \
}                                                                                                \
                                                                                                 \
/* the d = p1 - p2, p2 and beta (1 where beta is per element) of channel c of sample r */        \
static inline void block_params_##SUF(const AconParams_##SUF* a, int64_t r, int64_t c, T* d, T* p2, \
                                      T* bt) {                                                   \
    *p2 = pval_##SUF(a->p2, a->m2, r, c, 0);                                                     \
    *d = pval_##SUF(a->p1, a->m1, r, c, 1) - *p2;                                                \
    *bt = a->beta_full ? 1 : pval_##SUF(a->beta, a->mb, r, c, 1);                                \
}                                                                                                \
                                                                                                 \
/* the lane indices 0, 1, ..., L - 1 */                                                          \
static inline VI lane_index_##SUF(void) {                                                        \
    VI m = {0};                                                                                  \
    for (int l = 0; l < (int)(VBYTES / sizeof(T)); ++l) m[l] = l;                                \
    return m;                                                                                    \
}                                                                                                \
                                                                                                 \
/* whether blocks of inner elements go in straddling vectors: parameters per block (a map that   \
 * is not one value) and blocks of one to sixteen vectors */                                     \
static inline int straddles_##SUF(int64_t C, int64_t inner, const AconParams_##SUF* a) {         \
    const int64_t L = VBYTES / (int64_t)sizeof(T);                                               \
    const int per_block = a->m1.so || a->m1.sc || a->m2.so || a->m2.sc || a->mb.so || a->mb.sc;  \
    return per_block && !(inner == 1 && C > 1) && inner >= L && inner < 16 * L;                  \
}                                                                                                \
                                                                                                 \
/* The full vectors of [pos, end) of a tensor whose blocks (inner >= L elements) each have their \
 * own parameters, in vectors that may straddle two blocks (each lane takes its block's): no     \
 * per-block start-up and no partial vector at each block's end, for maps of a few vectors       \
 * (7x7, 14x14). bf: beta per element (x's layout) or NULL. Returns where the full vectors end. */ \
static int64_t fwd_straddle_##SUF(const T* restrict x, T* restrict y, const T* restrict bf,      \
                                  int64_t pos, int64_t end, int64_t C, int64_t inner,            \
                                  const AconParams_##SUF* a) {                                   \
    const int L = VBYTES / (int)sizeof(T);                                                       \
    const VT zero = {0};                                                                         \
    const int has_p2 = a->p2 != NULL;                                                            \
    /* the current block: channel c of sample r, its row ro of od, ending at bend */             \
    const int64_t blk = pos / inner, o = blk / C;                                                \
    int64_t bend = (blk + 1) * inner, c = blk % C, r = o / a->od, ro = o % a->od;                \
    const VI idx = lane_index_##SUF();                                                           \
    T d, p2, bt;                                                                                 \
    block_params_##SUF(a, r, c, &d, &p2, &bt);                                                   \
    VT dv = zero + d, p2v = zero + p2, btv = zero + bt;                                          \
    int64_t i = pos;                                                                             \
    while (i + L <= end) {                                                                       \
        const int64_t stop = bend < end ? bend : end;                                            \
        for (; i + L <= stop; i += L) /* the vectors inside the block */                         \
            fwd_at_##SUF(x, y, bf, i, sizeof(VT), dv, p2v, btv, has_p2);                         \
        if (i + L > end) break;                                                                  \
        /* the next block starts at i + n, in this vector (n > 0) or at it (n = 0) */            \
        const int64_t n = bend - i;                                                              \
        VT dl = dv, pl = p2v, bl = btv;                                                          \
        STRADDLE_NEXT(SUF)                                                                       \
        if (n == 0) continue;                                                                    \
        const VI nx = idx >= (VI){0} + (int)n;                                                   \
        dl = VSEL(VT, VI, nx, dv, dl); pl = VSEL(VT, VI, nx, p2v, pl); bl = VSEL(VT, VI, nx, btv, bl); \
        fwd_at_##SUF(x, y, bf, i, sizeof(VT), dl, pl, bl, has_p2);                               \
        i += L;                                                                                  \
    }                                                                                            \
    return i;                                                                                    \
}                                                                                                \
                                                                                                 \
/* the per-channel vector sums of bwd_straddle (3 C vectors) into the thread's slots, then 0 */  \
static void flush_channels_##SUF(VT* vacc, int64_t C, const AconParams_##SUF* a, double* s1, double* s2, \
                                 double* sb) {                                                   \
    for (int64_t c = 0; c < C; ++c) {                                                            \
        double acc[3] = {0, 0, 0};                                                               \
        flush_##SUF(vacc + 3 * c, vacc + 3 * c + 1, vacc + 3 * c + 2, acc);                      \
        add_slots_##SUF(s1, s2, sb, a, 0, c, acc[0], acc[1], acc[2]);                            \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
/* fwd_straddle's backward: gx (or NULL), gbf (beta's gradient per element, or NULL) and each    \
 * block's three sums into the thread's slots s1, s2, sb (NULL: not needed). Where no parameter  \
 * depends on the sample, a block's sums are added as vectors to its channel's (vacc) and go into \
 * the slots every FLUSH_ROWS samples and at the end: no horizontal sums per block of 7x7. */    \
static int64_t bwd_straddle_##SUF(const T* restrict x, const T* restrict g, T* restrict gx,      \
                                  const T* restrict bf, T* restrict gbf, int64_t pos, int64_t end, \
                                  int64_t C, int64_t inner, const AconParams_##SUF* a, double* s1, \
                                  double* s2, double* sb) {                                      \
    const int L = VBYTES / (int)sizeof(T);                                                       \
    const VT zero = {0};                                                                         \
    const int has_p2 = a->p2 != NULL, keep = s1 || s2 || sb;                                     \
    /* the current block: channel c of sample r, its row ro of od, ending at bend */             \
    const int64_t blk = pos / inner, o = blk / C;                                                \
    int64_t bend = (blk + 1) * inner, c = blk % C, r = o / a->od, ro = o % a->od;                \
    const VI idx = lane_index_##SUF();                                                           \
    T d, p2, bt;                                                                                 \
    block_params_##SUF(a, r, c, &d, &p2, &bt);                                                   \
    VT dv = zero + d, p2v = zero + p2, btv = zero + bt;                                          \
    VT sa = zero, sbv = zero, sc = zero;                                                         \
    int any = 0; /* lanes added to sa, sbv, sc since the last deposit */                         \
    const int per_channel = keep && !a->m1.so && !a->m2.so && !a->mb.so;                         \
    VT* vacc = per_channel ? (VT*)aligned_alloc(VBYTES, sizeof(VT) * (size_t)(3 * C)) : NULL;    \
    if (vacc) memset(vacc, 0, sizeof(VT) * (size_t)(3 * C));                                     \
    int64_t blocks = 0; /* deposited into vacc since its last flush */                           \
    int64_t i = pos;                                                                             \
    while (i + L <= end) {                                                                       \
        const int64_t stop = bend < end ? bend : end;                                            \
        for (; i + L <= stop; i += L) { /* the vectors inside the block */                       \
            VT ta, tb, tc;                                                                       \
            bwd_at_##SUF(x, g, gx, bf, gbf, i, sizeof(VT), dv, p2v, btv, has_p2, &ta, &tb, &tc); \
            if (keep) { sa += ta; sbv += tb; sc += tc; any = 1; }                                \
        }                                                                                        \
        if (i + L > end) break;                                                                  \
        /* the next block starts at i + n, in this vector (n > 0) or at it (n = 0) */            \
        const int64_t n = bend - i, pc = c, pr = r;                                              \
        VT dl = dv, pl = p2v, bl = btv, ta, tb, tc;                                              \
        STRADDLE_NEXT(SUF)                                                                       \
        const VI nx = idx >= (VI){0} + (int)n; /* the lanes in the next block */                 \
        if (n > 0) {                                                                             \
            dl = VSEL(VT, VI, nx, dv, dl); pl = VSEL(VT, VI, nx, p2v, pl); bl = VSEL(VT, VI, nx, btv, bl); \
            bwd_at_##SUF(x, g, gx, bf, gbf, i, sizeof(VT), dl, pl, bl, has_p2, &ta, &tb, &tc);   \
            i += L;                                                                              \
        }                                                                                        \
        if (!keep) continue;                                                                     \
        if (n > 0) { sa += (VT)((VI)ta & ~nx); sbv += (VT)((VI)tb & ~nx); sc += (VT)((VI)tc & ~nx); } \
        if (vacc) {                                                                              \
            vacc[3 * pc] += sa; vacc[3 * pc + 1] += sbv; vacc[3 * pc + 2] += sc;                 \
            sa = zero; sbv = zero; sc = zero;                                                    \
            if (++blocks == FLUSH_ROWS * C) { flush_channels_##SUF(vacc, C, a, s1, s2, sb); blocks = 0; } \
        } else {                                                                                 \
            double acc[3] = {0, 0, 0};                                                           \
            flush_##SUF(&sa, &sbv, &sc, acc);                                                    \
            add_slots_##SUF(s1, s2, sb, a, pr, pc, acc[0], acc[1], acc[2]);                      \
        }                                                                                        \
        any = n > 0;                                                                             \
        if (any) { sa = (VT)((VI)ta & nx); sbv = (VT)((VI)tb & nx); sc = (VT)((VI)tc & nx); }    \
    }                                                                                            \
    if (keep && any) {                                                                           \
        double acc[3] = {0, 0, 0};                                                               \
        flush_##SUF(&sa, &sbv, &sc, acc);                                                        \
        add_slots_##SUF(s1, s2, sb, a, r, c, acc[0], acc[1], acc[2]);                            \
    }                                                                                            \
    if (vacc) {                                                                                  \
        flush_channels_##SUF(vacc, C, a, s1, s2, sb);                                            \
        free(vacc);                                                                              \
    }                                                                                            \
    return i;                                                                                    \
}                                                                                                \
                                                                                                 \
/* Per-channel parameters only (no map depends on the sample) and blocks of a few vectors (7x7,  \
 * 14x14): the parameters laid out like one sample, C blocks of inner elements (d, then p2, then \
 * beta), built once per call, so that every vector reads its lanes' parameters at its offset in \
 * the sample: no per-block steps, no straddling vectors. NULL where that does not apply, the    \
 * table would pass 1 MiB or memory is short (the straddling walk runs instead). */              \
static T* param_table_##SUF(int64_t C, int64_t inner, const AconParams_##SUF* a) {               \
    if (!straddles_##SUF(C, inner, a) || a->m1.so || a->m2.so || a->mb.so) return NULL;          \
    const int64_t n = C * inner;                                                                 \
    if ((size_t)(3 * n) * sizeof(T) > ((size_t)1 << 20)) return NULL;                            \
    T* t = (T*)malloc((size_t)(3 * n) * sizeof(T));                                              \
    if (!t) return NULL;                                                                         \
    for (int64_t c = 0; c < C; ++c) {                                                            \
        T d, p2, bt;                                                                             \
        block_params_##SUF(a, 0, c, &d, &p2, &bt);                                               \
        for (int64_t i = 0; i < inner; ++i) {                                                    \
            t[c * inner + i] = d; t[n + c * inner + i] = p2; t[2 * n + c * inner + i] = bt;      \
        }                                                                                        \
    }                                                                                            \
    return t;                                                                                    \
}                                                                                                \
                                                                                                 \
/* the table's parameters of m bytes from element i of a sample as vectors (zeros past m): d at  \
 * td, p2 (where has_p2, else 0) n further on, beta 2 n further on */                            \
static ALWAYS_INLINE void tab_params_##SUF(const T* td, int64_t n, int64_t i, size_t m, int has_p2, \
                                           VT* dv, VT* p2v, VT* btv) {                           \
    const VT zero = {0};                                                                         \
    *dv = zero; *p2v = zero; *btv = zero;                                                        \
    memcpy(dv, td + i, m);                                                                       \
    if (has_p2) memcpy(p2v, td + n + i, m);                                                      \
    memcpy(btv, td + 2 * n + i, m);                                                              \
}                                                                                                \
                                                                                                 \
/* len elements of each of ks samples (sample k at k n) from the table offset of x (td: d there;  * p2 and beta n further on; beta from bf when given) */ \
static void fwd_tab_piece_##SUF(const T* restrict x, T* restrict y, const T* restrict bf,        \
                                const T* restrict td, int64_t n, int64_t len, int ks, int has_p2) { \
    const int L = VBYTES / (int)sizeof(T);                                                       \
    int64_t i = 0;                                                                               \
    for (; i + L <= len; i += L) {                                                               \
        VT dv, p2v, btv;                                                                         \
        tab_params_##SUF(td, n, i, sizeof(VT), has_p2, &dv, &p2v, &btv);                         \
        for (int k = 0; k < ks; ++k) {                                                           \
            const int64_t at = k * n + i;                                                        \
            fwd_at_##SUF(x, y, bf, at, sizeof(VT), dv, p2v, btv, has_p2);                        \
        }                                                                                        \
    }                                                                                            \
    if (i < len) { /* zero-padded: x = 0 gives 0 */                                              \
        const size_t m = (size_t)(len - i) * sizeof(T);                                          \
        VT dv, p2v, btv;                                                                         \
        tab_params_##SUF(td, n, i, m, has_p2, &dv, &p2v, &btv);                                  \
        for (int k = 0; k < ks; ++k) {                                                           \
            const int64_t at = k * n + i;                                                        \
            fwd_at_##SUF(x, y, bf, at, m, dv, p2v, btv, has_p2);                                 \
        }                                                                                        \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
                                                                                                 \
/* fwd_tab_piece's backward over ks samples at once (x, g, gx, bf, gbf of sample k at k n): gx,  * gbf as bwd_piece; acc (or NULL): the float sums per element of a sample from x's offset on,     * three planes n apart, += the three terms of the ks samples (one update per vector) */ \
static void bwd_tab_piece_##SUF(const T* restrict x, const T* restrict g, T* restrict gx,        \
                                const T* restrict bf, T* restrict gbf, const T* restrict td,     \
                                int64_t n, int64_t len, int ks, int has_p2, T* restrict acc) {   \
    const int L = VBYTES / (int)sizeof(T);                                                       \
    const VT zero = {0};                                                                         \
    int64_t i = 0;                                                                               \
    for (; i + L <= len; i += L) {                                                               \
        VT dv, p2v, btv, sa = zero, sbv = zero, sc = zero, s;                                    \
        tab_params_##SUF(td, n, i, sizeof(VT), has_p2, &dv, &p2v, &btv);                         \
        for (int k = 0; k < ks; ++k) {                                                           \
            const int64_t at = k * n + i;                                                        \
            VT ta, tb_, tc;                                                                      \
            bwd_at_##SUF(x, g, gx, bf, gbf, at, sizeof(VT), dv, p2v, btv, has_p2, &ta, &tb_,     \
                         &tc);                                                                   \
            sa += ta; sbv += tb_; sc += tc;                                                      \
        }                                                                                        \
        if (!acc) continue;                                                                      \
        memcpy(&s, acc + i, sizeof s); s += sa; memcpy(acc + i, &s, sizeof s);                   \
        memcpy(&s, acc + n + i, sizeof s); s += sbv; memcpy(acc + n + i, &s, sizeof s);          \
        memcpy(&s, acc + 2 * n + i, sizeof s); s += sc; memcpy(acc + 2 * n + i, &s, sizeof s);   \
    }                                                                                            \
    if (i < len) { /* zero-padded: g = 0 adds nothing */                                         \
        const size_t m = (size_t)(len - i) * sizeof(T);                                          \
        VT dv, p2v, btv, sa = zero, sbv = zero, sc = zero, s;                                    \
        tab_params_##SUF(td, n, i, m, has_p2, &dv, &p2v, &btv);                                  \
        for (int k = 0; k < ks; ++k) {                                                           \
            const int64_t at = k * n + i;                                                        \
            VT ta, tb_, tc;                                                                      \
            bwd_at_##SUF(x, g, gx, bf, gbf, at, m, dv, p2v, btv, has_p2, &ta, &tb_, &tc);        \
            sa += ta; sbv += tb_; sc += tc;                                                      \
        }                                                                                        \
        if (acc) {                                                                               \
            s = zero; memcpy(&s, acc + i, m); s += sa; memcpy(acc + i, &s, m);                   \
            s = zero; memcpy(&s, acc + n + i, m); s += sbv; memcpy(acc + n + i, &s, m);          \
            s = zero; memcpy(&s, acc + 2 * n + i, m); s += sc; memcpy(acc + 2 * n + i, &s, m);   \
        }                                                                                        \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
                                                                                                 \
/* bwd_tab_piece's float sums (3 planes of n = C inner) per channel into the thread's slots in   \
 * double, then 0 */                                                                             \
static void flush_table_##SUF(T* acc, int64_t C, int64_t inner, const AconParams_##SUF* a,       \
                              double* s1, double* s2, double* sb) {                              \
    const int64_t n = C * inner;                                                                 \
    for (int64_t c = 0; c < C; ++c) {                                                            \
        double sa = 0, sbb = 0, sc = 0;                                                          \
        for (int64_t i = c * inner; i < (c + 1) * inner; ++i) {                                  \
            sa += acc[i]; sbb += acc[n + i]; sc += acc[2 * n + i];                               \
        }                                                                                        \
        add_slots_##SUF(s1, s2, sb, a, 0, c, sa, sbb, sc);                                       \
    }                                                                                            \
    memset(acc, 0, sizeof(T) * (size_t)(3 * n));                                                 \
}                                                                                                \
                                                                                                 \
                                                                                                 \
int repact_acon_forward_##SUF(const T* x, T* y, int64_t outer, int64_t C, int64_t inner,         \
                              int64_t od, const T* p1, int64_t p1_so, int64_t p1_sc, const T* p2, \
                              int64_t p2_so, int64_t p2_sc, const T* beta, int64_t b_so,         \
                              int64_t b_sc, int beta_full, int nthreads) {                       \
    const int64_t total = outer * C * inner;                                                     \
    if (od < 1 || outer < 0 || C < 1 || inner < 1 || (beta_full && !beta)) return 1;             \
    if (total == 0) return 0;                                                                    \
    const AconParams_##SUF a = {p1, p2, beta, {p1_so, p1_sc}, {p2_so, p2_sc}, {b_so, b_sc},      \
                                beta_full, od};                                                  \
    const int nt = threads_for(total, GRAIN, nthreads);                                          \
    T* tab = param_table_##SUF(C, inner, &a);                                                    \
    const int straddle = !tab && straddles_##SUF(C, inner, &a);                                  \
    _Pragma("omp parallel num_threads(nt)")                                                      \
    {                                                                                            \
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();                       \
        if (inner == 1 && C > 1) {                                                               \
            const int64_t o0 = outer * tid / nth, o1 = outer * (tid + 1) / nth;                  \
            for (int64_t o = o0; o < o1; ++o)                                                    \
                fwd_row_##SUF(x + o * C, y + o * C, beta_full ? beta + o * C : NULL, C, &a, o / od); \
        } else {                                                                                 \
            const int64_t end = total * (tid + 1) / nth, n = C * inner;                          \
            int64_t pos = total * tid / nth;                                                     \
            for (; tab && pos < end;) { /* by samples, whole ones four at a time */              \
                const int64_t j = pos % n, len = n - j < end - pos ? n - j : end - pos;          \
                const int64_t whole = j ? 1 : (end - pos) / n;                                   \
                const int ks = whole >= 4 ? 4 : whole > 1 ? (int)whole : 1;                      \
                fwd_tab_piece_##SUF(x + pos, y + pos, beta_full ? beta + pos : NULL, tab + j, n, len, \
                                    ks, p2 != NULL);                                             \
                pos += len + (ks - 1) * n;                                                       \
            }                                                                                    \
            if (straddle)                                                                        \
                pos = fwd_straddle_##SUF(x, y, beta_full ? beta : NULL, pos, end, C, inner, &a); \
            while (pos < end) {                                                                  \
                const int64_t blk = pos / inner, o = blk / C, c = blk % C, r = o / od;           \
                int64_t len = (blk + 1) * inner - pos;                                           \
                if (len > end - pos) len = end - pos;                                            \
                const T p2v = pval_##SUF(p2, a.m2, r, c, 0);                                     \
                fwd_piece_##SUF(x + pos, y + pos, beta_full ? beta + pos : NULL, len,            \
                                pval_##SUF(p1, a.m1, r, c, 1) - p2v, p2v,                        \
                                beta_full ? 1 : pval_##SUF(beta, a.mb, r, c, 1), p2 != NULL);    \
                pos += len;                                                                      \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
    free(tab);                                                                                   \
    return 0;                                                                                    \
}                                                                                                \
                                                                                                 \
int repact_acon_backward_##SUF(const T* x, const T* g, T* gx, int64_t outer, int64_t C,          \
                               int64_t inner, int64_t od, const T* p1, int64_t p1_so,            \
                               int64_t p1_sc, const T* p2, int64_t p2_so, int64_t p2_sc,         \
                               const T* beta, int64_t b_so, int64_t b_sc, int beta_full,         \
                               double* gp1, double* gp2, double* gbeta, T* gbeta_full,           \
                               int64_t np1, int64_t np2, int64_t nbeta, int nthreads) {          \
    const int64_t total = outer * C * inner;                                                     \
    if (od < 1 || outer < 0 || C < 1 || inner < 1 || (beta_full && (!beta || gbeta)) ||          \
        (gp1 && np1 < 1) || (gp2 && np2 < 1) || (gbeta && nbeta < 1)) return 1;                  \
    const int64_t n1 = gp1 ? np1 : 0, n2 = gp2 ? np2 : 0, nb = gbeta ? nbeta : 0;                \
    const int64_t ns = n1 + n2 + nb;                                                             \
    if (gp1) memset(gp1, 0, sizeof(double) * (size_t)np1);                                       \
    if (gp2) memset(gp2, 0, sizeof(double) * (size_t)np2);                                       \
    if (gbeta) memset(gbeta, 0, sizeof(double) * (size_t)nbeta);                                 \
    if (total == 0) return 0;                                                                    \
    const AconParams_##SUF a = {p1, p2, beta, {p1_so, p1_sc}, {p2_so, p2_sc}, {b_so, b_sc},      \
                                beta_full, od};                                                  \
    const int nt = threads_for(total, GRAIN, nthreads);                                          \
    T* tab = param_table_##SUF(C, inner, &a);                                                    \
    const int straddle = !tab && straddles_##SUF(C, inner, &a);                                  \
    const int rows = inner == 1 && C > 1;                                                        \
    const int L = VBYTES / (int)sizeof(T);                                                       \
    const int64_t Cp = (C + L - 1) / L * L;                                                      \
    double* part = ns ? (double*)calloc((size_t)(nt * ns), sizeof(double)) : NULL;               \
    if (ns && !part) { free(tab); return 2; }                                                    \
    int failed = 0;                                                                              \
    _Pragma("omp parallel num_threads(nt)")                                                      \
    {                                                                                            \
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();                       \
        double* s1 = gp1 ? part + tid * ns : NULL;                                               \
        double* s2 = gp2 ? part + tid * ns + n1 : NULL;                                          \
        double* sb = gbeta ? part + tid * ns + n1 + n2 : NULL;                                   \
        if (rows) {                                                                              \
            T* acc = ns ? (T*)calloc((size_t)(3 * Cp), sizeof(T)) : NULL;                        \
            if (ns && !acc) {                                                                    \
                _Pragma("omp atomic write")                                                      \
                failed = 1;                                                                      \
            } else {                                                                             \
                const int64_t o0 = outer * tid / nth, o1 = outer * (tid + 1) / nth;              \
                int64_t since = 0;                                                               \
                for (int64_t o = o0; o < o1; ++o) {                                              \
                    const int64_t r = o / od;                                                    \
                    bwd_row_##SUF(x + o * C, g + o * C, gx ? gx + o * C : NULL,                  \
                                  beta_full ? beta + o * C : NULL,                               \
                                  gbeta_full ? gbeta_full + o * C : NULL, C, Cp, &a, r, acc);    \
                    /* flush every FLUSH_ROWS rows and at the end of a sample (its slots end) */ \
                    if (acc && (++since == FLUSH_ROWS || o + 1 == o1 || (o + 1) / od != r)) {    \
                        for (int64_t c = 0; c < C; ++c)                                          \
                            add_slots_##SUF(s1, s2, sb, &a, r, c, acc[c], acc[Cp + c],           \
                                            acc[2 * Cp + c]);                                    \
                        memset(acc, 0, sizeof(T) * (size_t)(3 * Cp));                            \
                        since = 0;                                                               \
                    }                                                                            \
                }                                                                                \
                free(acc);                                                                       \
            }                                                                                    \
        } else {                                                                                 \
            const int64_t end = total * (tid + 1) / nth, n = C * inner;                          \
            int64_t pos = total * tid / nth;                                                     \
            if (tab) { /* by samples; float sums per element, ~FLUSH_ROWS deep */  \
                T* acc = ns ? (T*)calloc((size_t)(3 * n), sizeof(T)) : NULL;                     \
                if (ns && !acc) {                                                                \
                    _Pragma("omp atomic write")                                                  \
                    failed = 1;                                                                  \
                    pos = end;                                                                   \
                }                                                                                \
                for (int64_t pieces = 0; pos < end;) {                                           \
                    const int64_t j = pos % n, len = n - j < end - pos ? n - j : end - pos;      \
                    /* whole samples four at a time (one sums update per four vectors) */        \
                    const int64_t whole = j ? 1 : (end - pos) / n;                               \
                    const int ks = whole >= 4 ? 4 : whole > 1 ? (int)whole : 1;                  \
                    bwd_tab_piece_##SUF(x + pos, g + pos, gx ? gx + pos : NULL,                  \
                                        beta_full ? beta + pos : NULL,                           \
                                        gbeta_full ? gbeta_full + pos : NULL, tab + j, n, len,   \
                                        ks, p2 != NULL, acc ? acc + j : NULL);                   \
                    pos += len + (ks - 1) * n;                                                   \
                    pieces += ks;                                                                \
                    if (acc && pieces >= FLUSH_ROWS) {                                           \
                        flush_table_##SUF(acc, C, inner, &a, s1, s2, sb);                        \
                        pieces = 0;                                                              \
                    }                                                                            \
                }                                                                                \
                if (acc) flush_table_##SUF(acc, C, inner, &a, s1, s2, sb);                       \
                free(acc);                                                                       \
            }                                                                                    \
            if (straddle)                                                                        \
                pos = bwd_straddle_##SUF(x, g, gx, beta_full ? beta : NULL, gbeta_full, pos, end, C, \
                                         inner, &a, s1, s2, sb);                                 \
            while (pos < end) {                                                                  \
                const int64_t blk = pos / inner, o = blk / C, c = blk % C, r = o / od;           \
                int64_t len = (blk + 1) * inner - pos;                                           \
                if (len > end - pos) len = end - pos;                                            \
                const T p2v = pval_##SUF(p2, a.m2, r, c, 0);                                     \
                double acc[3] = {0, 0, 0};                                                       \
                bwd_piece_##SUF(x + pos, g + pos, gx ? gx + pos : NULL,                          \
                                beta_full ? beta + pos : NULL,                                   \
                                gbeta_full ? gbeta_full + pos : NULL, len,                       \
                                pval_##SUF(p1, a.m1, r, c, 1) - p2v, p2v,                        \
                                beta_full ? 1 : pval_##SUF(beta, a.mb, r, c, 1), p2 != NULL,     \
                                acc);                                                            \
                add_slots_##SUF(s1, s2, sb, &a, r, c, acc[0], acc[1], acc[2]);                   \
                pos += len;                                                                      \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
    if (!failed) {                                                                               \
        for (int t = 0; t < nt; ++t) {                                                           \
            const double* row = part + t * ns;                                                   \
            for (int64_t j = 0; j < n1; ++j) gp1[j] += row[j];                                   \
            for (int64_t j = 0; j < n2; ++j) gp2[j] += row[n1 + j];                              \
            for (int64_t j = 0; j < nb; ++j) gbeta[j] += row[n1 + n2 + j];                       \
        }                                                                                        \
    }                                                                                            \
    free(part);                                                                                  \
    free(tab);                                                                                   \
    return failed ? 2 : 0;                                                                       \
}

DEFINE_ACON(float, vf32, vi32, f32, ((vi32){0} + INT32_MIN))
DEFINE_ACON(double, vf64, vi64, f64, ((vi64){0} + INT64_MIN))
