/* kernels_dispatch.c — owns the public matrix/vector entry points of
 * kernels.h that have SIMD versions: each forwards to the table of the ISA
 * level chosen once per process (ds_cpu_isa()). */
#include <pthread.h>
#include "kernels_isa.h"

static const ds_kernels *active;
static pthread_once_t pick_once = PTHREAD_ONCE_INIT;

const ds_kernels *ds_kernels_for(ds_isa isa)
{
    if (!ds_cpu_isa_supported(isa))
        return NULL;
    switch (isa) {
    case DS_ISA_SCALAR: return &ds_kernels_scalar;
#if defined(__x86_64__) || defined(__i386__)
    case DS_ISA_AVX2: return &ds_kernels_avx2;
    case DS_ISA_AVX512: return &ds_kernels_avx512;
#endif
#if defined(__aarch64__)
    case DS_ISA_NEON: return &ds_kernels_neon;
#endif
    default: return NULL;
    }
}

static void pick(void)
{
    const ds_kernels *k = ds_kernels_for(ds_cpu_isa());
    __atomic_store_n(&active, k ? k : &ds_kernels_scalar, __ATOMIC_RELEASE);
}

/* ds_dot/ds_axpy run on short vectors in attention loops, so the common path
 * is one acquire load; pthread_once is only reached before the first pick. */
const ds_kernels *ds_kernels_active(void)
{
    const ds_kernels *k = __atomic_load_n(&active, __ATOMIC_ACQUIRE);
    if (__builtin_expect(k != NULL, 1))
        return k;
    pthread_once(&pick_once, pick);
    return __atomic_load_n(&active, __ATOMIC_ACQUIRE);
}

void ds_mat_row(const ds_mat *m, int r, float *out) { ds_kernels_active()->mat_row(m, r, out); }

void ds_gemv(const ds_mat *m, int r0, int nrows, const float *x, float *y)
{
    ds_kernels_active()->gemv(m, r0, nrows, x, y);
}

void ds_gemv_t(const ds_mat *m, int r0, int nrows, const float *x, float *y)
{
    ds_kernels_active()->gemv_t(m, r0, nrows, x, y);
}

void ds_gemm(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy)
{
    ds_kernels_active()->gemm(m, r0, nrows, X, ldx, n, Y, ldy);
}

float ds_dot(const float *a, const float *b, int n) { return ds_kernels_active()->dot(a, b, n); }

void ds_axpy(float a, const float *x, float *y, int n) { ds_kernels_active()->axpy(a, x, y, n); }

void ds_e4m3_to_f64(const uint8_t *q, size_t n, double *out) { ds_kernels_active()->e4m3_to_f64(q, n, out); }

void ds_index_scores(const double *qt, int nh, int dim, const float *w, const double *kd, const float *ks,
                     int n, float *score)
{
    ds_kernels_active()->index_scores(qt, nh, dim, w, kd, ks, n, score);
}

void ds_index_scores_fp8(const double *qt, int nh, int dim, const float *w, const uint8_t *k8, const float *ks,
                         int n, float *score)
{
    ds_kernels_active()->index_scores_fp8(qt, nh, dim, w, k8, ks, n, score);
}
