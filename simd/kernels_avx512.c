/* kernels_avx512.c — the AVX-512 (F+BW+VL+DQ) kernel table ds_kernels_avx512:
 * row dot products, row dequantisation, GEMV, transposed GEMV, a register-
 * tiled GEMM and dot/axpy over F32, BF16, F16 and FP8 e4m3 (128x128 block
 * scales) weights; the indexer's exact scorer, softmax, and the absorbed
 * decode attention straight over the cached keys (ds_attn_*).
 *
 * Only the functions carry target attributes, so the file builds in a
 * generic x86-64 compile and is entered only after cpu.c has checked that
 * CPU and OS support AVX-512.  OpenMP regions live in plain functions that
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
 * Q8_0 / Q4_K (layouts in quant.h): as in kernels_avx2.c, the quants are
 * widened to int32, converted to f32 and FMA'd with the unquantised f32
 * activations, so results stay within f32 rounding of the scalar reference
 * and mat_row is bitwise equal to it.  A VNNI path (int8 activations,
 * vpdpbusd) is deliberately not used here: it would change the numbers by
 * the activation quantisation error. */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "kernels_isa.h"
#include "worksplit.h"
#include "kernels_sum16.h"
#include "quant.h"

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define INL static inline __attribute__((always_inline)) T512
#define NOINL static __attribute__((noinline)) T512

enum {
    VW = 16,            /* floats per vector */
    KC = 512,           /* GEMM column chunk: 4 rows + 4 tokens of it stay in L1 */
    RT = 4,             /* GEMM rows per register tile */
    TT = 4,             /* GEMM tokens per register tile: 16 accumulators of 32 zmm */
};

INL __mmask16 tail_mask(int left) { return left >= VW ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1); }

INL float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

/* 16 e4m3 codes -> 16 floats, each 2^-8 times its true value (see top). */
INL __m512 e4m3x16(__m128i b)
{
    __m256i h = _mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7);
    h = _mm256_and_si256(h, _mm256_set1_epi16((short)0xbf80));
    return _mm512_cvtph_ps(h);
}

/* 16 weights of dtype dt starting at element c, masked lanes read as 0.
 * dt is a constant at every (inlined) call site, so the switch folds. */
INL __m512 load_w(ds_dtype dt, const void *w, int c, __mmask16 k)
{
    switch (dt) {
    case DS_DT_F32:
        return _mm512_maskz_loadu_ps(k, (const float *)w + c);
    case DS_DT_BF16: {
        __m256i u = _mm256_maskz_loadu_epi16(k, (const uint16_t *)w + c);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(u), 16));
    }
    case DS_DT_F16:
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, (const uint16_t *)w + c));
    case DS_DT_F8_E4M3:
        return e4m3x16(_mm_maskz_loadu_epi8(k, (const uint8_t *)w + c));
    default:
        return _mm512_setzero_ps();
    }
}

/* Lane sums of w[0..n) * x[0..n) (FP8 values still 2^-8 scaled). */
INL __m512 span_dot(ds_dtype dt, const void *w, const float *x, int n)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int c = 0;
    for (; c + 2 * VW <= n; c += 2 * VW) {
        a0 = _mm512_fmadd_ps(load_w(dt, w, c, 0xffff), _mm512_loadu_ps(x + c), a0);
        a1 = _mm512_fmadd_ps(load_w(dt, w, c + VW, 0xffff), _mm512_loadu_ps(x + c + VW), a1);
    }
    for (; c < n; c += VW) {
        __mmask16 k = tail_mask(n - c);
        a0 = _mm512_fmadd_ps(load_w(dt, w, c, k), _mm512_maskz_loadu_ps(k, x + c), a0);
    }
    return _mm512_add_ps(a0, a1);
}

INL const void *row_ptr(const ds_mat *m, int r)
{
    return (const uint8_t *)m->data + (size_t)r * ds_mat_row_bytes(m);
}

/* ---- Q8_0 / Q4_K -------------------------------------------------------- */

/* The f16 at p (exact, like ds_f16_to_f32).  Through the AVX-512F
 * vcvtph2ps so the table needs no F16C target flag of its own. */
INL float f16_at(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    const __m256i v = _mm256_castsi128_si256(_mm_cvtsi32_si128(h));
    return _mm512_cvtss_f32(_mm512_cvtph_ps(v));
}

/* 16 int8 quants -> 16 floats. */
INL __m512 q8x16(const uint8_t *q)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
}

NOINL float q8_0_row_dot(const ds_mat *m, int r, const float *x)
{
    const uint8_t *b = row_ptr(m, r);
    __m512 total = _mm512_setzero_ps();
    for (int c0 = 0; c0 < m->cols; c0 += DS_Q8_0_BLOCK, b += DS_Q8_0_BYTES) {
        __m512 blk = _mm512_mul_ps(q8x16(b + 2), _mm512_loadu_ps(x + c0));
        blk = _mm512_fmadd_ps(q8x16(b + 18), _mm512_loadu_ps(x + c0 + 16), blk);
        total = _mm512_fmadd_ps(blk, _mm512_set1_ps(f16_at(b)), total);
    }
    return hsum(total);
}

/* The multipliers of a Q4_K block's 8 sub-blocks, weight = q * a_j - b_j:
 * a_j = d * sc_j in lane j, b_j = dmin * m_j in lane 8 + j (both exact
 * products, as ds_q4_k_scale_min unpacks them).  Unpacked in vectors: the
 * scalar unpacking per sub-block took longer than the 32 weights it
 * scales in the f32 products (an attention head's W_UV, f32 decode). */
INL __m512 q4_k_mults(const uint8_t *blk)
{
    /* lanes: sc0-3 = s0-3 & 63, sc4-7 = (s8-11 & 15) | (s0-3 >> 6) << 4,
     * m0-3 = s4-7 & 63, m4-7 = (s8-11 >> 4) | (s4-7 >> 6) << 4 */
    const __m128i s = _mm_loadu_si128((const __m128i *)(const void *)(blk + DS_Q4_K_OFF_SCALES));
    const __m128i lo = _mm_shuffle_epi8(s, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
    const __m128i hi = _mm_shuffle_epi8(s, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
    const __m512i sh = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4);
    const __m512i mask = _mm512_setr_epi32(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 15, 15, 15, 15);
    const __m512i v = _mm512_or_si512(_mm512_and_si512(_mm512_srlv_epi32(_mm512_cvtepu8_epi32(lo), sh), mask),
                                      _mm512_slli_epi32(_mm512_srli_epi32(_mm512_cvtepu8_epi32(hi), 6), 4));
    uint32_t ddm;
    memcpy(&ddm, blk, 4);
    const __m512 d2 = _mm512_cvtph_ps(_mm256_castsi128_si256(_mm_cvtsi32_si128((int)ddm)));   /* d, dmin */
    const __m512 dd = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), d2);
    return _mm512_mul_ps(_mm512_cvtepi32_ps(v), dd);
}

/* The multipliers of sub-blocks 2g and 2g+1 from q4_k_mults. */
INL void q4_k_pair(__m512 mults, int g, __m512 a[2], __m512 bm[2])
{
    for (int h = 0; h < 2; h++) {
        a[h] = _mm512_permutexvar_ps(_mm512_set1_epi32(2 * g + h), mults);
        bm[h] = _mm512_permutexvar_ps(_mm512_set1_epi32(8 + 2 * g + h), mults);
    }
}

/* Weights l .. l+15 of sub-blocks 2g (lo) and 2g+1 (hi) of a Q4_K block. */
INL void q4_k_w16(const uint8_t *blk, int g, int l, const __m512 a[2], const __m512 bm[2], __m512 *lo,
                  __m512 *hi)
{
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk + DS_Q4_K_OFF_QS + 32 * g + l)));
    *lo = _mm512_fmsub_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(15))), a[0], bm[0]);
    *hi = _mm512_fmsub_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4)), a[1], bm[1]);
}

NOINL float q4_k_row_dot(const ds_mat *m, int r, const float *x)
{
    const uint8_t *b = row_ptr(m, r);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (int c0 = 0; c0 < m->cols; c0 += DS_Q4_K_BLOCK, b += DS_Q4_K_BYTES) {
        const __m512 mults = q4_k_mults(b);
        for (int g = 0; g < 4; g++) {
            __m512 a[2], bm[2];
            q4_k_pair(mults, g, a, bm);
            const float *xg = x + c0 + 64 * g;
            for (int l = 0; l < 32; l += VW) {
                __m512 lo, hi;
                q4_k_w16(b, g, l, a, bm, &lo, &hi);
                acc0 = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xg + l), acc0);
                acc1 = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xg + 32 + l), acc1);
            }
        }
    }
    return hsum(_mm512_add_ps(acc0, acc1));
}

/* Decodes one block at b into out (32 or 256 floats), bitwise equal to the
 * quant.c decoders. */
INL void block_decode(ds_dtype dt, const uint8_t *b, float *out)
{
    if (dt == DS_DT_Q8_0) {
        const __m512 d = _mm512_set1_ps(f16_at(b));
        _mm512_storeu_ps(out, _mm512_mul_ps(q8x16(b + 2), d));
        _mm512_storeu_ps(out + 16, _mm512_mul_ps(q8x16(b + 18), d));
        return;
    }
    const __m512 mults = q4_k_mults(b);
    for (int g = 0; g < 4; g++) {
        __m512 a[2], bm[2];
        q4_k_pair(mults, g, a, bm);
        for (int l = 0; l < 32; l += VW) {
            __m512 lo, hi;
            q4_k_w16(b, g, l, a, bm, &lo, &hi);
            _mm512_storeu_ps(out + 64 * g + l, lo);
            _mm512_storeu_ps(out + 64 * g + 32 + l, hi);
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
    __m512 total = _mm512_setzero_ps();
    for (int c0 = 0, b = 0; c0 < m->cols; c0 += DS_QBLOCK, b++) {
        int len = m->cols - c0 < DS_QBLOCK ? m->cols - c0 : DS_QBLOCK;
        __m512 blk = span_dot(DS_DT_F8_E4M3, w + c0, x + c0, len);
        total = _mm512_fmadd_ps(blk, _mm512_set1_ps(s[b] * 256.0f), total);
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
    const __m512 vm = _mm512_set1_ps(mul);
    for (int c = 0; c < n; c += VW) {
        __mmask16 k = tail_mask(n - c);
        _mm512_mask_storeu_ps(out + c, k, _mm512_mul_ps(load_w(dt, w, c, k), vm));
    }
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
 * For 2..MAXNT tokens each weight vector is dequantised in registers and
 * used at once for every token: no staging buffer, and the weights stream
 * from memory as in the gemv.  Four rows advance together (independent FMA
 * chains), with the next four rows prefetched in step. */
#define MAXNT 4

INL void fma_tokens(__m512 acc[][MAXNT], int i, __m512 w, const float *X, int ldx, int c, int nt,
                    __mmask16 k)
{
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++)
        acc[i][t] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(k, X + (size_t)t * ldx + c), acc[i][t]);
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

/* acc[i][t] = W[row[i]] . X[t] for i < rb, t < nt (rb, nt constant after
 * inlining); next[] are the rows to prefetch meanwhile. */
INL void rows_dot(const ds_mat *m, const int row[], const int next[], int rb, const float *X, int ldx,
                  int nt, __m512 acc[][MAXNT])
{
    const int cols = m->cols;
    const uint8_t *w[4], *pf[4];
#pragma GCC unroll 4
    for (int i = 0; i < rb; i++) {
        w[i] = row_ptr(m, row[i]);
        pf[i] = row_ptr(m, next[i]);
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++)
            acc[i][t] = _mm512_setzero_ps();
    }
    switch (m->dtype) {
    case DS_DT_F8_E4M3:
        for (int c0 = 0; c0 < cols; c0 += DS_QBLOCK) {
            const int end = cols - c0 < DS_QBLOCK ? cols : c0 + DS_QBLOCK;
            __m512 sc[4];
            prefetch_rows(pf, rb, (size_t)c0, DS_QBLOCK);
#pragma GCC unroll 4
            for (int i = 0; i < rb; i++)
                sc[i] = _mm512_set1_ps(scale_row(m, row[i])[c0 / DS_QBLOCK] * 256.0f);
            for (int c = c0; c < end; c += VW) {
                const __mmask16 k = tail_mask(end - c);
#pragma GCC unroll 4
                for (int i = 0; i < rb; i++)
                    fma_tokens(acc, i, _mm512_mul_ps(load_w(DS_DT_F8_E4M3, w[i], c, k), sc[i]), X, ldx, c, nt, k);
            }
        }
        break;
    case DS_DT_BF16:
    case DS_DT_F16:
    case DS_DT_F32:
        for (int c = 0; c < cols; c += VW) {
            const __mmask16 k = tail_mask(cols - c);
            const size_t es = m->dtype == DS_DT_F32 ? 4 : 2;
            if (c % (64 / (int)es) == 0)
                prefetch_rows(pf, rb, (size_t)c * es, 64);
#pragma GCC unroll 4
            for (int i = 0; i < rb; i++) {
                __m512 wv = m->dtype == DS_DT_BF16  ? load_w(DS_DT_BF16, w[i], c, k)
                            : m->dtype == DS_DT_F16 ? load_w(DS_DT_F16, w[i], c, k)
                                                    : load_w(DS_DT_F32, w[i], c, k);
                fma_tokens(acc, i, wv, X, ldx, c, nt, k);
            }
        }
        break;
    case DS_DT_Q8_0:
        for (int c0 = 0, b = 0; c0 < cols; c0 += DS_Q8_0_BLOCK, b += DS_Q8_0_BYTES) {
            prefetch_rows(pf, rb, (size_t)b, DS_Q8_0_BYTES);
#pragma GCC unroll 4
            for (int i = 0; i < rb; i++) {
                const __m512 d = _mm512_set1_ps(f16_at(w[i] + b));
                fma_tokens(acc, i, _mm512_mul_ps(q8x16(w[i] + b + 2), d), X, ldx, c0, nt, 0xffff);
                fma_tokens(acc, i, _mm512_mul_ps(q8x16(w[i] + b + 18), d), X, ldx, c0 + 16, nt, 0xffff);
            }
        }
        break;
    case DS_DT_Q4_K:
        for (int c0 = 0, b = 0; c0 < cols; c0 += DS_Q4_K_BLOCK, b += DS_Q4_K_BYTES) {
            __m512 mults[4];
#pragma GCC unroll 4
            for (int i = 0; i < rb; i++)
                mults[i] = q4_k_mults(w[i] + b);
            for (int g = 0; g < 4; g++) {
                prefetch_rows(pf, rb, (size_t)b + 36 * g, 36);
                for (int i = 0; i < rb; i++) {
                    __m512 a[2], bm[2], lo0, hi0, lo1, hi1;
                    q4_k_pair(mults[i], g, a, bm);
                    q4_k_w16(w[i] + b, g, 0, a, bm, &lo0, &hi0);
                    q4_k_w16(w[i] + b, g, VW, a, bm, &lo1, &hi1);
                    const int c = c0 + 64 * g;
                    fma_tokens(acc, i, lo0, X, ldx, c, nt, 0xffff);
                    fma_tokens(acc, i, lo1, X, ldx, c + 16, nt, 0xffff);
                    fma_tokens(acc, i, hi0, X, ldx, c + 32, nt, 0xffff);
                    fma_tokens(acc, i, hi1, X, ldx, c + 48, nt, 0xffff);
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
    __m512 acc[4][MAXNT];
    int row[4], next[4];
    for (int i = 0; i < rb; i++) {
        row[i] = i < nr ? r + i : r;
        next[i] = r + rb + i < m->rows ? r + rb + i : m->rows - 1;
    }
    rows_dot(m, row, next, rb, X, ldx, nt, acc);
    for (int t = 0; t < nt; t++)
        for (int i = 0; i < nr; i++)
            Y[(size_t)t * ldy + i] = hsum(acc[i][t]);
}

NOINL void rows_block(const ds_mat *m, int r, int nr, const float *X, int ldx, int nt, float *Y, int ldy)
{
    switch (nt) {
    case 1: rows_dot_store(m, r, nr, 4, X, ldx, 1, Y, ldy); break;
    case 2: rows_dot_store(m, r, nr, 4, X, ldx, 2, Y, ldy); break;
    case 3: rows_dot_store(m, r, nr, 4, X, ldx, 3, Y, ldy); break;
    default: rows_dot_store(m, r, nr, 4, X, ldx, 4, Y, ldy); break;
    }
}

/* Row blocks [b0, b1) of gemm_small, in passes of MAXNT tokens. */
static void gemm_small_blocks(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy,
                              int b0, int b1)
{
    for (int b = b0; b < b1; b++)
        for (int t0 = 0, i = 4 * b, nr = nrows - i < 4 ? nrows - i : 4; t0 < n; t0 += MAXNT)
            rows_block(m, r0 + i, nr, X + (size_t)t0 * ldx, ldx, n - t0 < MAXNT ? n - t0 : MAXNT,
                       Y + (size_t)t0 * ldy + i, ldy);
}

/* The product for n <= MAXNT tokens (larger n is faster through the tiled
 * GEMM on AVX-512): row blocks split across threads (worksplit.h). */
static void gemm_small(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy)
{
    const int nblk = (nrows + 3) / 4;   /* blocks of 4 rows */
    const int nth = ds_worth_threads((long)nrows * m->cols * n) && !omp_in_parallel() ? omp_get_max_threads() : 1;
    ds_split *split = nth > 1 ? ds_split_begin(nth, nblk) : NULL;
    if (!split) {
        gemm_small_blocks(m, r0, nrows, X, ldx, n, Y, ldy, 0, nblk);
        return;
    }
#pragma omp parallel num_threads(nth)
    for (int b0, k; (k = ds_split_next(split, omp_get_thread_num(), 8, &b0)) > 0;)
        gemm_small_blocks(m, r0, nrows, X, ldx, n, Y, ldy, b0, b0 + k);
}

static void avx512_mat_row(const ds_mat *m, int r, float *out) { convert_span(m, r, 0, m->cols, out); }

/* Short rows (an attention head's slice of kv_b) are prefetched GEMV_AHEAD
 * rows ahead: the hardware prefetchers barely ramp up on them.  The first
 * GEMV_AHEAD rows of a range are fetched before it starts, or a head's
 * slice would begin with that many misses one after another. */
enum { GEMV_AHEAD = 8, GEMV_PF_MAX_BYTES = 2048 };

/* Every cache line of [p, p + bytes) (rows of 288 bytes, Q4_K at 512
 * columns, straddle one more line than bytes / 64). */
INL void prefetch_span(const void *p, size_t bytes)
{
    const uintptr_t a = (uintptr_t)p & ~(uintptr_t)63, e = (uintptr_t)p + bytes;
    for (uintptr_t b = a; b < e; b += 64)
        __builtin_prefetch((const void *)b, 0, 3);
}

/* Rows [i, i + n) of a range of nrows at w (rb bytes each), clipped. */
INL void prefetch_short_rows(const uint8_t *w, size_t rb, int i, int n, int nrows)
{
    if (rb <= GEMV_PF_MAX_BYTES && i < nrows)
        prefetch_span(w, (size_t)(i + n < nrows ? n : nrows - i) * rb);
}

NOINL void gemv_rows(const ds_mat *m, int r0, int i0, int i1, int nrows, const float *x, float *y)
{
    const size_t rb = ds_mat_row_bytes(m);
    if (i0 < i1)
        prefetch_short_rows(row_ptr(m, r0 + i0), rb, i0, GEMV_AHEAD, i1);
    for (int i = i0; i < i1; i++) {
        if (i + GEMV_AHEAD < i1)
            prefetch_short_rows(row_ptr(m, r0 + i + GEMV_AHEAD), rb, i + GEMV_AHEAD, 1, nrows);
        y[i] = row_dot(m, r0 + i, x);
    }
}

NOINL void avx512_gemv(const ds_mat *m, int r0, int nrows, const float *x, float *y)
{
    const int nth = ds_worth_threads((long)nrows * m->cols) && !omp_in_parallel() ? omp_get_max_threads() : 1;
    ds_split *split = nth > 1 ? ds_split_begin(nth, nrows) : NULL;
    if (!split) {
        gemv_rows(m, r0, 0, nrows, nrows, x, y);
        return;
    }
#pragma omp parallel num_threads(nth)
    for (int i0, k; (k = ds_split_next(split, omp_get_thread_num(), 32, &i0)) > 0;)
        gemv_rows(m, r0, i0, i0 + k, nrows, x, y);
}

NOINL float avx512_dot(const float *a, const float *b, int n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 4 * VW <= n; i += 4 * VW) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + VW), _mm512_loadu_ps(b + i + VW), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 2 * VW), _mm512_loadu_ps(b + i + 2 * VW), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 3 * VW), _mm512_loadu_ps(b + i + 3 * VW), s3);
    }
    for (; i < n; i += VW) {
        __mmask16 k = tail_mask(n - i);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i), s0);
    }
    return hsum(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

NOINL void avx512_axpy(float a, const float *x, float *y, int n)
{
    const __m512 va = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 2 * VW <= n; i += 2 * VW) {
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
        _mm512_storeu_ps(y + i + VW,
                         _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i + VW), _mm512_loadu_ps(y + i + VW)));
    }
    for (; i < n; i += VW) {
        __mmask16 k = tail_mask(n - i);
        __m512 v = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(k, x + i), _mm512_maskz_loadu_ps(k, y + i));
        _mm512_mask_storeu_ps(y + i, k, v);
    }
}

/* y[c] += a * W[r][c] for every column, decoding straight into the sum. */
NOINL void row_axpy(const ds_mat *m, int r, float a, float *y)
{
    const void *w = row_ptr(m, r);
    const int cols = m->cols;
    if (m->dtype == DS_DT_F32) {
        avx512_axpy(a, w, y, cols);
        return;
    }
    if (ds_dtype_is_block(m->dtype)) {
        /* Decode a block, then accumulate it: blocks are at most 256 wide. */
        float tmp[DS_Q4_K_BLOCK] __attribute__((aligned(64)));
        const int blk = (int)ds_dtype_block(m->dtype);
        const size_t bb = ds_dtype_block_bytes(m->dtype);
        const uint8_t *b = w;
        for (int c0 = 0; c0 < cols; c0 += blk, b += bb) {
            block_decode(m->dtype, b, tmp);
            avx512_axpy(a, tmp, y + c0, blk);
        }
        return;
    }
    const float *s = m->dtype == DS_DT_F8_E4M3 ? scale_row(m, r) : NULL;
    for (int c0 = 0; c0 < cols; c0 += DS_QBLOCK) {
        const int len = cols - c0 < DS_QBLOCK ? cols - c0 : DS_QBLOCK;
        const __m512 va = _mm512_set1_ps(s ? a * s[c0 / DS_QBLOCK] * 256.0f : a);
        for (int c = c0; c < c0 + len; c += VW) {
            __mmask16 k = tail_mask(c0 + len - c);
            __m512 wv;
            if (m->dtype == DS_DT_BF16)
                wv = load_w(DS_DT_BF16, w, c, k);
            else if (m->dtype == DS_DT_F16)
                wv = load_w(DS_DT_F16, w, c, k);
            else
                wv = load_w(DS_DT_F8_E4M3, w, c, k);
            _mm512_mask_storeu_ps(y + c, k, _mm512_fmadd_ps(va, wv, _mm512_maskz_loadu_ps(k, y + c)));
        }
    }
}

/* On the first column pass, short rows (at most GEMV_PF_MAX_BYTES) are
 * fetched whole GEMV_AHEAD rows ahead of row i at w. */
INL void prefetch_row_ahead(const uint8_t *w, size_t rb, int i, int nrows)
{
    if (i == 0)
        prefetch_short_rows(w, rb, 0, GEMV_AHEAD, nrows);
    prefetch_short_rows(w + GEMV_AHEAD * rb, rb, i + GEMV_AHEAD, 1, nrows);
}

/* acc[v] += x_i * W[i][c0 + 16 v ..] for a Q8_0 / Q4_K row at w: each
 * weight decoded as block_decode does (exact products q * d; Q4_K's
 * q * a - b), so the column sums are row_axpy's to the bit.  Whole
 * blocks only (left columns from c0). */
INL void gemv_t_row_q(ds_dtype dt, const uint8_t *w, int c0, int left, float xi, __m512 acc[16])
{
    const __m512 vx = _mm512_set1_ps(xi);
    if (dt == DS_DT_Q8_0) {
        const uint8_t *b = w + (size_t)(c0 / DS_Q8_0_BLOCK) * DS_Q8_0_BYTES;
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++, b += DS_Q8_0_BYTES) {
            if (2 * VW * k >= left)
                break;
            const __m512 d = _mm512_set1_ps(f16_at(b));
            acc[2 * k] = _mm512_fmadd_ps(vx, _mm512_mul_ps(q8x16(b + 2), d), acc[2 * k]);
            acc[2 * k + 1] = _mm512_fmadd_ps(vx, _mm512_mul_ps(q8x16(b + 18), d), acc[2 * k + 1]);
        }
        return;
    }
    const uint8_t *b = w + (size_t)(c0 / DS_Q4_K_BLOCK) * DS_Q4_K_BYTES;
    const __m512 mults = q4_k_mults(b);
#pragma GCC unroll 4
    for (int g = 0; g < 4; g++) {
        __m512 a[2], bm[2];
        q4_k_pair(mults, g, a, bm);
#pragma GCC unroll 2
        for (int l = 0; l < 2; l++) {
            __m512 lo, hi;
            q4_k_w16(b, g, VW * l, a, bm, &lo, &hi);
            acc[4 * g + l] = _mm512_fmadd_ps(vx, lo, acc[4 * g + l]);
            acc[4 * g + 2 + l] = _mm512_fmadd_ps(vx, hi, acc[4 * g + 2 + l]);
        }
    }
}

/* Columns [c0, c0 + 256) of the transposed product for FP8 / BF16 / F16 /
 * Q8_0 / Q4_K weights, the 16 column vectors held in registers across the
 * rows.  Each column is summed in row order from zero with the
 * multipliers of row_axpy, so the result is row_axpy's to the bit. */
INL void gemv_t_cols(ds_dtype dt, const ds_mat *m, int r0, int nrows, const float *x, int c0, float *y)
{
    enum { NV = 16 };
    __m512 acc[NV];
    const int left = m->cols - c0;
#pragma GCC unroll 16
    for (int v = 0; v < NV; v++)
        acc[v] = _mm512_setzero_ps();
    const size_t rb = ds_mat_row_bytes(m);
    for (int i = 0; i < nrows; i++) {
        const uint8_t *w = row_ptr(m, r0 + i);
        const float *s = dt == DS_DT_F8_E4M3 ? scale_row(m, r0 + i) : NULL;
        if (c0 == 0)
            prefetch_row_ahead(w, rb, i, nrows);
        if (dt == DS_DT_Q8_0 || dt == DS_DT_Q4_K) {
            gemv_t_row_q(dt, w, c0, left, x[i], acc);
            continue;
        }
        __m512 va[2];
#pragma GCC unroll 2
        for (int b = 0; b < 2; b++)
            va[b] = _mm512_set1_ps(s ? x[i] * s[c0 / DS_QBLOCK + (b && left > DS_QBLOCK)] * 256.0f : x[i]);
#pragma GCC unroll 16
        for (int v = 0; v < NV; v++) {
            const int c = c0 + VW * v;
            if (VW * v >= left)
                break;
            acc[v] = _mm512_fmadd_ps(va[v >= NV / 2], load_w(dt, w, c, tail_mask(left - VW * v)), acc[v]);
        }
    }
#pragma GCC unroll 16
    for (int v = 0; v < NV; v++)
        if (VW * v < left)
            _mm512_mask_storeu_ps(y + c0 + VW * v, tail_mask(left - VW * v), acc[v]);
}

/* Transposed product; serial like the reference because callers issue it
 * per attention head on small slices. */
NOINL void avx512_gemv_t(const ds_mat *m, int r0, int nrows, const float *x, float *y)
{
    const ds_dtype dt = m->dtype;
    if (dt == DS_DT_F8_E4M3 || dt == DS_DT_BF16 || dt == DS_DT_F16 || dt == DS_DT_Q8_0 || dt == DS_DT_Q4_K) {
        for (int c0 = 0; c0 < m->cols; c0 += 16 * VW)
            switch (dt) {
            case DS_DT_F8_E4M3: gemv_t_cols(DS_DT_F8_E4M3, m, r0, nrows, x, c0, y); break;
            case DS_DT_BF16: gemv_t_cols(DS_DT_BF16, m, r0, nrows, x, c0, y); break;
            case DS_DT_Q8_0: gemv_t_cols(DS_DT_Q8_0, m, r0, nrows, x, c0, y); break;
            case DS_DT_Q4_K: gemv_t_cols(DS_DT_Q4_K, m, r0, nrows, x, c0, y); break;
            default: gemv_t_cols(DS_DT_F16, m, r0, nrows, x, c0, y); break;
            }
        return;
    }
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
    __m512 acc[RT][TT];
#pragma GCC unroll 4
    for (int r = 0; r < RT; r++)
#pragma GCC unroll 4
        for (int t = 0; t < TT; t++)
            acc[r][t] = _mm512_setzero_ps();
    for (int c = 0; c < len; c += VW) {
        const __mmask16 k = tail_mask(len - c);
        __m512 wv[RT];
#pragma GCC unroll 4
        for (int r = 0; r < RT; r++)
            wv[r] = _mm512_maskz_loadu_ps(k, w[r] + c);
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const __m512 xv = _mm512_maskz_loadu_ps(k, x + (size_t)t * ldx + c);
#pragma GCC unroll 4
            for (int r = 0; r < RT; r++)
                acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
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

static void avx512_gemm(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n,
                        float *Y, int ldy)
{
    if (n == 1) {
        avx512_gemv(m, r0, nrows, X, Y);
        return;
    }
    if (n <= MAXNT) {
        gemm_small(m, r0, nrows, X, ldx, n, Y, ldy);
        return;
    }
    const int ntiles = (nrows + RT - 1) / RT;
    if (!ds_par_here((long)nrows * m->cols * n)) {   /* e.g. per head in MLA's region */
        for (int tile = 0; tile < ntiles; tile++)
            gemm_tile(m, r0, tile * RT, nrows - tile * RT < RT ? nrows - tile * RT : RT, X, ldx, n, Y, ldy);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int tile = 0; tile < ntiles; tile++) {
        const int i0 = tile * RT;
        const int nr = nrows - i0 < RT ? nrows - i0 : RT;
        gemm_tile(m, r0, i0, nr, X, ldx, n, Y, ldy);
    }
}

/* ---- lightning indexer: FP8 decode to f64 and the blocked scorer ---- */

/* 32 e4m3 codes to 32 exact doubles (the f16 route of the file comment,
 * times 2^8), NaN codes to 0; lanes past the mask stay unwritten. */
INL void e4m3x32_to_f64(const uint8_t *q, __mmask32 m, double *out)
{
    const __m256i b = _mm256_maskz_loadu_epi8(m, q);
    const __mmask32 nan = _mm256_cmpeq_epi8_mask(_mm256_and_si256(b, _mm256_set1_epi8(0x7f)), _mm256_set1_epi8(0x7f));
    __m512i h = _mm512_slli_epi16(_mm512_cvtepi8_epi16(b), 7);
    h = _mm512_and_si512(h, _mm512_set1_epi16((short)0xbfff));
    h = _mm512_maskz_mov_epi16(~nan, h);
    const __m512 lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
    const __m512 hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
    const __m512d k = _mm512_set1_pd(256.0);
    const __m512d v[4] = {_mm512_mul_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(lo)), k),
                          _mm512_mul_pd(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(lo), 1))), k),
                          _mm512_mul_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(hi)), k),
                          _mm512_mul_pd(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(hi), 1))), k)};
#pragma GCC unroll 16
    for (int i = 0; i < 4; i++)
        _mm512_mask_storeu_pd(out + 8 * i, (__mmask8)(m >> (8 * i)), v[i]);
}

NOINL void avx512_e4m3_to_f64(const uint8_t *q, size_t n, double *out)
{
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        e4m3x32_to_f64(q + i, 0xffffffffu, out + i);
    if (i < n)
        e4m3x32_to_f64(q + i, (__mmask32)((1ull << (n - i)) - 1), out + i);
}

/* r[i] (row i of an 8x8 f64 matrix) becomes column i. */
INL void transpose8x8_pd(__m512d r[8])
{
    __m512d a[8], b[8];
#pragma GCC unroll 16
    for (int i = 0; i < 8; i += 2) {
        a[i] = _mm512_unpacklo_pd(r[i], r[i + 1]);       /* r_i0 r_j0 r_i2 r_j2 ... */
        a[i + 1] = _mm512_unpackhi_pd(r[i], r[i + 1]);   /* r_i1 r_j1 r_i3 r_j3 ... */
    }
    const __m512i even = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), odd = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
#pragma GCC unroll 16
    for (int g = 0; g < 8; g += 4) {                      /* rows g..g+3 */
        b[g + 0] = _mm512_permutex2var_pd(a[g], even, a[g + 2]);      /* columns 0, 4 */
        b[g + 1] = _mm512_permutex2var_pd(a[g + 1], even, a[g + 3]);  /* columns 1, 5 */
        b[g + 2] = _mm512_permutex2var_pd(a[g], odd, a[g + 2]);       /* columns 2, 6 */
        b[g + 3] = _mm512_permutex2var_pd(a[g + 1], odd, a[g + 3]);   /* columns 3, 7 */
    }
#pragma GCC unroll 16
    for (int c = 0; c < 4; c++) {
        r[c] = _mm512_shuffle_f64x2(b[c], b[c + 4], 0x44);
        r[c + 4] = _mm512_shuffle_f64x2(b[c], b[c + 4], 0xee);
    }
}

/* 8 e4m3 codes to 8 exact doubles, NaN codes to 0 (as e4m3x32_to_f64). */
INL void e4m3x8_to_f64(const uint8_t *q, double *out)
{
    const __m128i b = _mm_loadl_epi64((const __m128i *)q);
    const __mmask16 nan = _mm_cmpeq_epi8_mask(_mm_and_si128(b, _mm_set1_epi8(0x7f)), _mm_set1_epi8(0x7f));
    __m128i h = _mm_and_si128(_mm_slli_epi16(_mm_cvtepi8_epi16(b), 7), _mm_set1_epi16((short)0xbfff));
    h = _mm_maskz_mov_epi16((__mmask8)~nan, h);
    const __m512 f = _mm512_cvtph_ps(_mm256_zextsi128_si256(h));
    _mm512_storeu_pd(out, _mm512_mul_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(f)), _mm512_set1_pd(256.0)));
}

/* Eight keys (rows k[0..7]) against 16 heads h0.. of qt: the 16 x 8 exact
 * dots, then the ReLU-weighted sum of heads h0.. in order added to s (one
 * lane per key). */
INL __m256 score8_heads16_dec(const double *qt, int hs, int h0, int hn, int dim, const float *w,
                              const double *const k[8], __m256 s, const int dec, const uint8_t *nk, double *nbuf)
{
    __m512d acc[2][8];
#pragma GCC unroll 16
    for (int i = 0; i < 8; i++)
        acc[0][i] = acc[1][i] = _mm512_setzero_pd();
    const double *q = qt + h0;
    for (int d = 0; d < dim; d++, q += hs) {
        const __m512d q0 = _mm512_loadu_pd(q), q1 = _mm512_loadu_pd(q + 8);
        if (dec)   /* 8 codes of the next tile, decoded while the FMAs run */
            e4m3x8_to_f64(nk + 8 * d, nbuf + 8 * d);
#pragma GCC unroll 16
        for (int i = 0; i < 8; i++) {
            const __m512d kb = _mm512_set1_pd(k[i][d]);
            acc[0][i] = _mm512_fmadd_pd(q0, kb, acc[0][i]);
            acc[1][i] = _mm512_fmadd_pd(q1, kb, acc[1][i]);
        }
    }
#pragma GCC unroll 16
    for (int half = 0; half < 2; half++) {
        transpose8x8_pd(acc[half]);   /* acc[half][i]: head h0 + 8 half + i over the 8 keys */
#pragma GCC unroll 16
        for (int i = 0; i < 8; i++) {
            if (8 * half + i >= hn)
                break;
            const __m256 dh = _mm512_cvtpd_ps(acc[half][i]);
            const __m256 p = _mm256_mul_ps(dh, _mm256_set1_ps(w[h0 + 8 * half + i]));
            /* a masked add: no FMA contraction possible, lanes with d <= 0 unchanged */
            s = _mm256_mask_add_ps(s, _mm256_cmp_ps_mask(dh, _mm256_setzero_ps(), _CMP_GT_OQ), s, p);
        }
    }
    return s;
}

INL __m256 score8_heads16(const double *qt, int hs, int h0, int hn, int dim, const float *w, const double *const k[8],
                          __m256 s)
{
    return score8_heads16_dec(qt, hs, h0, hn, dim, w, k, s, 0, NULL, NULL);
}

/* The same from the FP8 keys (dim <= DS_INDEX_MAXDIM): each tile of 8 keys
 * is decoded into one half of a double buffer during the previous tile's
 * FMA loop, where the decode runs beside the FMAs instead of before them. */
NOINL void avx512_index_scores_fp8(const double *qt, int nh, int dim, const float *w, const uint8_t *k8,
                                   const float *ks, int n, float *score)
{
    double buf[2][8 * DS_INDEX_MAXDIM];
    const int hs = DS_INDEX_HSTRIDE(nh);
    int cur = 0;
    if (n > 0)
        avx512_e4m3_to_f64(k8, (size_t)(n < 8 ? n : 8) * dim, buf[0]);
    for (int j = 0; j < n; j += 8) {
        const int kn = n - j < 8 ? n - j : 8;
        const int next_full = j + 16 <= n;
        const double *k[8];
#pragma GCC unroll 16
        for (int i = 0; i < 8; i++)   /* past the end: repeat the last key, results dropped */
            k[i] = buf[cur] + (size_t)(i < kn ? i : kn - 1) * dim;
        __m256 s = _mm256_setzero_ps();
        for (int h0 = 0; h0 < nh; h0 += 16) {
            const int hn = nh - h0 < 16 ? nh - h0 : 16;
            if (h0 == 0 && next_full)
                s = score8_heads16_dec(qt, hs, h0, hn, dim, w, k, s, 1, k8 + (size_t)(j + 8) * dim, buf[cur ^ 1]);
            else
                s = score8_heads16_dec(qt, hs, h0, hn, dim, w, k, s, 0, NULL, NULL);
        }
        if (!next_full && j + 8 < n)   /* a last, partial tile */
            avx512_e4m3_to_f64(k8 + (size_t)(j + 8) * dim, (size_t)(n - j - 8) * dim, buf[cur ^ 1]);
        const __mmask8 m = (__mmask8)((1u << kn) - 1);
        s = _mm256_mul_ps(s, _mm256_maskz_loadu_ps(m, ks + j));
        _mm256_mask_storeu_ps(score + j, m, s);
        cur ^= 1;
    }
}

NOINL void avx512_index_scores(const double *qt, int nh, int dim, const float *w, const double *kd,
                               const float *ks, int n, float *score)
{
    const int hs = DS_INDEX_HSTRIDE(nh);
    for (int j = 0; j < n; j += 8) {
        const int kn = n - j < 8 ? n - j : 8;
        const double *k[8];
#pragma GCC unroll 16
        for (int i = 0; i < 8; i++)   /* past the end: repeat the last key, results dropped */
            k[i] = kd + (size_t)(j + (i < kn ? i : kn - 1)) * dim;
        const __mmask8 m = (__mmask8)((1u << kn) - 1);
        __m256 s = _mm256_setzero_ps();
        for (int h0 = 0; h0 < nh; h0 += 16)
            s = score8_heads16(qt, hs, h0, nh - h0 < 16 ? nh - h0 : 16, dim, w, k, s);
        s = _mm256_mul_ps(s, _mm256_maskz_loadu_ps(m, ks + j));
        _mm256_mask_storeu_ps(score + j, m, s);
    }
}

/* ---- the approximate (f32) indexer score of the decode step ------------ */

/* Key row k (dim codes) as floats 2^-8 times their values, NaN codes as 0,
 * into out; returns sum |value| (also 2^-8 scaled). */
INL float key_row_f32(const uint8_t *k, int dim, float *out)
{
    __m512 l1 = _mm512_setzero_ps();
    for (int d = 0; d < dim; d += VW) {
        const __mmask16 m = tail_mask(dim - d);
        const __m128i b = _mm_maskz_loadu_epi8(m, k + d);
        const __mmask16 nan = _mm_cmpeq_epi8_mask(_mm_and_si128(b, _mm_set1_epi8(0x7f)), _mm_set1_epi8(0x7f));
        const __m512 v = _mm512_maskz_mov_ps((__mmask16)(m & ~nan), e4m3x16(b));
        _mm512_store_ps(out + d, v);
        l1 = _mm512_add_ps(l1, _mm512_abs_ps(v));
    }
    return _mm512_reduce_add_ps(l1);
}

/* 8 keys at a time (rows past n are zeros), 16 heads per vector: one FMA
 * per key, dimension and head group against a broadcast key value. */
NOINL void avx512_index_scores_approx(const float *qt, int nh, int dim, const float *w, const uint8_t *k8,
                                      const float *ks, int n, float *score, float *bound)
{
    const int hs = DS_INDEX_HSTRIDE(nh);
    const float c = ds_index_bound_c(qt, nh, dim, w);
    const int dp = (dim + VW - 1) / VW * VW;
    float kf[8 * DS_INDEX_MAXDIM] __attribute__((aligned(64)));
    for (int j = 0; j < n; j += 8) {
        const int kn = n - j < 8 ? n - j : 8;
        float l1[8] = {0}, s[8] = {0}, sabs[8] = {0};
        for (int i = 0; i < 8; i++) {
            if (i < kn)
                l1[i] = key_row_f32(k8 + (size_t)(j + i) * dim, dim, kf + (size_t)i * dp);
            else
                memset(kf + (size_t)i * dp, 0, sizeof(float) * (size_t)dp);
        }
        for (int h0 = 0; h0 < nh; h0 += 16) {
            __m512 acc[8];
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++)
                acc[i] = _mm512_setzero_ps();
            for (int d = 0; d < dim; d++) {
                const __m512 q = _mm512_loadu_ps(qt + (size_t)d * hs + h0);
#pragma GCC unroll 8
                for (int i = 0; i < 8; i++)
                    acc[i] = _mm512_fmadd_ps(q, _mm512_set1_ps(kf[(size_t)i * dp + d]), acc[i]);
            }
            const __m512 wv = _mm512_maskz_loadu_ps(tail_mask(nh - h0), w + h0);
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                const __m512 p = _mm512_mul_ps(acc[i], wv);
                s[i] += _mm512_reduce_add_ps(_mm512_maskz_mov_ps(_mm512_cmp_ps_mask(acc[i], _mm512_setzero_ps(), _CMP_GT_OQ), p));
                sabs[i] += _mm512_reduce_add_ps(_mm512_abs_ps(p));
            }
        }
        for (int i = 0; i < kn; i++) {
            const float sc = s[i] * 256.0f * ks[j + i];
            score[j + i] = sc;
            bound[j + i] = ds_index_bound(l1[i] * 256.0f * 1.0001f, c, sabs[i] * 256.0f, sc, ks[j + i], nh, dim);
        }
    }
}

/* ds_gemm_t: gemv_t_cols for GT_NT tokens x GT_NV column vectors at a
 * time, each row's weights converted once for all the tokens of the tile.
 * Every column takes the same multipliers, in the same row order, as
 * gemv_t_cols (FP8: x * s * 256 per row, the column's scale block), so a
 * token's sums are its gemv_t's to the bit. */
enum { GT_NT = 4, GT_NV = 4 };

INL void gemm_t_tile(ds_dtype dt, const ds_mat *m, int r0, int nrows, const float *X, int ldx, int NT, int c0,
                     int pf, float *Y, int ldy)
{
    __m512 acc[GT_NT][GT_NV];
    __mmask16 k[GT_NV];
    const int left = m->cols - c0, sb = c0 / DS_QBLOCK;
#pragma GCC unroll 4
    for (int v = 0; v < GT_NV; v++) {
        k[v] = VW * v < left ? tail_mask(left - VW * v) : 0;
#pragma GCC unroll 4
        for (int t = 0; t < GT_NT; t++)
            acc[t][v] = _mm512_setzero_ps();
    }
    const size_t rb = ds_mat_row_bytes(m);
    for (int i = 0; i < nrows; i++) {
        const uint8_t *w = row_ptr(m, r0 + i);
        const float s = dt == DS_DT_F8_E4M3 ? scale_row(m, r0 + i)[sb] : 1.0f;
        if (pf)     /* whole rows, or the first tile would read every row's 64 bytes on demand */
            prefetch_row_ahead(w, rb, i, nrows);
        __m512 wv[GT_NV];
#pragma GCC unroll 4
        for (int v = 0; v < GT_NV; v++)
            wv[v] = load_w(dt, w, c0 + VW * v, k[v]);
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            const float xi = X[(size_t)t * ldx + i];
            const __m512 va = _mm512_set1_ps(dt == DS_DT_F8_E4M3 ? xi * s * 256.0f : xi);
#pragma GCC unroll 4
            for (int v = 0; v < GT_NV; v++)
                acc[t][v] = _mm512_fmadd_ps(va, wv[v], acc[t][v]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < NT; t++)
#pragma GCC unroll 4
        for (int v = 0; v < GT_NV; v++)
            if (k[v])
                _mm512_mask_storeu_ps(Y + (size_t)t * ldy + c0 + VW * v, k[v], acc[t][v]);
}

INL void gemm_t_tokens(ds_dtype dt, const ds_mat *m, int r0, int nrows, const float *X, int ldx, int NT, int first,
                       float *Y, int ldy)
{
    for (int c0 = 0; c0 < m->cols; c0 += GT_NV * VW)
        gemm_t_tile(dt, m, r0, nrows, X, ldx, NT, c0, first && c0 == 0, Y, ldy);
}

#define GEMM_T_NT(DT) \
    switch (nt) { \
    case 1: gemm_t_tokens(DT, m, r0, nrows, X + (size_t)t * ldx, ldx, 1, t == 0, Y + (size_t)t * ldy, ldy); break; \
    case 2: gemm_t_tokens(DT, m, r0, nrows, X + (size_t)t * ldx, ldx, 2, t == 0, Y + (size_t)t * ldy, ldy); break; \
    case 3: gemm_t_tokens(DT, m, r0, nrows, X + (size_t)t * ldx, ldx, 3, t == 0, Y + (size_t)t * ldy, ldy); break; \
    default: gemm_t_tokens(DT, m, r0, nrows, X + (size_t)t * ldx, ldx, GT_NT, t == 0, Y + (size_t)t * ldy, ldy); break; \
    }

/* Q8_0 / Q4_K (whole 256-column blocks in gemv_t_cols) and one token: the
 * token's gemv_t, the matrix slice in cache after the first. */
NOINL void avx512_gemm_t(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy)
{
    const ds_dtype dt = m->dtype;
    if (n == 1 || (dt != DS_DT_F8_E4M3 && dt != DS_DT_BF16 && dt != DS_DT_F16)) {
        for (int t = 0; t < n; t++)
            avx512_gemv_t(m, r0, nrows, X + (size_t)t * ldx, Y + (size_t)t * ldy);
        return;
    }
    for (int t = 0; t < n; t += GT_NT) {
        const int nt = n - t < GT_NT ? n - t : GT_NT;
        switch (dt) {
        case DS_DT_F8_E4M3: GEMM_T_NT(DS_DT_F8_E4M3) break;
        case DS_DT_BF16: GEMM_T_NT(DS_DT_BF16) break;
        default: GEMM_T_NT(DS_DT_F16) break;
        }
    }
}

/* ds_gemm_tn_f32 in tiles of TN_T tokens x TN_V column vectors, the
 * accumulators in registers while the rows of A go by: each row's vectors
 * are loaded once per tile and used by every token in it. */
enum { TN_T = 4, TN_V = 4 };

INL void tn_tile(const float *A, int n, int cols, const float *X, int ldx, int t0, int nt, int c0, float *Y, int ldy)
{
    __m512 acc[TN_T][TN_V];
    __mmask16 k[TN_V];
#pragma GCC unroll 4
    for (int v = 0; v < TN_V; v++) {
        const int left = cols - c0 - VW * v;
        k[v] = left <= 0 ? 0 : tail_mask(left);
#pragma GCC unroll 4
        for (int t = 0; t < TN_T; t++)
            acc[t][v] = _mm512_setzero_ps();
    }
    const float *x[TN_T];
#pragma GCC unroll 4
    for (int t = 0; t < TN_T; t++)
        x[t] = X + (size_t)(t0 + (t < nt ? t : 0)) * ldx;
    for (int r = 0; r < n; r++) {
        const float *a = A + (size_t)r * cols + c0;
        __m512 av[TN_V];
#pragma GCC unroll 4
        for (int v = 0; v < TN_V; v++)
            av[v] = _mm512_maskz_loadu_ps(k[v], a + VW * v);
#pragma GCC unroll 4
        for (int t = 0; t < TN_T; t++) {
            const __m512 xv = _mm512_set1_ps(x[t][r]);
#pragma GCC unroll 4
            for (int v = 0; v < TN_V; v++)
                acc[t][v] = _mm512_fmadd_ps(xv, av[v], acc[t][v]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < TN_T; t++) {
        if (t >= nt)
            break;
#pragma GCC unroll 4
        for (int v = 0; v < TN_V; v++)
            _mm512_mask_storeu_ps(Y + (size_t)(t0 + t) * ldy + c0 + VW * v, k[v], acc[t][v]);
    }
}

NOINL void avx512_gemm_tn(const float *A, int n, int cols, const float *X, int ldx, int t0, int t1, float *Y,
                          int ldy)
{
    for (int t = t0; t < t1; t += TN_T)
        for (int c0 = 0; c0 < cols; c0 += TN_V * VW)
            tn_tile(A, n, cols, X, ldx, t, t1 - t < TN_T ? t1 - t : TN_T, c0, Y, ldy);
}

/* e^x for 16 lanes, within about 2 ulp of expf: x = n ln2 + r with
 * |r| <= ln2 / 2 (ln2 in two parts, so r is exact to f32), e^r by its
 * Taylor polynomial to r^7 (truncation below 1e-8 relative), times 2^n by
 * vscalefps.  Inputs below -88 give 0 (as expf's subnormals would, near
 * enough for a softmax), above 88 are clamped. */
INL __m512 exp16(__m512 x)
{
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-88.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512 e = _mm512_scalef_ps(p, n);
    return _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask(x, _mm512_set1_ps(-88.0f), _CMP_LE_OQ), _mm512_setzero_ps());
}

/* The scalar softmax's steps (max, e^(x - max), sum, divide), 16 lanes at a
 * time: attention takes one per head per token over up to 2048 keys. */
NOINL void avx512_softmax(float *x, int n)
{
    if (n <= 0)
        return;
    __m512 mv = _mm512_set1_ps(-INFINITY);
    for (int i = 0; i < n; i += VW)
        mv = _mm512_max_ps(mv, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail_mask(n - i), x + i));
    const float mx = _mm512_reduce_max_ps(mv);
    if (!(mx > -INFINITY && mx < INFINITY)) {   /* all -inf, or inf / NaN: the scalar form's answer */
        ds_kernels_scalar.softmax(x, n);
        return;
    }
    const __m512 m = _mm512_set1_ps(mx);
    __m512 sv = _mm512_setzero_ps();
    for (int i = 0; i < n; i += VW) {
        const __mmask16 k = tail_mask(n - i);
        const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), m));
        _mm512_mask_storeu_ps(x + i, k, e);
        sv = _mm512_add_ps(sv, _mm512_maskz_mov_ps(k, e));
    }
    const __m512 inv = _mm512_set1_ps(_mm512_reduce_add_ps(sv));
    for (int i = 0; i < n; i += VW) {
        const __mmask16 k = tail_mask(n - i);
        _mm512_mask_storeu_ps(x + i, k, _mm512_div_ps(_mm512_maskz_loadu_ps(k, x + i), inv));
    }
}


/* ---- absorbed decode attention over cached keys ------------------------
 * ds_attn_scores / ds_attn_softmax / ds_attn_wsum (kernels.h): each key's
 * latent is decoded 16 values at a time in registers (e4m3 through the f16
 * route, times its block scale and the 2^8) and multiplied against the 16
 * heads of a block at once, the packed query chunks at constant offsets.
 * Selected keys are scattered over the cache: the scores prefetch the
 * rows a few keys ahead; the sums read them again (from L2) in blocks. */
enum { AK_AHEAD = 8, AK_BLOCK = 8 };

/* 16 latent values of key j from column c (lanes of m; the rest 0). */
INL __m512 ak_lat(const ds_attn_keys *k, int f32, int j, int c, __mmask16 m)
{
    if (f32)
        return _mm512_maskz_loadu_ps(m, k->lat_f32 + (size_t)j * k->kvl + c);
    const int nb = (k->kvl + 127) / 128;
    const __m512 v = e4m3x16(_mm_maskz_loadu_epi8(m, k->lat_q + (size_t)j * k->kvl + c));
    return _mm512_mul_ps(v, _mm512_set1_ps(k->lat_s[(size_t)j * nb + c / 128] * 256.0f));
}

INL __m512 ak_rope(const ds_attn_keys *k, int f32, int j, int r, __mmask16 m)
{
    if (f32)
        return _mm512_maskz_loadu_ps(m, k->rope_f32 + (size_t)j * k->rope + r);
    const __m256i u = _mm256_maskz_loadu_epi16(m, k->rope_bf16 + (size_t)j * k->rope + r);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(u), 16));
}

INL void ak_prefetch(const ds_attn_keys *k, int j)
{
    const char *lat = k->lat_f32 ? (const char *)(k->lat_f32 + (size_t)j * k->kvl)
                                 : (const char *)(k->lat_q + (size_t)j * k->kvl);
    const size_t lb = k->lat_f32 ? 4 * (size_t)k->kvl : (size_t)k->kvl;
    for (size_t b = 0; b < lb; b += 64)
        _mm_prefetch(lat + b, _MM_HINT_T0);
    if (!k->lat_f32)
        _mm_prefetch((const char *)(k->lat_s + (size_t)j * ((k->kvl + 127) / 128)), _MM_HINT_T0);
    const char *rp = k->rope_f32 ? (const char *)(k->rope_f32 + (size_t)j * k->rope)
                                 : (const char *)(k->rope_bf16 + (size_t)j * k->rope);
    const size_t rb = (size_t)k->rope * (k->rope_f32 ? 4 : 2);
    for (size_t b = 0; b < rb; b += 64)
        _mm_prefetch(rp + b, _MM_HINT_T0);
}

/* Keys go in blocks of AK_BLOCK, and each head block's query (36 KB at
 * DeepSeek's widths) meets all the keys of a block in turn: with 128 heads
 * the whole query (288 KB) no longer streams from L2 for every key (scores
 * of 2048 keys at 128 heads: 301 -> 140-164 ns a key and head block). */
INL void ak_scores(const ds_attn_keys *k, int lf32, int rf32, const int32_t *pos, int base, int n, const float *qp,
                   int nhb, float *s, int lds)
{
    const int ncl = (k->kvl + 15) / 16, ncr = (k->rope + 15) / 16;
    const int kb = nhb > 1 ? AK_BLOCK : n;   /* one head block: one pass over the keys */
    for (int i0 = 0; i0 < n; i0 += kb)
        for (int b = 0; b < nhb; b++)
            for (int i = i0, i1 = n - i0 < kb ? n : i0 + kb; i < i1; i++) {
                const int j = pos ? pos[i] : base + i;
                if (b == 0 && i + AK_AHEAD < n)
                    ak_prefetch(k, pos ? pos[i + AK_AHEAD] : base + i + AK_AHEAD);
                const float *q = qp + (size_t)b * (ncl + ncr) * 256;
                __m512 acc[16];
#pragma GCC unroll 16
                for (int h = 0; h < 16; h++)
                    acc[h] = _mm512_setzero_ps();
                for (int cc = 0; cc < ncl; cc++, q += 256) {
                    const __m512 x = ak_lat(k, lf32, j, 16 * cc, tail_mask(k->kvl - 16 * cc));
#pragma GCC unroll 16
                    for (int h = 0; h < 16; h++)
                        acc[h] = _mm512_fmadd_ps(_mm512_load_ps(q + 16 * h), x, acc[h]);
                }
                for (int cc = 0; cc < ncr; cc++, q += 256) {
                    const __m512 x = ak_rope(k, rf32, j, 16 * cc, tail_mask(k->rope - 16 * cc));
#pragma GCC unroll 16
                    for (int h = 0; h < 16; h++)
                        acc[h] = _mm512_fmadd_ps(_mm512_load_ps(q + 16 * h), x, acc[h]);
                }
                _mm512_storeu_ps(s + ((size_t)b * lds + i) * 16, DS_SUM16(acc));
            }
}

NOINL void avx512_attn_scores(const ds_attn_keys *k, const int32_t *pos, int base, int n, const float *qp, int nhb,
                              float *s, int lds)
{
    if ((uintptr_t)qp % 64) {   /* the packed query is read with aligned loads */
        ds_kernels_scalar.attn_scores(k, pos, base, n, qp, nhb, s, lds);
        return;
    }
    const int lf32 = k->lat_f32 != NULL, rf32 = k->rope_f32 != NULL;
    if (lf32 && rf32)
        ak_scores(k, 1, 1, pos, base, n, qp, nhb, s, lds);
    else if (!lf32 && rf32)
        ak_scores(k, 0, 1, pos, base, n, qp, nhb, s, lds);
    else if (!lf32)
        ak_scores(k, 0, 0, pos, base, n, qp, nhb, s, lds);
    else
        ak_scores(k, 1, 0, pos, base, n, qp, nhb, s, lds);
}

/* ds_softmax's steps, with all 16 heads of a block in the lanes. */
NOINL void avx512_attn_softmax(float *s, int n, int nhb, int lds, float scale)
{
    if (n <= 0)
        return;
    const __m512 sc = _mm512_set1_ps(scale);
    for (int b = 0; b < nhb; b++) {
        float *x = s + (size_t)b * lds * 16;
        __m512 mv = _mm512_set1_ps(-INFINITY);
        for (int i = 0; i < n; i++) {
            const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + (size_t)i * 16), sc);
            _mm512_storeu_ps(x + (size_t)i * 16, v);
            mv = _mm512_max_ps(mv, v);
        }
        /* all -inf, inf or NaN in a lane: the scalar form's answer */
        if (_mm512_cmp_ps_mask(_mm512_abs_ps(mv), _mm512_set1_ps(INFINITY), _CMP_LT_OQ) != 0xffff) {
            ds_kernels_scalar.attn_softmax(x, n, 1, lds, 1.0f);
            continue;
        }
        __m512 sv = _mm512_setzero_ps();
        for (int i = 0; i < n; i++) {
            const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + (size_t)i * 16), mv));
            _mm512_storeu_ps(x + (size_t)i * 16, e);
            sv = _mm512_add_ps(sv, e);
        }
        for (int i = 0; i < n; i++)
            _mm512_storeu_ps(x + (size_t)i * 16, _mm512_div_ps(_mm512_loadu_ps(x + (size_t)i * 16), sv));
    }
}

INL void ak_wsum(const ds_attn_keys *k, int lf32, const int32_t *pos, int base, int n, const float *p, int nhb,
                 int ldp, float *o)
{
    const int nc = (k->kvl + 15) / 16;
    for (int b = 0; b < nhb; b++)
        for (int i0 = 0; i0 < n; i0 += AK_BLOCK) {
            const int nb = n - i0 < AK_BLOCK ? n - i0 : AK_BLOCK;
            int j[AK_BLOCK];
            for (int t = 0; t < nb; t++)
                j[t] = pos ? pos[i0 + t] : base + i0 + t;
            for (int cc = 0; cc < nc; cc++) {
                float *ob = o + ((size_t)b * nc + cc) * 256;
                const __mmask16 m = tail_mask(k->kvl - 16 * cc);
                __m512 acc[16];
#pragma GCC unroll 16
                for (int h = 0; h < 16; h++)
                    acc[h] = i0 ? _mm512_load_ps(ob + 16 * h) : _mm512_setzero_ps();
                for (int t = 0; t < nb; t++) {
                    const __m512 x = ak_lat(k, lf32, j[t], 16 * cc, m);
                    const float *pr = p + ((size_t)b * ldp + i0 + t) * 16;
#pragma GCC unroll 16
                    for (int h = 0; h < 16; h++)
                        acc[h] = _mm512_fmadd_ps(_mm512_set1_ps(pr[h]), x, acc[h]);
                }
#pragma GCC unroll 16
                for (int h = 0; h < 16; h++)
                    _mm512_store_ps(ob + 16 * h, acc[h]);
            }
        }
}

NOINL void avx512_attn_wsum(const ds_attn_keys *k, const int32_t *pos, int base, int n, const float *p, int nhb,
                            int ldp, float *o)
{
    if ((uintptr_t)o % 64 || n <= 0) {   /* aligned stores below; n == 0 writes zeros */
        ds_kernels_scalar.attn_wsum(k, pos, base, n, p, nhb, ldp, o);
        return;
    }
    if (k->lat_f32)
        ak_wsum(k, 1, pos, base, n, p, nhb, ldp, o);
    else
        ak_wsum(k, 0, pos, base, n, p, nhb, ldp, o);
}

const ds_kernels ds_kernels_avx512 = {
    .name = "avx512",
    .mat_row = avx512_mat_row,
    .gemv = avx512_gemv,
    .gemv_t = avx512_gemv_t,
    .gemm_t = avx512_gemm_t,
    .gemm = avx512_gemm,
    .dot = avx512_dot,
    .axpy = avx512_axpy,
    .e4m3_to_f64 = avx512_e4m3_to_f64,
    .index_scores = avx512_index_scores,
    .index_scores_fp8 = avx512_index_scores_fp8,
    .index_scores_approx = avx512_index_scores_approx,
    .gemm_tn = avx512_gemm_tn,
    .softmax = avx512_softmax,
    .attn_scores = avx512_attn_scores,
    .attn_softmax = avx512_attn_softmax,
    .attn_wsum = avx512_attn_wsum,
};

#endif /* x86 */
