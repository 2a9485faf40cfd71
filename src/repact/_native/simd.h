/*
 * The SIMD vocabulary of repact's native kernels (piecewise.c, acon.c): portable vectors through
 * GCC/Clang vector extensions, 64 bytes with AVX-512, 32 with AVX, 16 otherwise. Casting between
 * same-size vector types reinterprets the bits.
 */
#ifndef REPACT_NATIVE_SIMD_H
#define REPACT_NATIVE_SIMD_H

#include <stdint.h>

#if defined(__AVX512F__)
#define VBYTES 64
#elif defined(__AVX__)
#define VBYTES 32
#else
#define VBYTES 16
#endif
typedef float vf32 __attribute__((vector_size(VBYTES)));
typedef int32_t vi32 __attribute__((vector_size(VBYTES)));
typedef uint32_t vu32 __attribute__((vector_size(VBYTES)));
typedef double vf64 __attribute__((vector_size(VBYTES)));
typedef int64_t vi64 __attribute__((vector_size(VBYTES)));
typedef uint64_t vu64 __attribute__((vector_size(VBYTES)));

/* select per lane: m ? a : b (m is all-ones or all-zeros per lane) */
#define VSEL(VT, VI, m, a, b) ((VT)((((VI)(a)) & (m)) | (((VI)(b)) & ~(m))))

/* the OpenMP threads for work elements: one per grain elements, 1 to nthreads */
static inline int threads_for(int64_t work, int64_t grain, int nthreads) {
    int64_t nt = (work + grain - 1) / grain;
    if (nt > nthreads) nt = nthreads;
    if (nt < 1) nt = 1;
    return (int)nt;
}

#endif
