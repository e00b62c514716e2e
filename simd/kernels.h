/* kernels.h — numeric kernels: matrix-vector / matrix-matrix products over
 * quantised weight matrices (dequantised inside the kernel, f32 accumulate)
 * and the element-wise ops of a transformer.  Knows nothing of DeepSeek.
 *
 * ds_mat_row, ds_gemv, ds_gemv_t, ds_gemm, ds_dot and ds_axpy dispatch to
 * the SIMD table chosen once per process (cpu.h, kernels_isa.h); the scalar
 * table (kernels_scalar.c) is the reference every SIMD kernel is tested
 * against. */
#ifndef DS_KERNELS_H
#define DS_KERNELS_H

#include <stdint.h>
#include "dtype.h"
#include "index_tiles.h"

#define DS_QBLOCK 128  /* FP8 block-scale tile edge (weight_block_size) */

/* A read-only view of a weight matrix [rows, cols], row-major.
 * For DS_DT_F8_E4M3, scale is [ceil(rows/128), ceil(cols/128)] f32
 * dequantisation multipliers (HF `weight_scale_inv`). */
typedef struct ds_mat {
    ds_dtype dtype;
    int rows, cols;
    const void *data;
    const float *scale;
    /* Optional per-NUMA-node copies of the same matrix (--numa replicate):
     * copies[k] lives in node k's memory; a thread reads the copy of the
     * node ds_kernels_set_node() gave it.  NULL: one copy, `data`. */
    const struct ds_mat *copies;
    int n_copies;
} ds_mat;

/* The NUMA node of the calling thread, used to pick a ds_mat copy; set by
 * the thread-pinning code, 0 for threads never told. */
void ds_kernels_set_node(int node);
int ds_kernels_node(void);

/* Dequantises row r into out[cols]. */
void ds_mat_row(const ds_mat *m, int r, float *out);

/* y[i] = sum_c W[r0 + i][c] * x[c], i < nrows. */
void ds_gemv(const ds_mat *m, int r0, int nrows, const float *x, float *y);
/* y[c] = sum_i W[r0 + i][c] * x[i] for every column c (transposed product). */
void ds_gemv_t(const ds_mat *m, int r0, int nrows, const float *x, float *y);
/* Y[t] = ds_gemv_t(m, r0, nrows, X[t]) for t < n, each to the bit, the
 * weights read once for several tokens where the kernel level can; X and
 * Y have row strides ldx, ldy.  Serial (callers issue it per head). */
void ds_gemm_t(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy);
/* Y[t][i] = sum_c W[r0 + i][c] * X[t][c] for t < n; X has row stride ldx,
 * Y row stride ldy (both in floats). */
void ds_gemm(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n,
             float *Y, int ldy);

/* The prefill product with bf16 activations: as ds_gemm, but every X
 * element is rounded to bf16 (nearest even) and products are summed in f32
 * (AVX512_BF16 vdpbf16ps).  Weights stay exact: FP8 e4m3, Q8_0 and Q4_K
 * codes and BF16 values are exact in bf16, and their block multipliers
 * (FP8 128x128 scales, Q8_0 d, Q4_K d*sc and dmin*m) are applied in f32 to
 * each block's dot.  On a CPU with AVX512_BF16 (ds_gemm_bf16_native) that
 * is a vdpbf16ps kernel, where inputs below the smallest normal float count
 * as zero: from DS_GEMM_BF16_MIN_N tokens the panel GEMM, below it (decode,
 * batched decode) a streaming kernel for BF16, FP8, Q8_0 and Q4_K weights that
 * also needs AVX512_VBMI.  Otherwise X is rounded into a copy and the exact
 * kernels run on it: the same products, summed in another order.  F32 / F16 weights (ds_gemm_bf16_rounds(dtype)
 * == 0) are never rounded: it is ds_gemm itself.
 * Against Q4_K weights X is rounded coarser, as llama.cpp's Q4_K dots do
 * (Q8_K): per 256 columns to int8 levels times a power of two
 * (ds_q4_k_act_round in quant.h, about 2^-8 of the block's largest
 * value, against the 4-bit weights' 2^-5 of theirs), which bf16 holds
 * exactly; decode then sums int8 dots (VNNI), four times fewer
 * instructions a weight than bf16 ones, and on CPUs without the
 * AVX512_BF16 kernels int8 dots on AVX2 (vpmaddubsw / vpmaddwd) below
 * DS_GEMM_BF16_MIN_N tokens. */
#define DS_GEMM_BF16_MIN_N 16
void ds_gemm_bf16(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy);
/* One of several products of a step with the same n tokens: rows
 * [r0, r0 + nrows) of m against X (stride ldx) into Y (stride ldy). */
typedef struct ds_gemm_part {
    const ds_mat *m;
    int r0, nrows;
    const float *X;
    int ldx;
    float *Y;
    int ldy;
} ds_gemm_part;
/* ds_gemm_bf16 of every part, each part's results its own call's to the
 * bit.  Below DS_GEMM_BF16_MIN_N tokens on the streaming kernel the parts'
 * rows are split across the threads in one region (products of the same
 * activations, such as MLA's q_a and kv_a, were a region each, with a
 * barrier each); activations shared by parts are packed once. */
void ds_gemm_bf16_parts(const ds_gemm_part *p, int np, int n);
/* ds_q4_k_act_round of n rows of X (stride ldx) into out [n][cols]. */
void ds_q4_k_act_round_rows(const float *X, int ldx, int n, int cols, float *out);
int ds_gemm_bf16_rounds(ds_dtype dt);
int ds_gemm_bf16_native(void);
/* The scalar reference of ds_gemm_bf16's rounded semantics, on any CPU
 * (F32 / F16 weights: the exact scalar product).  For tests. */
void ds_gemm_bf16_ref(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy);

/* Element-wise and reduction ops (f32). */
float ds_dot(const float *a, const float *b, int n);
void ds_axpy(float a, const float *x, float *y, int n);          /* y += a x */
/* Y[t][c] = sum_k X[t][k] A[k][c] over k < n, for t < nt, c < cols: the
 * product with an f32 matrix A (n x cols, row-major) on the left of its
 * rows, in k order per output (attention's weighted sum of latents, with
 * no transposed copy of them).  Returns 0 (nothing written) when the
 * kernel level has no fast form: transpose A and use ds_gemm then. */
int ds_gemm_tn_f32(const float *A, int n, int cols, const float *X, int ldx, int nt, float *Y, int ldy);
int ds_gemm_tn_fast(void);     /* 1 when ds_gemm_tn_f32 runs */
void ds_rmsnorm(const float *x, const float *w, float eps, int n, float *y);
void ds_layernorm(const float *x, const float *w, const float *b, float eps, int n, float *y);
void ds_softmax(float *x, int n);
/* In-place Walsh-Hadamard transform (Sylvester order) of n = 2^k values,
 * scaled by n^-1/2. */
void ds_hadamard(float *x, int n);
float ds_silu(float x);

/* FP8 e4m3 codes to their exact values as doubles; the NaN codes 0x7f/0xff
 * give 0 (as the indexer's integer reference reads them). */
void ds_e4m3_to_f64(const uint8_t *q, size_t n, double *out);

/* ReLU-weighted head sums of exact dot products, the score of the DSA
 * lightning indexer.  For keys j < n (rows kd + j * dim, f64 values of FP8
 * codes from ds_e4m3_to_f64) and query heads h < nh given transposed as
 * qt[d * DS_INDEX_HSTRIDE(nh) + h] (padding heads 0):
 *   d_hj = (float)(sum_d qt[d][h] * kd[j][d])   (exact in f64, rounded once)
 *   score[j] = (sum over h in order, f32: d_hj > 0 ? w[h] * d_hj : 0) * ks[j]
 * with f32 products and sums unfused.  Every table gives the same bits. */
#define DS_INDEX_HSTRIDE(nh) (((nh) + 15) & ~15)
void ds_index_scores(const double *qt, int nh, int dim, const float *w, const double *kd, const float *ks,
                     int n, float *score);
/* The same straight from the e4m3 key codes k8[j * dim + d], dim <=
 * DS_INDEX_MAXDIM (the decode step's form: AVX-512 decodes the next keys
 * while it scores the current ones). */
#define DS_INDEX_MAXDIM 256
void ds_index_scores_fp8(const double *qt, int nh, int dim, const float *w, const uint8_t *k8, const float *ks,
                         int n, float *score);

/* The indexer score in f32, with a bound on its distance from the exact
 * one, for the decode step's selection (src/indexer.c recomputes exactly
 * the keys whose bounds straddle the top-k threshold).  qt as above but in
 * float (the FP8 values are exact there); the keys are positions j0 + i,
 * i < n, of the cache's tiles (index_tiles.h), j0 a multiple of
 * DS_INDEX_TILE, ks[i] their scales; for i < n:
 *   |score[i] - ds_index_scores_fp8's score of key j0 + i| <= bound[i]
 * whatever the summation order.  Returns 0 (nothing written) when the
 * kernel level has no fast form: then the exact scorer is the fast one. */
int ds_index_scores_fp8_approx(const float *qt, int nh, int dim, const float *w, const uint8_t *tiles, int j0,
                               const float *ks, int n, float *score, float *bound);

/* ---- absorbed decode attention straight over the cached keys ----------
 * One decode query of nh heads against n cached keys, without first
 * expanding the keys to an f32 matrix: the scores, a softmax per head, and
 * the probability-weighted sum of the latents.  Heads go in blocks of
 * DS_ATTN_HB, one per vector lane; the query and the outputs are in
 * chunk-interleaved layouts (below) so every access is at a constant
 * offset.  Every level computes the same sums in f32, in its own order.
 *
 * The keys of one layer: the latent as f32 or as e4m3 with one f32 scale
 * per 128 values (value = code * scale, rounded once, as ds_kv_load_latent
 * has it; NaN codes are not used), and the rope key as f32 or bf16. */
#define DS_ATTN_HB 16
typedef struct ds_attn_keys {
    int kvl, rope;               /* latent and rope key widths */
    const float *lat_f32;        /* [pos][kvl], or NULL for lat_q + lat_s */
    const uint8_t *lat_q;        /* [pos][kvl] e4m3 codes */
    const float *lat_s;          /* [pos][(kvl + 127) / 128] */
    const float *rope_f32;       /* [pos][rope], or NULL for rope_bf16 */
    const uint16_t *rope_bf16;   /* [pos][rope] */
} ds_attn_keys;

/* Floats of a packed query: per head block, the latent columns in chunks
 * of 16 then the rope columns in chunks of 16, each chunk [16 heads][16
 * columns]; missing heads and columns are 0. */
size_t ds_attn_q_floats(int nh, int kvl, int rope);
/* Packs qabs[h * ldqa + c] (c < kvl) and qr[h * ldqr + r] (r < rope). */
void ds_attn_pack_q(const float *qabs, int ldqa, const float *qr, int ldqr, int nh, int kvl, int rope, float *qp);
/* 1 when the active level has a fast form of the three below (else they
 * run the scalar reference, slower than gathering the keys for ds_gemm). */
int ds_attn_fast(void);
/* s[(b * lds + i) * 16 + h] = sum over the latent and rope columns of
 * query head 16 b + h times key pos[i] (base + i when pos is NULL), i < n,
 * for the nhb head blocks of the packed query qp. */
void ds_attn_scores(const ds_attn_keys *k, const int32_t *pos, int base, int n, const float *qp, int nhb, float *s,
                    int lds);
/* s[(b * lds + i) * 16 + h] = softmax over i < n of scale * s[...], for
 * every lane h of every block b (the steps of ds_softmax). */
void ds_attn_softmax(float *s, int n, int nhb, int lds, float scale);
/* o[((b * nc + c / 16) * 16 + h) * 16 + c % 16] = sum over i < n of
 * p[(b * ldp + i) * 16 + h] * latent c of key pos[i] (base + i when pos is
 * NULL), c < kvl, nc = (kvl + 15) / 16, padding columns 0; overwritten. */
void ds_attn_wsum(const ds_attn_keys *k, const int32_t *pos, int base, int n, const float *p, int nhb, int ldp,
                  float *o);

#endif
