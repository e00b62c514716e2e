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
    DS_GEMV_BY_ROWS(row_dot, m, r0, nrows, x, y);
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

/* x rounded to bf16 and back. */
static float bf16_round(float x) { return ds_bf16_to_f32(ds_f32_to_bf16(x)); }

/* Row r of m as exact codes (FP8 values, BF16 values, Q8_0 / Q4_K quants)
 * with per-block multipliers mul[b] (and Q4_K's min terms mn[b]) over
 * blocks of *bc columns (cols for BF16, one multiplier 1). */
static void bf16_row_codes(const ds_mat *m, int r, float *code, float *mul, float *mn, int *bc)
{
    const int cols = m->cols;
    const uint8_t *w = row_ptr(m, r);
    switch (m->dtype) {
    case DS_DT_BF16:
        for (int c = 0; c < cols; c++)
            code[c] = ds_bf16_to_f32(((const uint16_t *)w)[c]);
        *bc = cols;
        mul[0] = 1.0f;
        mn[0] = 0.0f;
        break;
    case DS_DT_F8_E4M3: {
        const int sc = (cols + DS_QBLOCK - 1) / DS_QBLOCK;
        for (int c = 0; c < cols; c++)
            code[c] = ds_e4m3_table[w[c]];
        for (int b = 0; b < sc; b++) {
            mul[b] = m->scale[(size_t)(r / DS_QBLOCK) * sc + b];
            mn[b] = 0.0f;
        }
        *bc = DS_QBLOCK;
        break;
    }
    case DS_DT_Q8_0:
        for (int b = 0; b < cols / DS_Q8_0_BLOCK; b++, w += DS_Q8_0_BYTES) {
            mul[b] = ds_load_f16(w);
            mn[b] = 0.0f;
            for (int i = 0; i < DS_Q8_0_BLOCK; i++)
                code[b * DS_Q8_0_BLOCK + i] = (float)(int8_t)w[2 + i];
        }
        *bc = DS_Q8_0_BLOCK;
        break;
    case DS_DT_Q4_K:
        for (int b = 0; b < cols / DS_Q4_K_BLOCK; b++, w += DS_Q4_K_BYTES)
            for (int j = 0; j < 8; j++) {
                int s, mm;
                ds_q4_k_scale_min(w + DS_Q4_K_OFF_SCALES, j, &s, &mm);
                mul[b * 8 + j] = ds_load_f16(w) * (float)s;
                mn[b * 8 + j] = ds_load_f16(w + 2) * (float)mm;
                const uint8_t *qs = w + DS_Q4_K_OFF_QS + 32 * (j / 2);
                for (int l = 0; l < DS_Q4_K_SUB; l++)
                    code[b * DS_Q4_K_BLOCK + j * DS_Q4_K_SUB + l] = (float)((j & 1) ? qs[l] >> 4 : qs[l] & 15);
            }
        *bc = DS_Q4_K_SUB;
        break;
    default:
        break;
    }
}

void ds_gemm_bf16_ref(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy)
{
    const ds_dtype dt = m->dtype;
    if (dt != DS_DT_BF16 && dt != DS_DT_F8_E4M3 && dt != DS_DT_Q8_0 && dt != DS_DT_Q4_K) {
        scalar_gemm(m, r0, nrows, X, ldx, n, Y, ldy);
        return;
    }
    const int cols = m->cols;
    float *xr = malloc(sizeof(float) * (size_t)n * cols + 1);
    float *code = malloc(sizeof(float) * (size_t)cols);
    float *mul = malloc(sizeof(float) * (size_t)cols), *mn = malloc(sizeof(float) * (size_t)cols);
    if (xr && code && mul && mn) {
        for (int t = 0; t < n; t++)
            if (dt == DS_DT_Q4_K)   /* int8 levels x 2^e: bf16 keeps them */
                ds_q4_k_act_round(X + (size_t)t * ldx, cols, xr + (size_t)t * cols);
            else
                for (int c = 0; c < cols; c++)
                    xr[(size_t)t * cols + c] = bf16_round(X[(size_t)t * ldx + c]);
        for (int i = 0; i < nrows; i++) {
            int bc = cols;
            bf16_row_codes(m, r0 + i, code, mul, mn, &bc);
            for (int t = 0; t < n; t++) {
                const float *x = xr + (size_t)t * cols;
                float y = 0.0f;
                for (int c0 = 0, b = 0; c0 < cols; c0 += bc, b++) {
                    const int c1 = c0 + bc < cols ? c0 + bc : cols;
                    float d = 0.0f, sx = 0.0f;
                    for (int c = c0; c < c1; c++) {
                        d += code[c] * x[c];
                        sx += x[c];
                    }
                    y += d * mul[b] - mn[b] * sx;
                }
                Y[(size_t)t * ldy + i] = y;
            }
        }
    }
    free(xr), free(code), free(mul), free(mn);
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

float ds_index_bound_c(const float *qt, int nh, int dim, const float *w)
{
    const int hs = DS_INDEX_HSTRIDE(nh);
    double c = 0.0;
    for (int h = 0; h < nh; h++) {
        float mq = 0.0f;
        for (int d = 0; d < dim; d++)
            mq = fmaxf(mq, fabsf(qt[(size_t)d * hs + h]));
        c += (double)fabsf(w[h]) * mq;
    }
    return (float)c * 1.0001f;
}

/* The approximate score and its bound.  The bound covers: the f32 dot of
 * dim products against the exact one (at most (dim + 2) u sum_d |q k| <=
 * (dim + 2) u max_d |q_hd| sum_d |k_d| per head, ReLU being 1-Lipschitz,
 * weighted by |w_h|), the exact score's own rounding of each d and of its
 * ordered head sum, and this sum's (each at most (nh + 2) u sum_h |w d|),
 * and the product by ks; ds_index_bound doubles the lot. */
static void scalar_index_scores_approx(const float *qt, int nh, int dim, const float *w, const uint8_t *k8,
                                       const float *ks, int n, float *score, float *bound)
{
    const int hs = DS_INDEX_HSTRIDE(nh);
    const float c = ds_index_bound_c(qt, nh, dim, w);
    for (int j = 0; j < n; j++) {
        const uint8_t *k = k8 + (size_t)j * dim;
        float l1 = 0.0f, s = 0.0f, sabs = 0.0f;
        for (int d = 0; d < dim; d++)
            l1 += (k[d] & 0x7f) == 0x7f ? 0.0f : fabsf(ds_e4m3_to_f32(k[d]));
        for (int h = 0; h < nh; h++) {
            float acc = 0.0f;
            for (int d = 0; d < dim; d++)
                if ((k[d] & 0x7f) != 0x7f)
                    acc += qt[(size_t)d * hs + h] * ds_e4m3_to_f32(k[d]);
            if (acc > 0.0f)
                s += w[h] * acc;
            sabs += fabsf(w[h] * acc);
        }
        score[j] = s * ks[j];
        bound[j] = ds_index_bound(l1 * 1.0001f, c, sabs, score[j], ks[j], nh, dim);
    }
}

static void scalar_index_scores_fp8(const double *qt, int nh, int dim, const float *w, const uint8_t *k8,
                                    const float *ks, int n, float *score)
{
    ds_index_scores_fp8_with(&ds_kernels_scalar, qt, nh, dim, w, k8, ks, n, score);
}

static void scalar_gemm_tn(const float *A, int n, int cols, const float *X, int ldx, int t0, int t1, float *Y,
                           int ldy)
{
    for (int t = t0; t < t1; t++)
        for (int c = 0; c < cols; c++) {
            float s = 0.0f;
            for (int k = 0; k < n; k++)
                s += X[(size_t)t * ldx + k] * A[(size_t)k * cols + c];
            Y[(size_t)t * ldy + c] = s;
        }
}

static void scalar_softmax(float *x, int n)
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


/* ---- absorbed decode attention over cached keys (reference) ---------- */

static float attn_lat(const ds_attn_keys *k, int j, int c)
{
    if (k->lat_f32)
        return k->lat_f32[(size_t)j * k->kvl + c];
    const int nb = (k->kvl + 127) / 128;
    return ds_e4m3_to_f32(k->lat_q[(size_t)j * k->kvl + c]) * k->lat_s[(size_t)j * nb + c / 128];
}

static float attn_rope(const ds_attn_keys *k, int j, int r)
{
    if (k->rope_f32)
        return k->rope_f32[(size_t)j * k->rope + r];
    const uint32_t u = (uint32_t)k->rope_bf16[(size_t)j * k->rope + r] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void scalar_attn_scores(const ds_attn_keys *k, const int32_t *pos, int base, int n, const float *qp, int nhb,
                               float *s, int lds)
{
    const int ncl = (k->kvl + 15) / 16, ncr = (k->rope + 15) / 16;
    for (int b = 0; b < nhb; b++) {
        const float *qb = qp + (size_t)b * (ncl + ncr) * 256;
        for (int i = 0; i < n; i++) {
            const int j = pos ? pos[i] : base + i;
            for (int h = 0; h < DS_ATTN_HB; h++) {
                float a = 0.0f;
                for (int c = 0; c < k->kvl; c++)
                    a += qb[((size_t)(c / 16) * 16 + h) * 16 + c % 16] * attn_lat(k, j, c);
                for (int r = 0; r < k->rope; r++)
                    a += qb[((size_t)(ncl + r / 16) * 16 + h) * 16 + r % 16] * attn_rope(k, j, r);
                s[((size_t)b * lds + i) * 16 + h] = a;
            }
        }
    }
}

static void scalar_attn_softmax(float *s, int n, int nhb, int lds, float scale)
{
    for (int b = 0; b < nhb; b++)
        for (int h = 0; h < DS_ATTN_HB; h++) {
            float *x = s + (size_t)b * lds * 16 + h;
            float mx = -INFINITY, sum = 0.0f;
            for (int i = 0; i < n; i++) {
                x[(size_t)i * 16] *= scale;
                if (x[(size_t)i * 16] > mx)
                    mx = x[(size_t)i * 16];
            }
            for (int i = 0; i < n; i++) {
                x[(size_t)i * 16] = expf(x[(size_t)i * 16] - mx);
                sum += x[(size_t)i * 16];
            }
            for (int i = 0; i < n; i++)
                x[(size_t)i * 16] /= sum;
        }
}

static void scalar_attn_wsum(const ds_attn_keys *k, const int32_t *pos, int base, int n, const float *p, int nhb,
                             int ldp, float *o)
{
    const int nc = (k->kvl + 15) / 16;
    memset(o, 0, sizeof(float) * (size_t)nhb * nc * 256);
    for (int b = 0; b < nhb; b++)
        for (int i = 0; i < n; i++) {
            const int j = pos ? pos[i] : base + i;
            for (int h = 0; h < DS_ATTN_HB; h++) {
                const float pr = p[((size_t)b * ldp + i) * 16 + h];
                for (int c = 0; c < k->kvl; c++)
                    o[(((size_t)b * nc + c / 16) * 16 + h) * 16 + c % 16] += pr * attn_lat(k, j, c);
            }
        }
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
    .index_scores_approx = scalar_index_scores_approx,
    .gemm_tn = scalar_gemm_tn,
    .softmax = scalar_softmax,
    .attn_scores = scalar_attn_scores,
    .attn_softmax = scalar_attn_softmax,
    .attn_wsum = scalar_attn_wsum,
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
