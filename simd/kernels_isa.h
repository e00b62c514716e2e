/* kernels_isa.h — the per-ISA kernel tables behind the public entry points
 * of kernels.h.  Internal to simd/ and its tests: the model calls ds_gemv &c.
 * and never sees which table serves it.  Every table has the exact
 * semantics of the scalar one; only the f32 summation order may differ. */
#ifndef DS_KERNELS_ISA_H
#define DS_KERNELS_ISA_H

#include "cpu.h"
#include "kernels.h"

typedef struct ds_kernels {
    const char *name;
    void (*mat_row)(const ds_mat *m, int r, float *out);
    void (*gemv)(const ds_mat *m, int r0, int nrows, const float *x, float *y);
    void (*gemv_t)(const ds_mat *m, int r0, int nrows, const float *x, float *y);
    void (*gemm)(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n,
                 float *Y, int ldy);
    float (*dot)(const float *a, const float *b, int n);
    void (*axpy)(float a, const float *x, float *y, int n);
} ds_kernels;

extern const ds_kernels ds_kernels_scalar;
#if defined(__x86_64__) || defined(__i386__)
extern const ds_kernels ds_kernels_avx2;
extern const ds_kernels ds_kernels_avx512;
#endif
#if defined(__aarch64__)
extern const ds_kernels ds_kernels_neon;
#endif

/* The table of level isa, or NULL when this build or this CPU lacks it. */
const ds_kernels *ds_kernels_for(ds_isa isa);
/* The table the public entry points use (level ds_cpu_isa()). */
const ds_kernels *ds_kernels_active(void);

/* Rows are split across OpenMP threads only past this many weight elements
 * (the same rule as the scalar reference): below it thread start-up costs
 * more than the product. */
static inline int ds_worth_threads(long work) { return work >= (1L << 16); }

#endif
