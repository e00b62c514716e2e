/* kernels_isa.h — the per-ISA kernel tables behind the public entry points
 * of kernels.h.  Internal to simd/ and its tests: the model calls ds_gemv &c.
 * and never sees which table serves it.  Every table has the exact
 * semantics of the scalar one; only the f32 summation order may differ. */
#ifndef DS_KERNELS_ISA_H
#define DS_KERNELS_ISA_H

#include <omp.h>
#include "cpu.h"
#include "kernels.h"
#include "quant.h"

typedef struct ds_kernels {
    const char *name;
    void (*mat_row)(const ds_mat *m, int r, float *out);
    void (*gemv)(const ds_mat *m, int r0, int nrows, const float *x, float *y);
    void (*gemv_t)(const ds_mat *m, int r0, int nrows, const float *x, float *y);
    /* NULL where the level has none: one gemv_t per token serves (see
     * ds_gemm_t; a form must give each token's gemv_t to the bit) */
    void (*gemm_t)(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy);
    void (*gemm)(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n,
                 float *Y, int ldy);
    float (*dot)(const float *a, const float *b, int n);
    void (*axpy)(float a, const float *x, float *y, int n);
    void (*e4m3_to_f64)(const uint8_t *q, size_t n, double *out);
    void (*index_scores)(const double *qt, int nh, int dim, const float *w, const double *kd, const float *ks,
                         int n, float *score);
    void (*index_scores_fp8)(const double *qt, int nh, int dim, const float *w, const uint8_t *k8,
                             const float *ks, int n, float *score);
    /* NULL where the level has no fast form (see ds_index_scores_fp8_approx) */
    void (*index_scores_approx)(const float *qt, int nh, int dim, const float *w, const uint8_t *k8,
                                const float *ks, int n, float *score, float *bound);
    /* NULL where the level has no fast form (see ds_gemm_tn_f32); token
     * rows [t0, t1) only, the caller splits the work */
    void (*gemm_tn)(const float *A, int n, int cols, const float *X, int ldx, int t0, int t1, float *Y, int ldy);
    /* NULL where the level has none: the scalar one serves (ds_softmax) */
    void (*softmax)(float *x, int n);
    /* NULL where the level has no fast form: the scalar ones serve (see
     * ds_attn_fast) */
    void (*attn_scores)(const ds_attn_keys *k, const int32_t *pos, int base, int n, const float *qp, int nhb,
                        float *s, int lds);
    void (*attn_softmax)(float *s, int n, int nhb, int lds, float scale);
    void (*attn_wsum)(const ds_attn_keys *k, const int32_t *pos, int base, int n, const float *p, int nhb, int ldp,
                      float *o);
} ds_kernels;

/* The scalar forms, shared by tables without a SIMD one (neon). */
void ds_e4m3_to_f64_scalar(const uint8_t *q, size_t n, double *out);
void ds_index_scores_scalar(const double *qt, int nh, int dim, const float *w, const double *kd,
                            const float *ks, int n, float *score);

/* The error bound of an approximate indexer score (see kernels_scalar.c):
 * l1 = sum |k|, c = sum_h |w_h| max_d |q_hd|, sabs = sum_h |w_h| |d_h|,
 * s = the approximate score, ks the key's scale.  The AVX512_BF16 scorer
 * (kernels_avx512bf16.c) evaluates the same terms sixteen keys at a time:
 * change both together. */
static inline float ds_index_bound(float l1, float c, float sabs, float s, float ks, int nh, int dim)
{
    const float u = 0x1p-24f;
    return (2.0f * (float)(dim + 2) * u * l1 * c + (float)(2 * nh + 8) * u * sabs) * 1.01f * ks +
           2.0f * u * (s < 0 ? -s : s) + 1e-37f;
}
/* c of ds_index_bound for a query qt (transposed, f32). */
float ds_index_bound_c(const float *qt, int nh, int dim, const float *w);

/* index_scores_fp8 as decode (e4m3_to_f64) then index_scores of table k,
 * 32 keys at a time: the form of tables without a fused one. */
void ds_index_scores_fp8_with(const ds_kernels *k, const double *qt, int nh, int dim, const float *w,
                              const uint8_t *k8, const float *ks, int n, float *score);

/* Keeps the compiler from fusing the product x into a following addition
 * (GCC contracts a * b + c into an FMA by default where the target has
 * one; the indexer's head sum must round the product first). */
#if defined(__GNUC__) && defined(__x86_64__)
#define DS_NO_FUSE(x) __asm__("" : "+x"(x))
#elif defined(__GNUC__) && defined(__aarch64__)
#define DS_NO_FUSE(x) __asm__("" : "+w"(x))
#elif defined(__GNUC__)
#define DS_NO_FUSE(x) __asm__("" : "+m"(x))
#else
#define DS_NO_FUSE(x) ((void)0)
#endif

extern const ds_kernels ds_kernels_scalar;
#if defined(__x86_64__) || defined(__i386__)
extern const ds_kernels ds_kernels_avx2;
extern const ds_kernels ds_kernels_avx512;
#endif
#if defined(__aarch64__)
extern const ds_kernels ds_kernels_neon;
#endif

#if defined(__x86_64__) || defined(__i386__)
/* kernels_avx512bf16.c: ds_gemm_bf16's rounded product on a CPU with
 * AVX512_BF16; returns 0 (nothing written) for a dtype it does not take or
 * when its scratch cannot be allocated. */
int ds_gemm_bf16_avx512(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy);
/* The same products for n < DS_GEMM_BF16_MIN_N tokens (decode, batched
 * decode): weights stream once, converted in registers, no panel.  BF16,
 * FP8, Q8_0 and Q4_K (int8 activations, quant.h), on a CPU with VBMI and
 * VNNI too; returns 0 (nothing written) for other dtypes, or for Q4_K
 * when an activation block holds Inf or NaN. */
int ds_gemm_bf16_small_avx512(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y,
                              int ldy);
/* The same for several parts (ds_gemm_bf16_parts) in one region; 0
 * (nothing written) unless it takes every part. */
int ds_gemm_bf16_small_parts_avx512(const ds_gemm_part *p, int np, int n);
/* Q4_K against int8 activations on AVX2 (no VNNI needed): a token's
 * blocks as levels, 2^e and sub-block sums (0 for a block holding Inf or
 * NaN), then rows against n <= 16 tokens so packed; the products of the
 * AVX-512 decode kernel. */
int ds_q4k_i8_pack_avx2(const float *x, int cols, int8_t *xq, float *xd, float *xs);
void ds_q4k_i8_rows_avx2(const ds_mat *m, int r0, int nrows, const int8_t *xq, const float *xd, const float *xs,
                         int n, float *Y, int ldy);
/* The same rows against any number of tokens, as a GEMM (prefill); 0
 * (nothing written) when out of memory. */
int ds_q4k_i8_gemm_avx2(const ds_mat *m, int r0, int nrows, const int8_t *xq, const float *xd, const float *xs,
                        int n, float *Y, int ldy);
/* ds_q4_k_act_round (quant.h) on AVX-512F, bit for bit. */
void ds_q4_k_act_round_avx512(const float *x, int cols, float *out);
/* ds_index_scores_fp8_approx on AVX512_BF16 + VBMI straight from the key
 * tiles (qt FP8 values, dim <= DS_INDEX_MAXDIM, at most 64 heads, j0 a
 * multiple of DS_INDEX_TILE); 0 when it cannot run. */
int ds_index_scores_approx_bf16(const float *qt, int nh, int dim, const float *w, const uint8_t *tiles, int j0,
                                const float *ks, int n, float *score, float *bound);
#endif
/* ds_gemm_bf16 of Q4_K weights through ds_q4k_i8_* (rows split across the
 * threads outside a region): below DS_GEMM_BF16_MIN_N tokens the row
 * kernel, from there at the AVX2 level only the GEMM; 0 when it cannot run:
 * not x86, no AVX2, columns not whole blocks, an activation block holding
 * Inf or NaN, no memory (nothing written, except rows of another thread
 * when a GEMM panel found no memory: the caller then writes them all). */
int ds_gemm_bf16_q4k_i8(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy);

/* The table of level isa, or NULL when this build or this CPU lacks it. */
const ds_kernels *ds_kernels_for(ds_isa isa);
/* The table the public entry points use (level ds_cpu_isa()). */
const ds_kernels *ds_kernels_active(void);

/* Rows are split across OpenMP threads only past this many weight elements
 * (the same rule as the scalar reference): below it thread start-up costs
 * more than the product. */
/* Bytes per row of a matrix the kernels accept (a valid dtype, whole
 * blocks): ds_dtype_row_bytes without its checks, a division by a constant
 * at most, since the kernels ask once per row. */
static inline size_t ds_mat_row_bytes(const ds_mat *m)
{
    const size_t c = (size_t)m->cols;
    switch (m->dtype) {
    case DS_DT_F32: return 4 * c;
    case DS_DT_F16:
    case DS_DT_BF16: return 2 * c;
    case DS_DT_Q8_0: return c / DS_Q8_0_BLOCK * DS_Q8_0_BYTES;
    case DS_DT_Q4_K: return c / DS_Q4_K_BLOCK * DS_Q4_K_BYTES;
    default: return c;
    }
}

static inline int ds_worth_threads(long work) { return work >= (1L << 16); }

/* Whether a product of `work` should enter a parallel region: worth the
 * threads, and not already inside a region, where a nested one runs on one
 * thread anyway and entering it costs 3 us (measured here; 1.5 us at top
 * level even under if (0)): an expert's products in the experts' region. */
static inline int ds_par_here(long work) { return ds_worth_threads(work) && !omp_in_parallel(); }

/* A GEMV as one row dot DOT(m, r, x) a row, the rows split statically
 * across the threads where ds_par_here (the AVX2, NEON and scalar levels). */
#define DS_GEMV_BY_ROWS(DOT, m, r0, nrows, x, y)                  \
    do {                                                          \
        if (ds_par_here((long)(nrows) * (m)->cols)) {             \
            _Pragma("omp parallel for schedule(static)")          \
            for (int i_ = 0; i_ < (nrows); i_++)                  \
                (y)[i_] = DOT((m), (r0) + i_, (x));               \
        } else                                                    \
            for (int i_ = 0; i_ < (nrows); i_++)                  \
                (y)[i_] = DOT((m), (r0) + i_, (x));               \
    } while (0)

/* Prefetches the weight bytes of rows [r, r + nr) x columns [c0, c0 + len)
 * of m (c0, len on block boundaries for block types).  The GEMMs call it
 * for the next tile's rows while working on the current one: a tile walks
 * four rows chunk by chunk, a pattern the hardware stream prefetchers do
 * not follow, and without it weights arrive at DRAM latency, not bandwidth. */
static inline void ds_prefetch_rows(const ds_mat *m, int r, int nr, int c0, int len)
{
    if (r + nr > m->rows)
        nr = m->rows - r;
    const size_t rb = ds_dtype_row_bytes(m->dtype, m->cols);
    const size_t off = ds_dtype_row_bytes(m->dtype, c0), n = ds_dtype_row_bytes(m->dtype, len);
    for (int i = 0; i < nr; i++) {
        const char *p = (const char *)m->data + (size_t)(r + i) * rb + off;
        for (size_t b = 0; b < n; b += 64)
            __builtin_prefetch(p + b, 0, 3);
    }
}

#endif
