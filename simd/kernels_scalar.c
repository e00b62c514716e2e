/* kernels_scalar.c — scalar reference kernels (see kernels.h): the table
 * ds_kernels_scalar that every SIMD table is tested against, and the
 * element-wise ops that have no SIMD version.  Rows are split across OpenMP
 * threads for large matrices; each row is dequantised block by block and
 * accumulated in f32.  Q8_0 / Q4_K rows are decoded one block at a time
 * with the quant.c decoders and dotted in f32 like the other types. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels_isa.h"
#include "quant.h"

static float scalar_dot(const float *a, const float *b, int n);
static void scalar_axpy(float a, const float *x, float *y, int n);

static const uint8_t *row_ptr(const ds_mat *m, int r)
{
    return (const uint8_t *)m->data + (size_t)r * ds_dtype_row_bytes(m->dtype, m->cols);
}

/* Dot of a block-quantised row with x: each block is decoded into f32
 * (exactly, see quant.h) and accumulated like a plain row. */
static float block_row_dot(const ds_mat *m, int r, const float *x)
{
    float tmp[DS_Q4_K_BLOCK];
    const int blk = (int)ds_dtype_block(m->dtype);
    const size_t bb = ds_dtype_block_bytes(m->dtype);
    const uint8_t *w = row_ptr(m, r);
    float s = 0.0f;
    for (int c0 = 0; c0 < m->cols; c0 += blk, w += bb) {
        ds_convert_to_f32(m->dtype, w, tmp, (size_t)blk);
        for (int c = 0; c < blk; c++)
            s += tmp[c] * x[c0 + c];
    }
    return s;
}

/* Dot of one stored row with x, dequantising on the fly. */
static float row_dot(const ds_mat *m, int r, const float *x)
{
    const int cols = m->cols;
    switch (m->dtype) {
    case DS_DT_Q8_0:
    case DS_DT_Q4_K:
        return block_row_dot(m, r, x);
    case DS_DT_F32: {
        const float *w = (const float *)m->data + (size_t)r * cols;
        float s = 0.0f;
        for (int c = 0; c < cols; c++)
            s += w[c] * x[c];
        return s;
    }
    case DS_DT_BF16: {
        const uint16_t *w = (const uint16_t *)m->data + (size_t)r * cols;
        float s = 0.0f;
        for (int c = 0; c < cols; c++)
            s += ds_bf16_to_f32(w[c]) * x[c];
        return s;
    }
    case DS_DT_F16: {
        const uint16_t *w = (const uint16_t *)m->data + (size_t)r * cols;
        float s = 0.0f;
        for (int c = 0; c < cols; c++)
            s += ds_f16_to_f32(w[c]) * x[c];
        return s;
    }
    case DS_DT_F8_E4M3: {
        const uint8_t *w = (const uint8_t *)m->data + (size_t)r * cols;
        const int sc = (cols + DS_QBLOCK - 1) / DS_QBLOCK;
        const float *srow = m->scale + (size_t)(r / DS_QBLOCK) * sc;
        float s = 0.0f;
        for (int b = 0; b < sc; b++) {
            int c0 = b * DS_QBLOCK, c1 = c0 + DS_QBLOCK < cols ? c0 + DS_QBLOCK : cols;
            float bs = 0.0f;
            for (int c = c0; c < c1; c++)
                bs += ds_e4m3_table[w[c]] * x[c];
            s += bs * srow[b];
        }
        return s;
    }
    default:
        return 0.0f;
    }
}

static void scalar_mat_row(const ds_mat *m, int r, float *out)
{
    const int cols = m->cols;
    ds_convert_to_f32(m->dtype, row_ptr(m, r), out, (size_t)cols);
    if (m->dtype == DS_DT_F8_E4M3) {
        const int sc = (cols + DS_QBLOCK - 1) / DS_QBLOCK;
        const float *srow = m->scale + (size_t)(r / DS_QBLOCK) * sc;
        for (int c = 0; c < cols; c++)
            out[c] *= srow[c / DS_QBLOCK];
    }
}

static void scalar_gemv(const ds_mat *m, int r0, int nrows, const float *x, float *y)
{
#pragma omp parallel for schedule(static) if (ds_worth_threads((long)nrows * m->cols))
    for (int i = 0; i < nrows; i++)
        y[i] = row_dot(m, r0 + i, x);
}

static void scalar_gemv_t(const ds_mat *m, int r0, int nrows, const float *x, float *y)
{
    const int cols = m->cols;
    float *row = malloc(sizeof(float) * (size_t)cols);
    memset(y, 0, sizeof(float) * (size_t)cols);
    if (!row)
        return;
    for (int i = 0; i < nrows; i++) {
        scalar_mat_row(m, r0 + i, row);
        scalar_axpy(x[i], row, y, cols);
    }
    free(row);
}

static void scalar_gemm(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n,
                        float *Y, int ldy)
{
    if (n == 1) {
        scalar_gemv(m, r0, nrows, X, Y);
        return;
    }
    const int cols = m->cols;
#pragma omp parallel if (ds_worth_threads((long)nrows * cols * n))
    {
        float *row = malloc(sizeof(float) * (size_t)cols);
#pragma omp for schedule(static)
        for (int i = 0; i < nrows; i++) {
            if (!row)
                continue;
            scalar_mat_row(m, r0 + i, row);
            for (int t = 0; t < n; t++)
                Y[(size_t)t * ldy + i] = scalar_dot(row, X + (size_t)t * ldx, cols);
        }
        free(row);
    }
}

static float scalar_dot(const float *a, const float *b, int n)
{
    float s = 0.0f;
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void scalar_axpy(float a, const float *x, float *y, int n)
{
    for (int i = 0; i < n; i++)
        y[i] += a * x[i];
}

void ds_e4m3_to_f64_scalar(const uint8_t *q, size_t n, double *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = (q[i] & 0x7f) == 0x7f ? 0.0 : (double)ds_e4m3_table[q[i]];
}

/* Heads in groups of 16 so the inner loop runs over contiguous query
 * values; every product of two e4m3 values and every partial sum of up to
 * 2^17 of them is exact in f64, so the order of the d loop is free. */
void ds_index_scores_scalar(const double *qt, int nh, int dim, const float *w, const double *kd,
                            const float *ks, int n, float *score)
{
    const int hs = DS_INDEX_HSTRIDE(nh);
    for (int j = 0; j < n; j++) {
        const double *k = kd + (size_t)j * dim;
        float s = 0.0f;
        for (int h0 = 0; h0 < nh; h0 += 16) {
            double acc[16] = {0};
            for (int d = 0; d < dim; d++) {
                const double *q = qt + (size_t)d * hs + h0;
                for (int h = 0; h < 16; h++)
                    acc[h] += q[h] * k[d];
            }
            for (int h = 0; h < 16 && h0 + h < nh; h++) {
                float dh = (float)acc[h];
                if (dh > 0.0f) {
                    float p = w[h0 + h] * dh;
                    DS_NO_FUSE(p);
                    s += p;
                }
            }
        }
        score[j] = s * ks[j];
    }
}

void ds_index_scores_fp8_with(const ds_kernels *k, const double *qt, int nh, int dim, const float *w,
                              const uint8_t *k8, const float *ks, int n, float *score)
{
    double kd[32 * DS_INDEX_MAXDIM];
    for (int j = 0; j < n; j += 32) {
        const int kn = n - j < 32 ? n - j : 32;
        k->e4m3_to_f64(k8 + (size_t)j * dim, (size_t)kn * dim, kd);
        k->index_scores(qt, nh, dim, w, kd, ks + j, kn, score + j);
    }
}

static void scalar_index_scores_fp8(const double *qt, int nh, int dim, const float *w, const uint8_t *k8,
                                    const float *ks, int n, float *score)
{
    ds_index_scores_fp8_with(&ds_kernels_scalar, qt, nh, dim, w, k8, ks, n, score);
}

const ds_kernels ds_kernels_scalar = {
    .name = "scalar",
    .mat_row = scalar_mat_row,
    .gemv = scalar_gemv,
    .gemv_t = scalar_gemv_t,
    .gemm = scalar_gemm,
    .dot = scalar_dot,
    .axpy = scalar_axpy,
    .e4m3_to_f64 = ds_e4m3_to_f64_scalar,
    .index_scores = ds_index_scores_scalar,
    .index_scores_fp8 = scalar_index_scores_fp8,
};

void ds_rmsnorm(const float *x, const float *w, float eps, int n, float *y)
{
    double ss = 0.0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float r = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++)
        y[i] = x[i] * r * w[i];
}

void ds_layernorm(const float *x, const float *w, const float *b, float eps, int n, float *y)
{
    double mean = 0.0, var = 0.0;
    for (int i = 0; i < n; i++)
        mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++)
        var += (x[i] - mean) * (x[i] - mean);
    var /= n;
    float r = 1.0f / sqrtf((float)var + eps);
    for (int i = 0; i < n; i++)
        y[i] = (float)(x[i] - mean) * r * w[i] + b[i];
}

void ds_softmax(float *x, int n)
{
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (x[i] > mx)
            mx = x[i];
    float s = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        s += x[i];
    }
    for (int i = 0; i < n; i++)
        x[i] /= s;
}

void ds_hadamard(float *x, int n)
{
    for (int h = 1; h < n; h *= 2)
        for (int i = 0; i < n; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    float s = 1.0f / sqrtf((float)n);
    for (int i = 0; i < n; i++)
        x[i] *= s;
}

float ds_silu(float x) { return x / (1.0f + expf(-x)); }
