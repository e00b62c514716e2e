/* kernels_avx2.c — the AVX2 (+FMA, F16C) kernel table ds_kernels_avx2:
 * row dot products, row dequantisation, GEMV, transposed GEMV, a register-
 * tiled GEMM and dot/axpy over F32, BF16, F16 and FP8 e4m3 (128x128 block
 * scales) weights.
 *
 * Only the functions carry target attributes, so the file builds in a
 * generic x86-64 compile and is entered only after cpu.c has checked that
 * CPU and OS support AVX2, FMA and F16C.  Same structure as
 * kernels_avx512.c; AVX2 has no masked loads for 8/16-bit elements, so
 * weight tails are copied into a zero-padded temporary.  OpenMP regions live in plain functions that
 * call target-attributed ones (never inline them), which keeps GCC's
 * outlined OpenMP bodies free of target-option mismatches.
 *
 * FP8 decoding: an e4m3 byte s.eeee.mmm is moved into the f16 bit layout
 * s.0eeee.mmm0000000 (sign-extend to 16 bits, shift left 7, clear bit 14)
 * and converted with vcvtph2ps.  f16 has exponent bias 15 against e4m3's 7,
 * so every value, subnormals included, comes out exactly 2^-8 times the
 * true one; the 2^8 is folded into the block scale (an exact power-of-two
 * product).  The NaN codes 0x7f/0xff decode to the finite +-480 instead of
 * NaN: valid weights never contain them and nothing faults.
 *
 * Q8_0 / Q4_K (layouts in quant.h): the int8 / 4-bit quants are widened to
 * int32, converted to f32 and multiplied with the f32 activations by FMA;
 * the activations are not quantised.  That keeps every result within f32
 * rounding of the scalar reference (and mat_row bitwise equal to it: the
 * Q4_K decode (d*sc)*q - dmin*m is one fmsub of an exact product).  An
 * integer path (activation rows quantised to int8 per block, maddubs /
 * VNNI) would be faster but differs from the reference by the activation
 * quantisation error, so it is left to a later, separately tested step. */
#if defined(__x86_64__) || defined(__i386__)

#include <float.h>
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>
#include "kernels_isa.h"
#include "quant.h"

#define T256 __attribute__((target("avx2,fma,f16c")))
#define INL static inline __attribute__((always_inline)) T256
#define NOINL static __attribute__((noinline)) T256

enum {
    VW = 8,             /* floats per vector */
    KC = 512,           /* GEMM column chunk: 3 rows + 4 tokens of it stay in L1 */
    RT = 3,             /* GEMM rows per register tile */
    TT = 4,             /* GEMM tokens per register tile: 12 accumulators + 3 weights + 1 token of
                           16 ymm (4 x 2 ran at 46-52 GMAC/s, this at 65-87) */
};

/* Lanes j < left are all-ones (for maskload/maskstore). */
INL __m256i tail_mask(int left)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

INL float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 8 e4m3 codes -> 8 floats, each 2^-8 times its true value (see top). */
INL __m256 e4m3x8(__m128i b)
{
    __m128i h = _mm_slli_epi16(_mm_cvtepi8_epi16(b), 7);
    h = _mm_and_si128(h, _mm_set1_epi16((short)0xbf80));
    return _mm256_cvtph_ps(h);
}

/* 8 weights of dtype dt starting at element c.  dt is a constant at every
 * (inlined) call site, so the switch folds. */
INL __m256 load_w(ds_dtype dt, const void *w, int c)
{
    switch (dt) {
    case DS_DT_F32:
        return _mm256_loadu_ps((const float *)w + c);
    case DS_DT_BF16: {
        __m128i u = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + c));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(u), 16));
    }
    case DS_DT_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + c)));
    case DS_DT_F8_E4M3:
        return e4m3x8(_mm_loadl_epi64((const __m128i *)((const uint8_t *)w + c)));
    default:
        return _mm256_setzero_ps();
    }
}

/* The last left < 8 weights from element c, zero-padded: copied first
 * because a full-width load could run past the end of the matrix. */
INL __m256 load_w_tail(ds_dtype dt, const void *w, int c, int left)
{
    if (dt == DS_DT_F32)
        return _mm256_maskload_ps((const float *)w + c, tail_mask(left));
    const size_t es = ds_dtype_size(dt);
    uint8_t tmp[VW * sizeof(float)] = {0};
    memcpy(tmp, (const uint8_t *)w + (size_t)c * es, (size_t)left * es);
    return load_w(dt, tmp, 0);
}

/* Lane sums of w[0..n) * x[0..n) (FP8 values still 2^-8 scaled). */
INL __m256 span_dot(ds_dtype dt, const void *w, const float *x, int n)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int c = 0;
    for (; c + 2 * VW <= n; c += 2 * VW) {
        a0 = _mm256_fmadd_ps(load_w(dt, w, c), _mm256_loadu_ps(x + c), a0);
        a1 = _mm256_fmadd_ps(load_w(dt, w, c + VW), _mm256_loadu_ps(x + c + VW), a1);
    }
    if (c + VW <= n) {
        a0 = _mm256_fmadd_ps(load_w(dt, w, c), _mm256_loadu_ps(x + c), a0);
        c += VW;
    }
    if (c < n)
        a1 = _mm256_fmadd_ps(load_w_tail(dt, w, c, n - c), _mm256_maskload_ps(x + c, tail_mask(n - c)), a1);
    return _mm256_add_ps(a0, a1);
}

INL const void *row_ptr(const ds_mat *m, int r)
{
    return (const uint8_t *)m->data + (size_t)r * ds_mat_row_bytes(m);
}

/* ---- Q8_0 / Q4_K -------------------------------------------------------- */

/* The f16 at p (exact, like ds_f16_to_f32). */
INL float f16_at(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* 8 int8 quants -> 8 floats. */
INL __m256 q8x8(const uint8_t *q)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q)));
}

/* Lane sums of q[i] * x[i] over one Q8_0 block (d not yet applied). */
INL __m256 q8_0_block_dot(const uint8_t *b, const float *x)
{
    const uint8_t *q = b + 2;
    __m256 a0 = _mm256_mul_ps(q8x8(q), _mm256_loadu_ps(x));
    __m256 a1 = _mm256_mul_ps(q8x8(q + 8), _mm256_loadu_ps(x + 8));
    a0 = _mm256_fmadd_ps(q8x8(q + 16), _mm256_loadu_ps(x + 16), a0);
    a1 = _mm256_fmadd_ps(q8x8(q + 24), _mm256_loadu_ps(x + 24), a1);
    return _mm256_add_ps(a0, a1);
}

NOINL float q8_0_row_dot(const ds_mat *m, int r, const float *x)
{
    const uint8_t *b = row_ptr(m, r);
    __m256 total = _mm256_setzero_ps();
    for (int c0 = 0; c0 < m->cols; c0 += DS_Q8_0_BLOCK, b += DS_Q8_0_BYTES)
        total = _mm256_fmadd_ps(q8_0_block_dot(b, x + c0), _mm256_set1_ps(f16_at(b)), total);
    return hsum(total);
}

/* A Q4_K block's 8 6-bit scales and 8 mins, one a lane (as
 * ds_q4_k_scale_min unpacks them): sc0-3 = s0-3 & 63, sc4-7 = (s8-11 & 15)
 * | (s0-3 >> 6) << 4, m0-3 = s4-7 & 63, m4-7 = (s8-11 >> 4) | (s4-7 >> 6)
 * << 4.  In vectors once a block: the scalar unpacking per sub-block pair
 * took longer than the 64 weights it scales. */
INL void q4_k_scales_mins(const uint8_t *blk, __m256i *sc, __m256i *mn)
{
    const __m128i s = _mm_loadu_si128((const __m128i *)(const void *)(blk + DS_Q4_K_OFF_SCALES));
    const __m256i mask = _mm256_setr_epi32(63, 63, 63, 63, 15, 15, 15, 15);
    /* byte indices of the 8 lanes (-1: 0) */
    const __m128i ilo0 = _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i ilo1 = _mm_setr_epi8(4, 5, 6, 7, 8, 9, 10, 11, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i ihi0 = _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i ihi1 = _mm_setr_epi8(-1, -1, -1, -1, 4, 5, 6, 7, -1, -1, -1, -1, -1, -1, -1, -1);
    *sc = _mm256_or_si256(_mm256_and_si256(_mm256_cvtepu8_epi32(_mm_shuffle_epi8(s, ilo0)), mask),
                          _mm256_slli_epi32(_mm256_srli_epi32(_mm256_cvtepu8_epi32(_mm_shuffle_epi8(s, ihi0)), 6), 4));
    const __m256i lo1 = _mm256_srlv_epi32(_mm256_cvtepu8_epi32(_mm_shuffle_epi8(s, ilo1)),
                                          _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    *mn = _mm256_or_si256(_mm256_and_si256(lo1, mask),
                          _mm256_slli_epi32(_mm256_srli_epi32(_mm256_cvtepu8_epi32(_mm_shuffle_epi8(s, ihi1)), 6), 4));
}

/* The multipliers of the 8 sub-blocks, weight = q * a_j - b_j: a_j =
 * d * sc_j in lane j of mults[0], b_j = dmin * m_j in lane j of mults[1]
 * (both exact products). */
INL void q4_k_mults(const uint8_t *blk, __m256 mults[2])
{
    __m256i sc, mn;
    q4_k_scales_mins(blk, &sc, &mn);
    mults[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(sc), _mm256_set1_ps(f16_at(blk)));
    mults[1] = _mm256_mul_ps(_mm256_cvtepi32_ps(mn), _mm256_set1_ps(f16_at(blk + 2)));
}

/* The multipliers of sub-blocks 2g and 2g+1 from q4_k_mults. */
INL void q4_k_pair(const __m256 mults[2], int g, __m256 a[2], __m256 bm[2])
{
    for (int h = 0; h < 2; h++) {
        a[h] = _mm256_permutevar8x32_ps(mults[0], _mm256_set1_epi32(2 * g + h));
        bm[h] = _mm256_permutevar8x32_ps(mults[1], _mm256_set1_epi32(2 * g + h));
    }
}

/* Weights l .. l+7 of sub-blocks 2g (lo) and 2g+1 (hi) of a Q4_K block. */
INL void q4_k_w8(const uint8_t *blk, int g, int l, const __m256 a[2], const __m256 bm[2], __m256 *lo,
                 __m256 *hi)
{
    const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(blk + DS_Q4_K_OFF_QS + 32 * g + l)));
    *lo = _mm256_fmsub_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15))), a[0], bm[0]);
    *hi = _mm256_fmsub_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4)), a[1], bm[1]);
}

NOINL float q4_k_row_dot(const ds_mat *m, int r, const float *x)
{
    const uint8_t *b = row_ptr(m, r);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int c0 = 0; c0 < m->cols; c0 += DS_Q4_K_BLOCK, b += DS_Q4_K_BYTES) {
        __m256 mults[2];
        q4_k_mults(b, mults);
        for (int g = 0; g < 4; g++) {
            __m256 a[2], bm[2];
            q4_k_pair(mults, g, a, bm);
            const float *xg = x + c0 + 64 * g;
            for (int l = 0; l < 32; l += VW) {
                __m256 lo, hi;
                q4_k_w8(b, g, l, a, bm, &lo, &hi);
                acc0 = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xg + l), acc0);
                acc1 = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xg + 32 + l), acc1);
            }
        }
    }
    return hsum(_mm256_add_ps(acc0, acc1));
}

/* Decodes one block at b into out (32 or 256 floats), bitwise equal to the
 * quant.c decoders. */
INL void block_decode(ds_dtype dt, const uint8_t *b, float *out)
{
    if (dt == DS_DT_Q8_0) {
        const __m256 d = _mm256_set1_ps(f16_at(b));
        for (int l = 0; l < DS_Q8_0_BLOCK; l += VW)
            _mm256_storeu_ps(out + l, _mm256_mul_ps(q8x8(b + 2 + l), d));
        return;
    }
    __m256 mults[2];
    q4_k_mults(b, mults);
    for (int g = 0; g < 4; g++) {
        __m256 a[2], bm[2];
        q4_k_pair(mults, g, a, bm);
        for (int l = 0; l < 32; l += VW) {
            __m256 lo, hi;
            q4_k_w8(b, g, l, a, bm, &lo, &hi);
            _mm256_storeu_ps(out + 64 * g + l, lo);
            _mm256_storeu_ps(out + 64 * g + 32 + l, hi);
        }
    }
}

/* out[j] = W[r][c0 + j], j < len, for a block type; c0 and len are
 * multiples of the block (rows are whole blocks, chunks start at 0 or a
 * multiple of KC). */
NOINL void block_convert(const ds_mat *m, int r, int c0, int len, float *out)
{
    const int blk = (int)ds_dtype_block(m->dtype);
    const size_t bb = ds_dtype_block_bytes(m->dtype);
    const uint8_t *b = (const uint8_t *)row_ptr(m, r) + (size_t)(c0 / blk) * bb;
    for (int j = 0; j < len; j += blk, b += bb)
        block_decode(m->dtype, b, out + j);
}

INL const float *scale_row(const ds_mat *m, int r)
{
    return m->scale + (size_t)(r / DS_QBLOCK) * ((m->cols + DS_QBLOCK - 1) / DS_QBLOCK);
}

INL float fp8_row_dot(const ds_mat *m, int r, const float *x)
{
    const uint8_t *w = row_ptr(m, r);
    const float *s = scale_row(m, r);
    __m256 total = _mm256_setzero_ps();
    for (int c0 = 0, b = 0; c0 < m->cols; c0 += DS_QBLOCK, b++) {
        int len = m->cols - c0 < DS_QBLOCK ? m->cols - c0 : DS_QBLOCK;
        __m256 blk = span_dot(DS_DT_F8_E4M3, w + c0, x + c0, len);
        total = _mm256_fmadd_ps(blk, _mm256_set1_ps(s[b] * 256.0f), total);
    }
    return hsum(total);
}

NOINL float row_dot(const ds_mat *m, int r, const float *x)
{
    switch (m->dtype) {
    case DS_DT_F32: return hsum(span_dot(DS_DT_F32, row_ptr(m, r), x, m->cols));
    case DS_DT_BF16: return hsum(span_dot(DS_DT_BF16, row_ptr(m, r), x, m->cols));
    case DS_DT_F16: return hsum(span_dot(DS_DT_F16, row_ptr(m, r), x, m->cols));
    case DS_DT_F8_E4M3: return fp8_row_dot(m, r, x);
    case DS_DT_Q8_0: return q8_0_row_dot(m, r, x);
    case DS_DT_Q4_K: return q4_k_row_dot(m, r, x);
    default: return 0.0f;
    }
}

/* out[j] = mul * w[j], j < n. */
INL void span_convert(ds_dtype dt, const void *w, float mul, float *out, int n)
{
    const __m256 vm = _mm256_set1_ps(mul);
    int c = 0;
    for (; c + VW <= n; c += VW)
        _mm256_storeu_ps(out + c, _mm256_mul_ps(load_w(dt, w, c), vm));
    if (c < n)
        _mm256_maskstore_ps(out + c, tail_mask(n - c), _mm256_mul_ps(load_w_tail(dt, w, c, n - c), vm));
}

/* out[j] = W[r][c0 + j] dequantised, j < len; c0 is a multiple of DS_QBLOCK
 * so FP8 scale blocks start at chunk starts. */
NOINL void convert_span(const ds_mat *m, int r, int c0, int len, float *out)
{
    const void *w = row_ptr(m, r);
    switch (m->dtype) {
    case DS_DT_F32: memcpy(out, (const float *)w + c0, sizeof(float) * (size_t)len); break;
    case DS_DT_BF16: span_convert(DS_DT_BF16, (const uint16_t *)w + c0, 1.0f, out, len); break;
    case DS_DT_F16: span_convert(DS_DT_F16, (const uint16_t *)w + c0, 1.0f, out, len); break;
    case DS_DT_F8_E4M3: {
        const float *s = scale_row(m, r);
        for (int j = 0; j < len; j += DS_QBLOCK) {
            int n = len - j < DS_QBLOCK ? len - j : DS_QBLOCK;
            float mul = s[(c0 + j) / DS_QBLOCK] * 256.0f;
            span_convert(DS_DT_F8_E4M3, (const uint8_t *)w + c0 + j, mul, out + j, n);
        }
        break;
    }
    case DS_DT_Q8_0:
    case DS_DT_Q4_K: block_convert(m, r, c0, len, out); break;
    default: memset(out, 0, sizeof(float) * (size_t)len); break;
    }
}

/* ---- products with a few tokens (batched decode) --------------------------
 * For 2..MAXFUSED tokens each weight vector is dequantised in registers (to
 * the exact values convert_span produces) and used at once for every token
 * of a pass: no staging buffer, and the weights stream from memory as in
 * the gemv.  A block of rows advances together (independent FMA chains)
 * while the next block's rows are prefetched in step.  16 ymm registers
 * bound the tile to 8 accumulators: 4 rows x 2 tokens when n == 2, else
 * 2 rows x passes of 2..4 tokens.  That leaves room for the decoded
 * weight, the FP8 decode mask and the Q4_K multipliers; activations enter
 * the FMAs as memory operands. */
#define MAXNT 4
#define MAXRB 4

/* Up to MAXFUSED tokens take the fused path in passes of <= MAXNT tokens
 * over each row block (later passes find its weights in L1); larger
 * batches (prefill) use the staged gemm_tile below. */
#define MAXFUSED 8

INL void fma_tokens(__m256 acc[][MAXNT], int i, __m256 w, const float *X, int ldx, int c, int nt)
{
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++)
        acc[i][t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(X + (size_t)t * ldx + c), acc[i][t]);
}

/* As fma_tokens for the last left < 8 columns (masked activation loads). */
INL void fma_tokens_tail(__m256 acc[][MAXNT], int i, __m256 w, const float *X, int ldx, int c, int nt,
                         __m256i k)
{
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++)
        acc[i][t] = _mm256_fmadd_ps(w, _mm256_maskload_ps(X + (size_t)t * ldx + c, k), acc[i][t]);
}

/* Prefetches bytes [off, off + n) of each of the rb rows at pf (the next
 * row block): several interleaved row streams are more than the hardware
 * prefetchers follow, so the block after this one is fetched in step with
 * the reads of this one. */
INL void prefetch_rows(const uint8_t *const pf[], int rb, size_t off, size_t n)
{
    for (int i = 0; i < rb; i++)
        for (size_t b = 0; b < n; b += 64)
            __builtin_prefetch(pf[i] + off + b, 0, 3);
}

/* acc[i][t] += W[row[i]][c0 .. end) . X[t][c0 .. end) for a span of F32,
 * BF16, F16 or FP8 weights (dt constant after inlining), each weight
 * vector multiplied by mul[i] first when scaled (FP8). */
INL void span_rows(ds_dtype dt, const uint8_t *const w[], const __m256 mul[], int scaled, int rb,
                   const float *X, int ldx, int nt, int c0, int end, const uint8_t *const pf[],
                   __m256 acc[][MAXNT])
{
    const int es = (int)ds_dtype_size(dt);
    int c = c0;
    for (; c + VW <= end; c += VW) {
        if (!scaled && c % (64 / es) == 0)
            prefetch_rows(pf, rb, (size_t)c * es, 64);
#pragma GCC unroll 4
        for (int i = 0; i < rb; i++) {
            __m256 wv = load_w(dt, w[i], c);
            if (scaled)
                wv = _mm256_mul_ps(wv, mul[i]);
            fma_tokens(acc, i, wv, X, ldx, c, nt);
        }
    }
    if (c < end) {
        const __m256i k = tail_mask(end - c);
        if (!scaled && c % (64 / es) == 0)
            prefetch_rows(pf, rb, (size_t)c * es, 64);
#pragma GCC unroll 4
        for (int i = 0; i < rb; i++) {
            __m256 wv = load_w_tail(dt, w[i], c, end - c);
            if (scaled)
                wv = _mm256_mul_ps(wv, mul[i]);
            fma_tokens_tail(acc, i, wv, X, ldx, c, nt, k);
        }
    }
}

/* acc[i][t] = W[row[i]] . X[t] for i < rb, t < nt (rb, nt constant after
 * inlining); next[] are the rows to prefetch meanwhile. */
INL void rows_dot(const ds_mat *m, const int row[], const int next[], int rb, const float *X, int ldx,
                  int nt, __m256 acc[][MAXNT])
{
    const int cols = m->cols;
    const uint8_t *w[MAXRB], *pf[MAXRB];
#pragma GCC unroll 4
    for (int i = 0; i < rb; i++) {
        w[i] = row_ptr(m, row[i]);
        pf[i] = row_ptr(m, next[i]);
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++)
            acc[i][t] = _mm256_setzero_ps();
    }
    switch (m->dtype) {
    case DS_DT_F8_E4M3:
        for (int c0 = 0; c0 < cols; c0 += DS_QBLOCK) {
            const int end = cols - c0 < DS_QBLOCK ? cols : c0 + DS_QBLOCK;
            __m256 sc[MAXRB];
            prefetch_rows(pf, rb, (size_t)c0, DS_QBLOCK);
#pragma GCC unroll 4
            for (int i = 0; i < rb; i++)
                sc[i] = _mm256_set1_ps(scale_row(m, row[i])[c0 / DS_QBLOCK] * 256.0f);
            span_rows(DS_DT_F8_E4M3, w, sc, 1, rb, X, ldx, nt, c0, end, pf, acc);
        }
        break;
    case DS_DT_BF16: span_rows(DS_DT_BF16, w, NULL, 0, rb, X, ldx, nt, 0, cols, pf, acc); break;
    case DS_DT_F16: span_rows(DS_DT_F16, w, NULL, 0, rb, X, ldx, nt, 0, cols, pf, acc); break;
    case DS_DT_F32: span_rows(DS_DT_F32, w, NULL, 0, rb, X, ldx, nt, 0, cols, pf, acc); break;
    case DS_DT_Q8_0:
        for (int c0 = 0, b = 0; c0 < cols; c0 += DS_Q8_0_BLOCK, b += DS_Q8_0_BYTES) {
            prefetch_rows(pf, rb, (size_t)b, DS_Q8_0_BYTES);
#pragma GCC unroll 4
            for (int i = 0; i < rb; i++) {
                const __m256 d = _mm256_set1_ps(f16_at(w[i] + b));
#pragma GCC unroll 4
                for (int l = 0; l < DS_Q8_0_BLOCK; l += VW)
                    fma_tokens(acc, i, _mm256_mul_ps(q8x8(w[i] + b + 2 + l), d), X, ldx, c0 + l, nt);
            }
        }
        break;
    case DS_DT_Q4_K:
        for (int c0 = 0, b = 0; c0 < cols; c0 += DS_Q4_K_BLOCK, b += DS_Q4_K_BYTES) {
            __m256 mults[4][2];
#pragma GCC unroll 4
            for (int i = 0; i < rb; i++)
                q4_k_mults(w[i] + b, mults[i]);
            for (int g = 0; g < 4; g++) {
                prefetch_rows(pf, rb, (size_t)b + 36 * g, 36);
                for (int i = 0; i < rb; i++) {
                    __m256 a[2], bm[2];
                    q4_k_pair(mults[i], g, a, bm);
                    const int c = c0 + 64 * g;
#pragma GCC unroll 4
                    for (int l = 0; l < 32; l += VW) {
                        __m256 lo, hi;
                        q4_k_w8(w[i] + b, g, l, a, bm, &lo, &hi);
                        fma_tokens(acc, i, lo, X, ldx, c + l, nt);
                        fma_tokens(acc, i, hi, X, ldx, c + 32 + l, nt);
                    }
                }
            }
        }
        break;
    default:
        break;
    }
}

/* Y[t][i] = W[r + i] . X[t] for i < nr (<= rb), t < nt; padding rows repeat
 * row r.  Rows r + rb .. r + 2 rb - 1 (clamped to the matrix) are prefetched. */
INL void rows_dot_store(const ds_mat *m, int r, int nr, int rb, const float *X, int ldx, int nt,
                        float *Y, int ldy)
{
    __m256 acc[MAXRB][MAXNT];
    int row[MAXRB], next[MAXRB];
    for (int i = 0; i < rb; i++) {
        row[i] = i < nr ? r + i : r;
        next[i] = r + rb + i < m->rows ? r + rb + i : m->rows - 1;
    }
    rows_dot(m, row, next, rb, X, ldx, nt, acc);
    for (int t = 0; t < nt; t++)
        for (int i = 0; i < nr; i++)
            Y[(size_t)t * ldy + i] = hsum(acc[i][t]);
}

/* Rows r .. r+nr-1 (nr <= rb) for all n tokens, in passes of at most
 * MAXNT tokens: the later passes find the block's weights in L1. */
NOINL void rows_block(const ds_mat *m, int r, int nr, int rb, const float *X, int ldx, int n, float *Y,
                      int ldy)
{
    for (int t0 = 0; t0 < n;) {
        const int left = n - t0, nt = left <= MAXNT ? left : left == MAXNT + 1 ? 3 : MAXNT;
        const float *x = X + (size_t)t0 * ldx;
        float *y = Y + (size_t)t0 * ldy;
        if (rb == 4)
            rows_dot_store(m, r, nr, 4, x, ldx, 2, y, ldy); /* rb 4 only with n == 2 */
        else if (nt == 2)
            rows_dot_store(m, r, nr, 2, x, ldx, 2, y, ldy);
        else if (nt == 3)
            rows_dot_store(m, r, nr, 2, x, ldx, 3, y, ldy);
        else
            rows_dot_store(m, r, nr, 2, x, ldx, 4, y, ldy);
        t0 += nt;
    }
}

/* The product for 2..MAXFUSED tokens: row blocks split across threads. */
static void small_block(const ds_mat *m, int r0, int nrows, int rb, int b, const float *X, int ldx, int n, float *Y,
                        int ldy)
{
    const int i = b * rb, nr = nrows - i < rb ? nrows - i : rb;
    rows_block(m, r0 + i, nr, rb, X, ldx, n, Y + i, ldy);
}

static void gemm_small(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy)
{
    const int rb = n == 2 ? 4 : 2, nblk = (nrows + rb - 1) / rb;
    if (ds_par_here((long)nrows * m->cols * n)) {
#pragma omp parallel for schedule(static)
        for (int b = 0; b < nblk; b++)
            small_block(m, r0, nrows, rb, b, X, ldx, n, Y, ldy);
    } else
        for (int b = 0; b < nblk; b++)
            small_block(m, r0, nrows, rb, b, X, ldx, n, Y, ldy);
}

static void avx2_mat_row(const ds_mat *m, int r, float *out) { convert_span(m, r, 0, m->cols, out); }

static void avx2_gemv(const ds_mat *m, int r0, int nrows, const float *x, float *y)
{
    DS_GEMV_BY_ROWS(row_dot, m, r0, nrows, x, y);
}

NOINL float avx2_dot(const float *a, const float *b, int n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 4 * VW <= n; i += 4 * VW) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + VW), _mm256_loadu_ps(b + i + VW), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 2 * VW), _mm256_loadu_ps(b + i + 2 * VW), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 3 * VW), _mm256_loadu_ps(b + i + 3 * VW), s3);
    }
    for (; i + VW <= n; i += VW)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    if (i < n) {
        const __m256i k = tail_mask(n - i);
        s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, k), _mm256_maskload_ps(b + i, k), s1);
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

NOINL void avx2_axpy(float a, const float *x, float *y, int n)
{
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 2 * VW <= n; i += 2 * VW) {
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
        _mm256_storeu_ps(y + i + VW,
                         _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i + VW), _mm256_loadu_ps(y + i + VW)));
    }
    for (; i + VW <= n; i += VW)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    if (i < n) {
        const __m256i k = tail_mask(n - i);
        __m256 v = _mm256_fmadd_ps(va, _mm256_maskload_ps(x + i, k), _mm256_maskload_ps(y + i, k));
        _mm256_maskstore_ps(y + i, k, v);
    }
}

/* y[c] += a * W[r][c] for every column, decoding straight into the sum. */
NOINL void row_axpy(const ds_mat *m, int r, float a, float *y)
{
    const void *w = row_ptr(m, r);
    const int cols = m->cols;
    if (m->dtype == DS_DT_F32) {
        avx2_axpy(a, w, y, cols);
        return;
    }
    if (ds_dtype_is_block(m->dtype)) {
        /* Decode a block, then accumulate it: blocks are at most 256 wide. */
        float tmp[DS_Q4_K_BLOCK] __attribute__((aligned(32)));
        const int blk = (int)ds_dtype_block(m->dtype);
        const size_t bb = ds_dtype_block_bytes(m->dtype);
        const uint8_t *b = w;
        for (int c0 = 0; c0 < cols; c0 += blk, b += bb) {
            block_decode(m->dtype, b, tmp);
            avx2_axpy(a, tmp, y + c0, blk);
        }
        return;
    }
    const float *s = m->dtype == DS_DT_F8_E4M3 ? scale_row(m, r) : NULL;
    for (int c0 = 0; c0 < cols; c0 += DS_QBLOCK) {
        const int len = cols - c0 < DS_QBLOCK ? cols - c0 : DS_QBLOCK;
        const __m256 va = _mm256_set1_ps(s ? a * s[c0 / DS_QBLOCK] * 256.0f : a);
        int c = c0;
        for (; c + VW <= c0 + len; c += VW) {
            __m256 wv;
            if (m->dtype == DS_DT_BF16)
                wv = load_w(DS_DT_BF16, w, c);
            else if (m->dtype == DS_DT_F16)
                wv = load_w(DS_DT_F16, w, c);
            else
                wv = load_w(DS_DT_F8_E4M3, w, c);
            _mm256_storeu_ps(y + c, _mm256_fmadd_ps(va, wv, _mm256_loadu_ps(y + c)));
        }
        if (c < c0 + len) {
            const int left = c0 + len - c;
            const __m256i k = tail_mask(left);
            __m256 wv = load_w_tail(m->dtype, w, c, left);
            _mm256_maskstore_ps(y + c, k, _mm256_fmadd_ps(va, wv, _mm256_maskload_ps(y + c, k)));
        }
    }
}

/* Transposed product; serial like the reference because callers issue it
 * per attention head on small slices. */
static void avx2_gemv_t(const ds_mat *m, int r0, int nrows, const float *x, float *y)
{
    memset(y, 0, sizeof(float) * (size_t)m->cols);
    for (int i = 0; i < nrows; i++)
        row_axpy(m, r0 + i, x[i], y);
}

/* out[r][t] = sum_c w[r][c] * x[t][c] over len columns, for RT rows and nt
 * tokens.  Each weight vector is loaded once per column step and reused for
 * every token; nt is a constant after inlining so the accumulators stay in
 * registers. */
INL void tile_dot(const float *const w[RT], const float *x, int ldx, int len, int nt, float out[RT][TT])
{
    __m256 acc[RT][TT];
#pragma GCC unroll 4
    for (int r = 0; r < RT; r++)
#pragma GCC unroll 4
        for (int t = 0; t < TT; t++)
            acc[r][t] = _mm256_setzero_ps();
    int c = 0;
    for (; c + VW <= len; c += VW) {
        __m256 wv[RT];
#pragma GCC unroll 4
        for (int r = 0; r < RT; r++)
            wv[r] = _mm256_loadu_ps(w[r] + c);
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const __m256 xv = _mm256_loadu_ps(x + (size_t)t * ldx + c);
#pragma GCC unroll 4
            for (int r = 0; r < RT; r++)
                acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
    if (c < len) {
        const __m256i k = tail_mask(len - c);
        __m256 wv[RT];
#pragma GCC unroll 4
        for (int r = 0; r < RT; r++)
            wv[r] = _mm256_maskload_ps(w[r] + c, k);
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const __m256 xv = _mm256_maskload_ps(x + (size_t)t * ldx + c, k);
#pragma GCC unroll 4
            for (int r = 0; r < RT; r++)
                acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < RT; r++)
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++)
            out[r][t] = hsum(acc[r][t]);
}

NOINL void tile_dot_n(const float *const w[RT], const float *x, int ldx, int len, int nt, float out[RT][TT])
{
    switch (nt) {
    case 1: tile_dot(w, x, ldx, len, 1, out); break;
    case 2: tile_dot(w, x, ldx, len, 2, out); break;
    case 3: tile_dot(w, x, ldx, len, 3, out); break;
    default: tile_dot(w, x, ldx, len, 4, out); break;
    }
}

/* Rows i0 .. i0+nr-1 (nr <= RT) of the GEMM: each KC-column chunk of the
 * rows is dequantised once into buf and reused by every token. */
static void gemm_tile(const ds_mat *m, int r0, int i0, int nr, const float *X, int ldx, int n,
                      float *Y, int ldy)
{
    float buf[RT][KC] __attribute__((aligned(64)));
    const int cols = m->cols;
    for (int c0 = 0; c0 < cols; c0 += KC) {
        const int len = cols - c0 < KC ? cols - c0 : KC;
        ds_prefetch_rows(m, r0 + i0 + RT, RT, c0, len);
        const float *w[RT];
        for (int r = 0; r < RT; r++) {
            if (r >= nr) {
                w[r] = w[0];      /* padding row: computed, never stored */
            } else if (m->dtype == DS_DT_F32) {
                w[r] = (const float *)m->data + (size_t)(r0 + i0 + r) * cols + c0;
            } else {
                convert_span(m, r0 + i0 + r, c0, len, buf[r]);
                w[r] = buf[r];
            }
        }
        for (int t0 = 0; t0 < n; t0 += TT) {
            const int nt = n - t0 < TT ? n - t0 : TT;
            float out[RT][TT];
            tile_dot_n(w, X + (size_t)t0 * ldx + c0, ldx, len, nt, out);
            for (int t = 0; t < nt; t++) {
                float *yr = Y + (size_t)(t0 + t) * ldy + i0;
                for (int r = 0; r < nr; r++)
                    yr[r] = c0 == 0 ? out[r][t] : yr[r] + out[r][t];
            }
        }
    }
}

static void avx2_gemm(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n,
                        float *Y, int ldy)
{
    if (n == 1) {
        avx2_gemv(m, r0, nrows, X, Y);
        return;
    }
    if (n <= MAXFUSED) {
        gemm_small(m, r0, nrows, X, ldx, n, Y, ldy);
        return;
    }
    const int ntiles = (nrows + RT - 1) / RT;
#pragma omp parallel for schedule(static) if (ds_worth_threads((long)nrows * m->cols * n))
    for (int tile = 0; tile < ntiles; tile++) {
        const int i0 = tile * RT;
        const int nr = nrows - i0 < RT ? nrows - i0 : RT;
        gemm_tile(m, r0, i0, nr, X, ldx, n, Y, ldy);
    }
}

/* ---- lightning indexer: FP8 decode to f64 and the blocked scorer ---- */

/* 16 e4m3 codes to 16 exact doubles (the f16 route of the file comment,
 * times 2^8), NaN codes to 0. */
INL void e4m3x16_to_f64(const uint8_t *q, double *out)
{
    const __m128i b = _mm_loadu_si128((const __m128i *)q);
    const __m128i nan = _mm_cmpeq_epi8(_mm_and_si128(b, _mm_set1_epi8(0x7f)), _mm_set1_epi8(0x7f));
    __m256i h = _mm256_and_si256(_mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7), _mm256_set1_epi16((short)0xbfff));
    h = _mm256_andnot_si256(_mm256_cvtepi8_epi16(nan), h);
    const __m256 lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h)), hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
    const __m256d k = _mm256_set1_pd(256.0);
    _mm256_storeu_pd(out, _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(lo)), k));
    _mm256_storeu_pd(out + 4, _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(lo, 1)), k));
    _mm256_storeu_pd(out + 8, _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(hi)), k));
    _mm256_storeu_pd(out + 12, _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(hi, 1)), k));
}

NOINL void avx2_e4m3_to_f64(const uint8_t *q, size_t n, double *out)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        e4m3x16_to_f64(q + i, out + i);
    if (i < n) {   /* the tail through a zero-padded copy */
        uint8_t t[16] = {0};
        double o[16];
        memcpy(t, q + i, n - i);
        e4m3x16_to_f64(t, o);
        memcpy(out + i, o, sizeof(double) * (n - i));
    }
}

/* r[i] (row i of a 4x4 f64 matrix) becomes column i. */
INL void transpose4x4_pd(__m256d r[4])
{
    const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    const __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

/* Four keys (rows k[0..3]) against 8 heads h0.. of qt: the 8 x 4 exact dots,
 * then the ReLU-weighted sum of heads h0.. in order added to s (one lane
 * per key). */
INL __m128 score4_heads8(const double *qt, int hs, int h0, int hn, int dim, const float *w, const double *const k[4],
                         __m128 s)
{
    __m256d acc[2][4];
#pragma GCC unroll 16
    for (int i = 0; i < 4; i++)
        acc[0][i] = acc[1][i] = _mm256_setzero_pd();
    const double *q = qt + h0;
    for (int d = 0; d < dim; d++, q += hs) {
        const __m256d q0 = _mm256_loadu_pd(q), q1 = _mm256_loadu_pd(q + 4);
#pragma GCC unroll 16
        for (int i = 0; i < 4; i++) {
            const __m256d kb = _mm256_broadcast_sd(k[i] + d);
            acc[0][i] = _mm256_fmadd_pd(q0, kb, acc[0][i]);
            acc[1][i] = _mm256_fmadd_pd(q1, kb, acc[1][i]);
        }
    }
#pragma GCC unroll 16
    for (int half = 0; half < 2; half++) {
        transpose4x4_pd(acc[half]);   /* acc[half][i]: head h0 + 4 half + i over the 4 keys */
#pragma GCC unroll 16
        for (int i = 0; i < 4; i++) {
            if (4 * half + i >= hn)
                break;
            const __m128 dh = _mm256_cvtpd_ps(acc[half][i]);
            const __m128 p = _mm_mul_ps(dh, _mm_set1_ps(w[h0 + 4 * half + i]));
            /* (d > 0 ? p : +0) through a bitwise and: nothing for the
             * compiler to contract, and s + 0 = s (s is never -0) */
            s = _mm_add_ps(s, _mm_and_ps(p, _mm_cmpgt_ps(dh, _mm_setzero_ps())));
        }
    }
    return s;
}

NOINL void avx2_index_scores(const double *qt, int nh, int dim, const float *w, const double *kd, const float *ks,
                             int n, float *score)
{
    const int hs = DS_INDEX_HSTRIDE(nh);
    for (int j = 0; j < n; j += 4) {
        const int kn = n - j < 4 ? n - j : 4;
        const double *k[4];
#pragma GCC unroll 16
        for (int i = 0; i < 4; i++)   /* past the end: repeat the last key, results dropped */
            k[i] = kd + (size_t)(j + (i < kn ? i : kn - 1)) * dim;
        __m128 s = _mm_setzero_ps();
        for (int h0 = 0; h0 < nh; h0 += 8)
            s = score4_heads8(qt, hs, h0, nh - h0 < 8 ? nh - h0 : 8, dim, w, k, s);
        float o[4], kk[4] = {0};
        memcpy(kk, ks + j, sizeof(float) * (size_t)kn);
        _mm_storeu_ps(o, _mm_mul_ps(s, _mm_loadu_ps(kk)));
        memcpy(score + j, o, sizeof(float) * (size_t)kn);
    }
}

static void avx2_index_scores_fp8(const double *qt, int nh, int dim, const float *w, const uint8_t *k8,
                                  const float *ks, int n, float *score)
{
    ds_index_scores_fp8_with(&ds_kernels_avx2, qt, nh, dim, w, k8, ks, n, score);
}

/* ---- Q4_K against int8 activations (ds_gemm_bf16's rounded semantics) ----
 * Each 256-column block of a token's x as int8 levels times 2^e
 * (quant.h's ds_q4_k_act_round), multiplied by the weights' nibbles and
 * summed exactly: in int16 pairs (vpmaddubsw, at most 2 x 15 x 127), then
 * in int32 times the sub-block's 6-bit scale (vpmaddwd); d 2^e and the
 * min terms are applied in f32.  The products of the AVX-512 decode
 * kernel, on CPUs without its VNNI: the f32 path decoded every nibble to a
 * float (about twice the instructions a weight). */

/* x's blocks as levels (column order) in xq, 2^e in xd[b], each 32-column
 * sub-block's level sum times 2^e in xs[8 b + j]; 0 for a block holding Inf
 * or NaN (the rounded copy keeps it as it is). */
T256 int ds_q4k_i8_pack_avx2(const float *x, int cols, int8_t *xq, float *xd, float *xs)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int b = 0; b < cols / DS_Q4_K_BLOCK; b++) {
        const float *v = x + (size_t)b * DS_Q4_K_BLOCK;
        __m256 amax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
        for (int k = 0; k < DS_Q4_K_BLOCK; k += VW) {
            const __m256 a = _mm256_and_ps(_mm256_loadu_ps(v + k), absmask);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
            amax = _mm256_max_ps(amax, a);
        }
        float m8[8];
        _mm256_storeu_ps(m8, amax);
        float am = 0.0f;
        for (int k = 0; k < 8; k++)
            am = m8[k] > am ? m8[k] : am;
        if (_mm256_movemask_ps(bad) || !(am <= FLT_MAX))
            return 0;
        const int e = ds_q4_k_act_exp(am);
        const __m256 inv = _mm256_set1_ps(ds_pow2f(-e));
        const float sc = ds_pow2f(e);
        for (int j = 0; j < 8; j++) {      /* a sub-block: 4 vectors, nearest even as rintf */
            __m256i q[4];
            for (int k = 0; k < 4; k++)
                q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v + 32 * j + VW * k), inv));
            const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            _mm256_storeu_si256((__m256i *)(void *)(xq + (size_t)b * DS_Q4_K_BLOCK + 32 * j),
                                _mm256_permutevar8x32_epi32(p, order));
            const __m256i t = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            const __m128i h = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
            const __m128i h2 = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
            xs[8 * b + j] = (float)_mm_cvtsi128_si32(_mm_add_epi32(h2, _mm_shuffle_epi32(h2, 0xb1))) * sc;
        }
        xd[b] = sc;
    }
    return 1;
}

/* The 6-bit scales of a block, each twice in its dword (the int16 pair
 * vpmaddwd multiplies), and dmin times its mins. */
INL void q4k_i8_scales(const uint8_t *blk, __m256i *sc2, __m256 *mins)
{
    __m256i sc, mn;
    q4_k_scales_mins(blk, &sc, &mn);
    *sc2 = _mm256_or_si256(sc, _mm256_slli_epi32(sc, 16));
    *mins = _mm256_mul_ps(_mm256_cvtepi32_ps(mn), _mm256_set1_ps(f16_at(blk + 2)));
}

enum { I8_MAXT = 16 };

/* Rows [r0, r0 + nrows) of a Q4_K matrix against n <= I8_MAXT tokens
 * packed by ds_q4k_i8_pack_avx2 (token t at xq + t * cols, xd + t * nblk,
 * xs + t * 8 * nblk). */
T256 void ds_q4k_i8_rows_avx2(const ds_mat *m, int r0, int nrows, const int8_t *xq, const float *xd,
                              const float *xs, int n, float *Y, int ldy)
{
    const int cols = m->cols, nblk = cols / DS_Q4_K_BLOCK;
    const size_t rb = ds_mat_row_bytes(m);
    const __m256i low4 = _mm256_set1_epi8(15);
    for (int i = 0; i < nrows; i++) {
        const uint8_t *w = row_ptr(m, r0 + i);
        __m256 tot[I8_MAXT];
        for (int t = 0; t < n; t++)
            tot[t] = _mm256_setzero_ps();
        for (int b = 0; b < nblk; b++) {
            const uint8_t *blk = w + (size_t)b * DS_Q4_K_BYTES;
            __builtin_prefetch(blk + 8 * rb, 0, 3);        /* the row 8 ahead: short rows barely */
            __builtin_prefetch(blk + 8 * rb + 64, 0, 3);   /* ramp the hardware prefetchers up */
            __builtin_prefetch(blk + 8 * rb + 128, 0, 3);
            __m256i sc2;
            __m256 mins;
            q4k_i8_scales(blk, &sc2, &mins);
            const float d = f16_at(blk);
            __m256i lo[4], hi[4];
            for (int g = 0; g < 4; g++) {
                const __m256i q = _mm256_loadu_si256((const __m256i *)(const void *)(blk + DS_Q4_K_OFF_QS + 32 * g));
                lo[g] = _mm256_and_si256(q, low4);
                hi[g] = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
            }
            for (int t = 0; t < n; t++) {
                const int8_t *x = xq + (size_t)t * cols + (size_t)b * DS_Q4_K_BLOCK;
                __m256i acc = _mm256_setzero_si256();
                for (int g = 0; g < 4; g++) {
                    const __m256i slo = _mm256_permutevar8x32_epi32(sc2, _mm256_set1_epi32(2 * g));
                    const __m256i shi = _mm256_permutevar8x32_epi32(sc2, _mm256_set1_epi32(2 * g + 1));
                    const __m256i xl = _mm256_loadu_si256((const __m256i *)(const void *)(x + 64 * g));
                    const __m256i xh = _mm256_loadu_si256((const __m256i *)(const void *)(x + 64 * g + 32));
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(lo[g], xl), slo));
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(hi[g], xh), shi));
                }
                const size_t tb = (size_t)t * nblk + b;
                tot[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(d * xd[tb]), tot[t]);
                tot[t] = _mm256_fnmadd_ps(mins, _mm256_loadu_ps(xs + 8 * tb), tot[t]);
            }
        }
        for (int t = 0; t < n; t++)
            Y[(size_t)t * ldy + i] = hsum(tot[t]);
    }
}

/* ---- the same products for prefill: Q4_K x int8 levels as a GEMM -------
 * A pair of rows is unpacked once into a panel (nibbles as bytes in sub-
 * block order, each sub-block's scale as the int16 pair vpmaddwd takes, d,
 * dmin * m) and then met by every token, I8_TT at a time: 2 rows x I8_TT
 * tokens of block sums in registers (the running totals spill in part;
 * 2 x 4 beat 2 x 2 by 3-14 % all the same).  Per 32 weights
 * and token a vpmaddubsw, a vpmaddwd and an add where the f32 path spent
 * four FMAs on decoded weights. */
enum { I8_TT = 4 };   /* tokens of a tile */
typedef struct q4k_i8_blk {
    uint8_t q[8][32];       /* sub-block j's 32 quants, 0..15 */
    int32_t sc2[8];         /* sub-block j's 6-bit scale in both int16 halves */
    float mins[8];          /* dmin * m_j */
    float d;
} __attribute__((aligned(32))) q4k_i8_blk;

INL void q4k_i8_unpack_row(const uint8_t *w, int nblk, q4k_i8_blk *out)
{
    const __m256i low4 = _mm256_set1_epi8(15);
    for (int b = 0; b < nblk; b++) {
        const uint8_t *blk = w + (size_t)b * DS_Q4_K_BYTES;
        __m256i sc2;
        __m256 mins;
        q4k_i8_scales(blk, &sc2, &mins);
        for (int g = 0; g < 4; g++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(const void *)(blk + DS_Q4_K_OFF_QS + 32 * g));
            _mm256_store_si256((__m256i *)(void *)out[b].q[2 * g], _mm256_and_si256(q, low4));
            _mm256_store_si256((__m256i *)(void *)out[b].q[2 * g + 1],
                               _mm256_and_si256(_mm256_srli_epi16(q, 4), low4));
        }
        _mm256_store_si256((__m256i *)(void *)out[b].sc2, sc2);
        _mm256_store_ps(out[b].mins, mins);
        out[b].d = f16_at(blk);
    }
}

/* Rows p0, p1 (panels of nblk blocks) against tokens t0 .. t0 + NT - 1 (NT
 * a constant after inlining) into out[r][t]. */
INL void q4k_i8_tile(const q4k_i8_blk *p0, const q4k_i8_blk *p1, int nblk, const int8_t *xq, int cols,
                     const float *xd, const float *xs, int t0, int NT, float out[2][I8_TT])
{
    __m256 tot[2][I8_TT];
#pragma GCC unroll 4
    for (int t = 0; t < NT; t++)
        tot[0][t] = tot[1][t] = _mm256_setzero_ps();
    for (int b = 0; b < nblk; b++) {
        __m256i acc[2][I8_TT];
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++)
            acc[0][t] = acc[1][t] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            const __m256i w0 = _mm256_load_si256((const __m256i *)(const void *)p0[b].q[j]);
            const __m256i w1 = _mm256_load_si256((const __m256i *)(const void *)p1[b].q[j]);
            const __m256i s0 = _mm256_set1_epi32(p0[b].sc2[j]), s1 = _mm256_set1_epi32(p1[b].sc2[j]);
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) {
                const __m256i x = _mm256_loadu_si256(
                    (const __m256i *)(const void *)(xq + (size_t)(t0 + t) * cols + (size_t)b * DS_Q4_K_BLOCK + 32 * j));
                acc[0][t] = _mm256_add_epi32(acc[0][t], _mm256_madd_epi16(_mm256_maddubs_epi16(w0, x), s0));
                acc[1][t] = _mm256_add_epi32(acc[1][t], _mm256_madd_epi16(_mm256_maddubs_epi16(w1, x), s1));
            }
        }
        const __m256 m0 = _mm256_load_ps(p0[b].mins), m1 = _mm256_load_ps(p1[b].mins);
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            const size_t tb = (size_t)(t0 + t) * nblk + b;
            const __m256 sums = _mm256_loadu_ps(xs + 8 * tb);
            tot[0][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[0][t]), _mm256_set1_ps(p0[b].d * xd[tb]), tot[0][t]);
            tot[1][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[1][t]), _mm256_set1_ps(p1[b].d * xd[tb]), tot[1][t]);
            tot[0][t] = _mm256_fnmadd_ps(m0, sums, tot[0][t]);
            tot[1][t] = _mm256_fnmadd_ps(m1, sums, tot[1][t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < NT; t++) {
        out[0][t] = hsum(tot[0][t]);
        out[1][t] = hsum(tot[1][t]);
    }
}

NOINL void q4k_i8_tile_n(const q4k_i8_blk *p0, const q4k_i8_blk *p1, int nblk, const int8_t *xq, int cols,
                         const float *xd, const float *xs, int t0, int nt, float out[2][I8_TT])
{
    switch (nt) {
    case 4: q4k_i8_tile(p0, p1, nblk, xq, cols, xd, xs, t0, 4, out); break;
    case 3: q4k_i8_tile(p0, p1, nblk, xq, cols, xd, xs, t0, 3, out); break;
    case 2: q4k_i8_tile(p0, p1, nblk, xq, cols, xd, xs, t0, 2, out); break;
    default: q4k_i8_tile(p0, p1, nblk, xq, cols, xd, xs, t0, 1, out); break;
    }
}

T256 int ds_q4k_i8_gemm_avx2(const ds_mat *m, int r0, int nrows, const int8_t *xq, const float *xd,
                             const float *xs, int n, float *Y, int ldy)
{
    const int cols = m->cols, nblk = cols / DS_Q4_K_BLOCK;
    q4k_i8_blk *pan = aligned_alloc(32, sizeof(q4k_i8_blk) * 2 * (size_t)nblk);
    if (!pan)
        return 0;
    for (int i = 0; i < nrows; i += 2) {
        const int nr = nrows - i < 2 ? nrows - i : 2;
        q4k_i8_unpack_row(row_ptr(m, r0 + i), nblk, pan);
        if (nr == 2)
            q4k_i8_unpack_row(row_ptr(m, r0 + i + 1), nblk, pan + nblk);
        const q4k_i8_blk *p1 = nr == 2 ? pan + nblk : pan;   /* a lone last row: computed twice, stored once */
        for (int t0 = 0; t0 < n; t0 += I8_TT) {
            const int nt = n - t0 < I8_TT ? n - t0 : I8_TT;
            float out[2][I8_TT];
            q4k_i8_tile_n(pan, p1, nblk, xq, cols, xd, xs, t0, nt, out);
            for (int t = 0; t < nt; t++)
                for (int r = 0; r < nr; r++)
                    Y[(size_t)(t0 + t) * ldy + i + r] = out[r][t];
        }
    }
    free(pan);
    return 1;
}

const ds_kernels ds_kernels_avx2 = {
    .name = "avx2",
    .mat_row = avx2_mat_row,
    .gemv = avx2_gemv,
    .gemv_t = avx2_gemv_t,
    .gemm = avx2_gemm,
    .dot = avx2_dot,
    .axpy = avx2_axpy,
    .e4m3_to_f64 = avx2_e4m3_to_f64,
    .index_scores = avx2_index_scores,
    .index_scores_fp8 = avx2_index_scores_fp8,
};

#endif /* x86 */
