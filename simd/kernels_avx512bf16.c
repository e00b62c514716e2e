/* kernels_avx512bf16.c — the bf16-activation GEMM of ds_gemm_bf16 (see
 * kernels.h) on AVX512_BF16: vdpbf16ps multiplies 32 bf16 pairs and adds
 * them into 16 f32 lanes, twice the multiply-adds of an f32 FMA.
 *
 * Semantics (ds_gemm_bf16_ref in kernels_scalar.c is the reference): every
 * activation is rounded to bf16 (nearest even); weight codes enter the dot
 * exactly — FP8 e4m3 values (subnormals included), Q8_0 int8 quants, Q4_K
 * 4-bit quants and BF16 weights all have at most 8 significant bits and an
 * exponent inside bf16's range — and products are summed in f32.  Block
 * multipliers are applied in f32 after each block's dot: the FP8 128x128
 * scale per 128 columns, Q8_0's d per 32, and Q4_K's d*sc and dmin*m per
 * 32-column sub-block (w = d*sc*q - dmin*m, so the dot is
 * d*sc*(q . x) - dmin*m*sum(x), with sum(x) of the rounded activations
 * taken once per token and sub-block).  Against Q4_K the activations are
 * int8 levels times 2^e per 256 columns instead (quant.h), which bf16
 * holds exactly: the panel GEMM takes them rounded so, the decode kernel
 * as the int8 levels themselves.
 *
 * Layout.  Rows go in panels of 32; a panel is converted once per call into
 * "pair-interleaved" bf16: for each column pair k, the 32 rows' (w[2k],
 * w[2k+1]) as 32-bit words, so one aligned load gives 16 rows' pairs and
 * vdpbf16ps against a broadcast activation pair accumulates 16 rows of one
 * token.  The conversion takes 16 rows x 32 columns into 16 registers and
 * transposes them as a 16x16 matrix of 32-bit pairs.  Activations are
 * rounded and packed once per call (row-major bf16, zero padded).  The
 * micro-kernel keeps 2 row vectors x up to 6 tokens of block sums and as
 * many running totals in registers (12 tokens of totals for unscaled BF16),
 * reading the panel from L1/L2 once per token group.
 *
 * Only the functions carry target attributes; cpu.c's avx512_bf16 bit is
 * checked (ds_gemm_bf16 in kernels_dispatch.c) before anything here runs.
 * OpenMP regions stay in plain functions, as in kernels_avx512.c. */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "kernels_isa.h"
#include "index_tiles.h"
#include "quant.h"
#include "worksplit.h"

#define TBF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,f16c,fma")))
#define INL static inline __attribute__((always_inline)) TBF
#define NOINL static __attribute__((noinline)) TBF

enum {
    PR = 32,            /* rows per panel: two vectors of 16 */
    CK = 32,            /* columns per conversion step: 16 pairs */
    TS = 6,             /* tokens per micro-tile with block scales */
    TU = 12,            /* tokens per micro-tile for unscaled BF16 */
};

/* 32 floats (exact in bf16) -> 32 bf16 in memory order, as 16 pairs. */
INL __m512i to_bf16x32(__m512 lo, __m512 hi) { return (__m512i)_mm512_cvtne2ps_pbh(hi, lo); }

/* 16 e4m3 codes -> 16 floats, 2^-8 times their values (as in kernels_avx512.c). */
INL __m512 e4m3x16(__m128i b)
{
    __m256i h = _mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7);
    h = _mm256_and_si256(h, _mm256_set1_epi16((short)0xbf80));
    return _mm512_cvtph_ps(h);
}

INL __m512 i8x16(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)); }

/* The f16 at p, exactly, through F16C. */
INL float f16c_at(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

INL const uint8_t *row_ptr(const ds_mat *m, int r)
{
    return (const uint8_t *)m->data + (size_t)r * ds_mat_row_bytes(m);
}

/* Columns c0 .. c0+31 of row r as 32 bf16 codes (zeros past the last
 * column).  FP8 codes come out 2^-8 times their value (the panel scales
 * carry the 256). */
INL __m512i row_chunk(const ds_mat *m, ds_dtype dt, const uint8_t *row, int c0, __m512i q4tbl)
{
    const int left = m->cols - c0;
    const __mmask32 k = left >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << left) - 1);
    switch (dt) {
    case DS_DT_BF16:
        return _mm512_maskz_loadu_epi16(k, (const uint16_t *)row + c0);
    case DS_DT_F8_E4M3: {
        const __m256i v = _mm256_maskz_loadu_epi8(k, row + c0);
        return to_bf16x32(e4m3x16(_mm256_castsi256_si128(v)), e4m3x16(_mm256_extracti128_si256(v, 1)));
    }
    case DS_DT_Q8_0: {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(row + (size_t)(c0 / 32) * DS_Q8_0_BYTES + 2));
        return to_bf16x32(i8x16(_mm256_castsi256_si128(v)), i8x16(_mm256_extracti128_si256(v, 1)));
    }
    case DS_DT_Q4_K: {
        const int j = (c0 / 32) % 8;      /* sub-block in its super-block */
        const uint8_t *qs = row + (size_t)(c0 / 256) * DS_Q4_K_BYTES + DS_Q4_K_OFF_QS + 32 * (j / 2);
        __m512i q = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)qs));
        q = (j & 1) ? _mm512_srli_epi16(q, 4) : _mm512_and_si512(q, _mm512_set1_epi16(15));
        return _mm512_permutexvar_epi16(q, q4tbl);
    }
    default:
        return _mm512_setzero_si512();
    }
}

/* Transposes a 16x16 matrix of 32-bit words (v[i] = row i) and stores
 * column j at dst + j * stride (in words). */
INL void transpose16_store(__m512i v[16], uint32_t *dst, size_t stride)
{
    __m512i t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    /* v[4g + j], lane L: rows 4g..4g+3 of column 4L + j */
#pragma GCC unroll 4
    for (int g = 0; g < 4; g++) {
        v[4 * g + 0] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
        v[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
        v[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
        v[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        const __m512i a0 = _mm512_shuffle_i32x4(v[j], v[4 + j], 0x88);      /* g0 L0, g0 L2, g1 L0, g1 L2 */
        const __m512i a1 = _mm512_shuffle_i32x4(v[j], v[4 + j], 0xdd);      /* g0 L1, g0 L3, g1 L1, g1 L3 */
        const __m512i b0 = _mm512_shuffle_i32x4(v[8 + j], v[12 + j], 0x88);
        const __m512i b1 = _mm512_shuffle_i32x4(v[8 + j], v[12 + j], 0xdd);
        _mm512_store_si512((__m512i *)(dst + (size_t)j * stride), _mm512_shuffle_i32x4(a0, b0, 0x88));
        _mm512_store_si512((__m512i *)(dst + (size_t)(8 + j) * stride), _mm512_shuffle_i32x4(a0, b0, 0xdd));
        _mm512_store_si512((__m512i *)(dst + (size_t)(4 + j) * stride), _mm512_shuffle_i32x4(a1, b1, 0x88));
        _mm512_store_si512((__m512i *)(dst + (size_t)(12 + j) * stride), _mm512_shuffle_i32x4(a1, b1, 0xdd));
    }
}

/* The codes of rows[0..15] into the pair-interleaved panel (half h), for
 * one dtype (a constant after inlining). */
INL void pack_rows(const ds_mat *m, ds_dtype dt, const uint8_t *const rows[16], int h, int kpp, uint32_t *wp)
{
    const __m512 k16 = _mm512_cvtepi32_ps(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    const __m512i q4tbl = to_bf16x32(k16, k16);
    const size_t rbytes = ds_dtype_row_bytes(dt, m->cols);
    for (int c0 = 0; c0 < 2 * kpp; c0 += CK) {   /* 2 * kpp is cols rounded up to CK: c0 < cols */
        /* 16 interleaved row streams are more than the hardware prefetchers
         * follow: fetch each row's line PF_AHEAD columns on */
        enum { PF_AHEAD = 256 };
        const size_t ahead = ds_dtype_row_bytes(dt, c0 + PF_AHEAD < m->cols ? c0 + PF_AHEAD : m->cols);
        __m512i v[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
            if (ahead < rbytes)
                __builtin_prefetch(rows[i] + ahead, 0, 3);
            v[i] = row_chunk(m, dt, rows[i], c0, q4tbl);
        }
        transpose16_store(v, wp + (size_t)(c0 / 2) * PR + 16 * h, PR);
    }
}

/* A Q4_K block's multipliers: a[j] = d * sc_j and b[j] = dmin * m_j for
 * its 8 sub-blocks (the 6-bit fields of quant.h's packing, unpacked four
 * at a time). */
INL void q4k_mults(const uint8_t *blk, __m256 *a, __m256 *b)
{
    uint32_t u[3];
    memcpy(u, blk + DS_Q4_K_OFF_SCALES, 12);
    const uint32_t sc_lo = u[0] & 0x3f3f3f3fu, mn_lo = u[1] & 0x3f3f3f3fu;
    const uint32_t sc_hi = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
    const uint32_t mn_hi = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
    const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)(((uint64_t)sc_hi << 32) | sc_lo))));
    const __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)(((uint64_t)mn_hi << 32) | mn_lo))));
    uint32_t dd;
    memcpy(&dd, blk, 4);
    const __m128 d2 = _mm_cvtph_ps(_mm_cvtsi32_si128((int)dd));     /* d, dmin */
    *a = _mm256_mul_ps(sc, _mm256_broadcastss_ps(d2));
    *b = _mm256_mul_ps(mn, _mm256_permutevar8x32_ps(_mm256_castps128_ps256(d2), _mm256_set1_epi32(1)));
}

/* Columns per scale block of a dtype (0: unscaled). */
static int block_cols(ds_dtype dt)
{
    switch (dt) {
    case DS_DT_F8_E4M3: return DS_QBLOCK;
    case DS_DT_Q8_0:
    case DS_DT_Q4_K: return 32;
    default: return 0;
    }
}

/* Converts the nr (<= PR) rows starting at r into wp (pair-interleaved,
 * kpp pairs x PR rows) and their block multipliers into
 * ps (and Q4_K's min terms into pm): [block][PR] floats. */
NOINL void pack_panel(const ds_mat *m, int r, int nr, int kpp, uint32_t *wp, float *ps, float *pm)
{
    const ds_dtype dt = m->dtype;
    for (int h = 0; h < PR / 16; h++) {
        /* rows past nr repeat row r: packed, never stored (their scales
         * are 0 and the stores are masked) */
        const uint8_t *rows[16];
        for (int i = 0; i < 16; i++)
            rows[i] = row_ptr(m, h * 16 + i < nr ? r + h * 16 + i : r);
        switch (dt) {
        case DS_DT_BF16: pack_rows(m, DS_DT_BF16, rows, h, kpp, wp); break;
        case DS_DT_F8_E4M3: pack_rows(m, DS_DT_F8_E4M3, rows, h, kpp, wp); break;
        case DS_DT_Q8_0: pack_rows(m, DS_DT_Q8_0, rows, h, kpp, wp); break;
        default: pack_rows(m, DS_DT_Q4_K, rows, h, kpp, wp); break;
        }
    }
    const int bc = block_cols(dt);
    if (!bc)
        return;
    const int nb = (m->cols + bc - 1) / bc, sc = (m->cols + DS_QBLOCK - 1) / DS_QBLOCK;
    for (int i = 0; i < PR; i++) {
        if (i >= nr) {
            for (int b = 0; b < nb; b++)
                ps[(size_t)b * PR + i] = pm[(size_t)b * PR + i] = 0.0f;
            continue;
        }
        const uint8_t *row = row_ptr(m, r + i);
        if (dt == DS_DT_F8_E4M3) {
            const float *s = m->scale + (size_t)((r + i) / DS_QBLOCK) * sc;
            for (int b = 0; b < nb; b++)
                ps[(size_t)b * PR + i] = s[b] * 256.0f;
        } else if (dt == DS_DT_Q8_0) {
            for (int b = 0; b < nb; b++)
                ps[(size_t)b * PR + i] = f16c_at(row + (size_t)b * DS_Q8_0_BYTES);
        } else {
            /* a whole super-block's 8 multiplier pairs at once */
            for (int b = 0; b < nb; b += 8) {
                float a[8], mn[8];
                __m256 va, vm;
                q4k_mults(row + (size_t)(b / 8) * DS_Q4_K_BYTES, &va, &vm);
                _mm256_storeu_ps(a, va);
                _mm256_storeu_ps(mn, vm);
                for (int j = 0; j < 8 && b + j < nb; j++) {
                    ps[(size_t)(b + j) * PR + i] = a[j];
                    pm[(size_t)(b + j) * PR + i] = mn[j];
                }
            }
        }
    }
}

/* Rounds X[t] to bf16 into xb (rows of ldb pairs, zero padded) and, for
 * Q4_K, sums each 32-column sub-block of the rounded values into xs (rows
 * of nb floats). */
NOINL void pack_x(const float *x, int cols, int ldb, uint32_t *xb, float *xs)
{
    for (int c0 = 0; c0 < 2 * ldb; c0 += 32) {
        const int left = cols - c0;
        __m512i v = _mm512_setzero_si512();
        if (left > 0) {
            const __mmask16 k0 = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
            const __mmask16 k1 = left >= 32 ? (__mmask16)0xffff : left > 16 ? (__mmask16)((1u << (left - 16)) - 1) : 0;
            v = to_bf16x32(_mm512_maskz_loadu_ps(k0, x + c0), _mm512_maskz_loadu_ps(k1, x + c0 + 16));
        }
        _mm512_store_si512((__m512i *)(xb + c0 / 2), v);
        if (xs && left > 0) {
            /* bf16 pairs back to f32: low halves shifted up, high halves masked */
            const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
            const __m512 hi = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)));
            xs[c0 / 32] = _mm512_reduce_add_ps(_mm512_add_ps(lo, hi));
        }
    }
}

/* One panel (32 rows, 2 vectors) x nt tokens (a constant after inlining):
 * block dots in tmp, folded into tot with the block multipliers; unscaled
 * (BF16) dots go straight into tot.  Y rows past nr are not written. */
INL void panel_tile(const uint32_t *wp, int nkp, int scaled, int bkp, const float *ps, const float *pm, const uint32_t *xb,
                    int ldb, const float *xs, int nb, int nt, int mins, float *Y, int ldy, int nr)
{
    enum { TM = TU };
    __m512 tot[2][TM];
#pragma GCC unroll 12
    for (int t = 0; t < TM; t++)
        tot[0][t] = tot[1][t] = _mm512_setzero_ps();
    if (!scaled) {
        for (int kp = 0; kp < nkp; kp++) {
            const __m512bh w0 = (__m512bh)_mm512_load_si512((const __m512i *)(wp + (size_t)kp * PR));
            const __m512bh w1 = (__m512bh)_mm512_load_si512((const __m512i *)(wp + (size_t)kp * PR + 16));
#pragma GCC unroll 12
            for (int t = 0; t < nt; t++) {
                const __m512bh x = (__m512bh)_mm512_set1_epi32((int)xb[(size_t)t * ldb + kp]);
                tot[0][t] = _mm512_dpbf16_ps(tot[0][t], w0, x);
                tot[1][t] = _mm512_dpbf16_ps(tot[1][t], w1, x);
            }
        }
    } else {
        for (int k0 = 0, b = 0; k0 < nkp; k0 += bkp, b++) {
            const int k1 = k0 + bkp < nkp ? k0 + bkp : nkp;
            __m512 tmp[2][TS];
#pragma GCC unroll 6
            for (int t = 0; t < TS; t++)
                tmp[0][t] = tmp[1][t] = _mm512_setzero_ps();
            for (int kp = k0; kp < k1; kp++) {
                const __m512bh w0 = (__m512bh)_mm512_load_si512((const __m512i *)(wp + (size_t)kp * PR));
                const __m512bh w1 = (__m512bh)_mm512_load_si512((const __m512i *)(wp + (size_t)kp * PR + 16));
#pragma GCC unroll 6
                for (int t = 0; t < nt && t < TS; t++) {
                    const __m512bh x = (__m512bh)_mm512_set1_epi32((int)xb[(size_t)t * ldb + kp]);
                    tmp[0][t] = _mm512_dpbf16_ps(tmp[0][t], w0, x);
                    tmp[1][t] = _mm512_dpbf16_ps(tmp[1][t], w1, x);
                }
            }
            const __m512 s0 = _mm512_load_ps(ps + (size_t)b * PR), s1 = _mm512_load_ps(ps + (size_t)b * PR + 16);
#pragma GCC unroll 6
            for (int t = 0; t < nt && t < TS; t++) {
                tot[0][t] = _mm512_fmadd_ps(tmp[0][t], s0, tot[0][t]);
                tot[1][t] = _mm512_fmadd_ps(tmp[1][t], s1, tot[1][t]);
            }
            if (mins) {
                const __m512 m0 = _mm512_load_ps(pm + (size_t)b * PR), m1 = _mm512_load_ps(pm + (size_t)b * PR + 16);
#pragma GCC unroll 6
                for (int t = 0; t < nt && t < TS; t++) {
                    const __m512 sx = _mm512_set1_ps(xs[(size_t)t * nb + b]);
                    tot[0][t] = _mm512_fnmadd_ps(m0, sx, tot[0][t]);
                    tot[1][t] = _mm512_fnmadd_ps(m1, sx, tot[1][t]);
                }
            }
        }
    }
    const __mmask16 k0 = nr >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
    const __mmask16 k1 = nr >= 32 ? (__mmask16)0xffff : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
#pragma GCC unroll 12
    for (int t = 0; t < nt; t++) {
        _mm512_mask_storeu_ps(Y + (size_t)t * ldy, k0, tot[0][t]);
        _mm512_mask_storeu_ps(Y + (size_t)t * ldy + 16, k1, tot[1][t]);
    }
}

#define SCALED(N, M) \
    case N: panel_tile(wp, nkp, 1, bkp, ps, pm, xb, ldb, xs, nb, N, M, Y, ldy, nr); break;
#define UNSCALED(N) \
    case N: panel_tile(wp, nkp, 0, 0, ps, pm, xb, ldb, xs, nb, N, 0, Y, ldy, nr); break;

/* The panel against every token, in groups of TS (scaled) or TU tokens. */
NOINL void panel_run(const uint32_t *wp, int nkp, int bkp, const float *ps, const float *pm, const uint32_t *xb0,
                     int ldb, const float *xs0, int nb, int n, int mins, float *Y0, int ldy, int nr)
{
    const int tt = bkp ? TS : TU;
    for (int t0 = 0; t0 < n; t0 += tt) {
        const int nt = n - t0 < tt ? n - t0 : tt;
        const uint32_t *xb = xb0 + (size_t)t0 * ldb;
        const float *xs = xs0 ? xs0 + (size_t)t0 * nb : NULL;
        float *Y = Y0 + (size_t)t0 * ldy;
        if (bkp && mins) {
            switch (nt) {
                SCALED(1, 1) SCALED(2, 1) SCALED(3, 1) SCALED(4, 1) SCALED(5, 1)
            default: panel_tile(wp, nkp, 1, bkp, ps, pm, xb, ldb, xs, nb, TS, 1, Y, ldy, nr); break;
            }
        } else if (bkp) {
            switch (nt) {
                SCALED(1, 0) SCALED(2, 0) SCALED(3, 0) SCALED(4, 0) SCALED(5, 0)
            default: panel_tile(wp, nkp, 1, bkp, ps, pm, xb, ldb, xs, nb, TS, 0, Y, ldy, nr); break;
            }
        } else {
            switch (nt) {
                UNSCALED(1) UNSCALED(2) UNSCALED(3) UNSCALED(4) UNSCALED(5) UNSCALED(6)
                UNSCALED(7) UNSCALED(8) UNSCALED(9) UNSCALED(10) UNSCALED(11)
            default: panel_tile(wp, nkp, 0, 0, ps, pm, xb, ldb, xs, nb, TU, 0, Y, ldy, nr); break;
            }
        }
    }
}

/* Per-thread scratch of the calling thread, grown as needed and kept
 * (a prefill calls the GEMM hundreds of times with the same shapes); a
 * thread key frees it when the thread exits (a server's engine thread). */
static __thread void *scratch;
static __thread size_t scratch_bytes;
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_key_make(void) { pthread_key_create(&scratch_key, free); }

static size_t up64(size_t b) { return (b + 63) & ~(size_t)63; }

static void *scratch_get(size_t bytes)
{
    if (bytes <= scratch_bytes)
        return scratch;
    pthread_once(&scratch_once, scratch_key_make);
    free(scratch);
    bytes = up64(bytes);     /* aligned_alloc wants a multiple of the alignment */
    scratch = aligned_alloc(64, bytes);
    scratch_bytes = scratch ? bytes : 0;
    pthread_setspecific(scratch_key, scratch);
    return scratch;
}

int ds_gemm_bf16_avx512(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy)
{
    const ds_dtype dt = m->dtype;
    if (dt != DS_DT_BF16 && dt != DS_DT_F8_E4M3 && dt != DS_DT_Q8_0 && dt != DS_DT_Q4_K)
        return 0;
    const int cols = m->cols, kpp = (cols + CK - 1) / CK * (CK / 2), nkp = (cols + 1) / 2;
    const int bc = block_cols(dt), bkp = bc / 2, nb = bc ? (cols + bc - 1) / bc : 1;
    const int mins = dt == DS_DT_Q4_K;
    const int nth = omp_get_max_threads() > 0 ? omp_get_max_threads() : 1;
    const size_t xb_b = up64(sizeof(uint32_t) * (size_t)n * kpp);
    const size_t xs_b = mins ? up64(sizeof(float) * (size_t)n * nb) : 0;
    const size_t wp_b = up64(sizeof(uint32_t) * (size_t)kpp * PR), ps_b = up64(sizeof(float) * (size_t)nb * PR);
    const size_t per = wp_b + 2 * ps_b;
    uint8_t *buf = scratch_get(xb_b + xs_b + (size_t)nth * per);
    if (!buf)
        return 0;
    uint32_t *xb = (uint32_t *)buf;
    float *xs = mins ? (float *)(buf + xb_b) : NULL;
    const long work = (long)nrows * cols * n;
#pragma omp parallel for schedule(static) if (ds_worth_threads(work) && n > 1)
    for (int t = 0; t < n; t++)
        pack_x(X + (size_t)t * ldx, cols, kpp, xb + (size_t)t * kpp, xs ? xs + (size_t)t * nb : NULL);
    const int npan = (nrows + PR - 1) / PR;
#pragma omp parallel if (ds_worth_threads(work))
    {
        const int id = omp_get_thread_num() < nth ? omp_get_thread_num() : 0;
        uint8_t *mine = buf + xb_b + xs_b + (size_t)id * per;
        uint32_t *wp = (uint32_t *)mine;
        float *ps = (float *)(mine + wp_b), *pm = (float *)(mine + wp_b + ps_b);
        /* panels one at a time to whichever thread is free: a slower core
         * takes fewer (each panel's rows are one thread's, whoever) */
#pragma omp for schedule(dynamic, 1)
        for (int p = 0; p < npan; p++) {
            const int i0 = p * PR, nr = nrows - i0 < PR ? nrows - i0 : PR;
            pack_panel(m, r0 + i0, nr, kpp, wp, ps, pm);
            panel_run(wp, nkp, bkp, ps, pm, xb, kpp, xs, nb, n, mins, Y + i0, ldy, nr);
        }
    }
    return 1;
}


/* ---- products with fewer than DS_GEMM_BF16_MIN_N tokens -----------------
 * Decode and batched decode.  A panel would be converted for a handful of
 * tokens only, so here the weights stream from memory once per call, each
 * 64-byte vector converted to bf16 in registers and used at once for every
 * token of the pass.  The conversion is a table lookup (vpermi2b for FP8's
 * 128 magnitudes, vpshufb for Q4_K's 16 nibble values) giving the low and
 * high bytes of 64 bf16 codes, interleaved by vpunpck{l,h}bw into two
 * vectors A and B whose words are, per 128-bit lane k, elements
 * 16k .. 16k+7 (A) and 16k+8 .. 16k+15 (B) of the 64.  The activations are
 * rounded and packed once per call in that same order, so the dots pair
 * every weight with its own activation.  The numbers are ds_gemm_bf16's:
 * exact weight codes, rounded activations, f32 sums, block multipliers in
 * f32 (Q4_K's min terms dmin*m*sum(x) per sub-block, as in the GEMM). */

/* This part also uses AVX512_VBMI (vpermi2b) and AVX512_VNNI (vpdpwssd);
 * ds_gemm_bf16_small_avx512 checks for them before anything else. */
#define TSM __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vbmi,avx512vnni,f16c,fma")))
#define SINL static inline __attribute__((always_inline)) TSM
#define SNOINL static __attribute__((noinline)) TSM

enum {
    SMALL_NT = 8,       /* tokens per pass */
    XSTEP = 128,        /* packed activations come in steps of 128 columns */
};

enum xorder { X_NATURAL, X_PAIRS64 };

/* What the tiles need of the matrix, worked out once per call: per-row
 * divisions and calls cost as much as a short row's arithmetic (an
 * expert's 512-column down projection). */
typedef struct {
    const uint8_t *data;    /* row 0 */
    const uint8_t *last;    /* the last row: prefetches go no further */
    size_t rb;              /* bytes per row */
    size_t pfo;             /* how far ahead the tiles prefetch, in bytes */
    const float *scale;     /* FP8: the block scales, nsb per 128 rows */
    int cols, nsb;
} small_mat;

/* Row r of a tile (rows past the nr real ones repeat r0) and the address
 * prefetched meanwhile. */
SINL const uint8_t *small_row(const small_mat *sm, int r0, int i, int nr)
{
    return sm->data + (size_t)(i < nr ? r0 + i : r0) * sm->rb;
}
SINL const uint8_t *small_pf(const small_mat *sm, const uint8_t *w)
{
    return (size_t)(sm->last - w) > sm->pfo ? w + sm->pfo : sm->last;
}

/* A 128-entry byte-pair table (low bytes, high bytes) into registers. */
SINL void lut_load(const uint8_t lut[2][128], __m512i tl[2], __m512i th[2])
{
    for (int k = 0; k < 2; k++) {
        tl[k] = _mm512_load_si512((const __m512i *)(const void *)(lut[0] + 64 * k));
        th[k] = _mm512_load_si512((const __m512i *)(const void *)(lut[1] + 64 * k));
    }
}

/* A tile's rows, the addresses prefetched meanwhile and its zeroed sums. */
SINL void tile_begin(const small_mat *sm, int r0, int nr, int RB, int NT, const uint8_t *w[4], const uint8_t *p[4],
                     __m512 tot[4][SMALL_NT])
{
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) {
        w[i] = small_row(sm, r0, i, nr);
        p[i] = small_pf(sm, w[i]);
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++)
            tot[i][t] = _mm512_setzero_ps();
    }
}

static uint8_t e4m3_lut[2][128] __attribute__((aligned(64)));   /* low, high byte of bf16(|code|) */
static uint8_t e4m3_lut_idx[2][128] __attribute__((aligned(64)));   /* the same with NaN read as 0 (indexer) */
static uint8_t i8_lut[2][128] __attribute__((aligned(64)));     /* low, high byte of bf16(m), m < 128 */
static uint16_t perm_ab[2][32] __attribute__((aligned(64)));    /* element of word w of A, of B */
static pthread_once_t lut_once = PTHREAD_ONCE_INIT;

static void lut_make(void)
{
    for (int m = 0; m < 128; m++) {
        const int e = m >> 3, f = m & 7;
        /* the NaN magnitude 0x7f reads as 480, as in kernels_avx512.c */
        const float v = m == 0x7f ? 480.0f : e ? ldexpf((float)(8 + f), e - 10) : ldexpf((float)f, -9);
        uint32_t u;
        memcpy(&u, &v, 4);
        e4m3_lut[0][m] = (uint8_t)(u >> 16);
        e4m3_lut[1][m] = (uint8_t)(u >> 24);
        e4m3_lut_idx[0][m] = m == 0x7f ? 0 : e4m3_lut[0][m];
        e4m3_lut_idx[1][m] = m == 0x7f ? 0 : e4m3_lut[1][m];
        const float im = (float)m;
        memcpy(&u, &im, 4);
        i8_lut[0][m] = (uint8_t)(u >> 16);
        i8_lut[1][m] = (uint8_t)(u >> 24);
    }
    for (int w = 0; w < 32; w++) {
        perm_ab[0][w] = (uint16_t)(16 * (w / 8) + w % 8);
        perm_ab[1][w] = (uint16_t)(16 * (w / 8) + 8 + w % 8);
    }
}

SINL __m512i bf16_round32(const float *x, int left)
{
    if (left <= 0)
        return _mm512_setzero_si512();
    const __mmask16 k0 = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
    const __mmask16 k1 = left >= 32 ? (__mmask16)0xffff : left > 16 ? (__mmask16)((1u << (left - 16)) - 1) : 0;
    return to_bf16x32(_mm512_maskz_loadu_ps(k0, x), _mm512_maskz_loadu_ps(k1, x + 16));
}

/* x[0 .. cols) rounded to bf16 into xb (len words, a multiple of XSTEP,
 * zero padded) in the order of the weight conversion of `order`: as is
 * (BF16); per 64 columns the A words then the B words (FP8, Q8_0). */
SNOINL void pack_x_small(const float *x, int cols, int order, int len, uint16_t *xb)
{
    const __m512i pa = _mm512_load_si512((const __m512i *)perm_ab[0]);
    const __m512i pb = _mm512_load_si512((const __m512i *)perm_ab[1]);
    for (int c = 0; c < len; c += XSTEP) {
        __m512i v[4];
        for (int k = 0; k < 4; k++)
            v[k] = bf16_round32(x + c + 32 * k, cols - c - 32 * k);
        __m512i *out = (__m512i *)(void *)(xb + c);
        if (order == X_NATURAL) {
            for (int k = 0; k < 4; k++)
                _mm512_store_si512(out + k, v[k]);
            continue;
        }
        _mm512_store_si512(out + 0, _mm512_permutex2var_epi16(v[0], pa, v[1]));
        _mm512_store_si512(out + 1, _mm512_permutex2var_epi16(v[0], pb, v[1]));
        _mm512_store_si512(out + 2, _mm512_permutex2var_epi16(v[2], pa, v[3]));
        _mm512_store_si512(out + 3, _mm512_permutex2var_epi16(v[2], pb, v[3]));
    }
}

/* 64 FP8 codes -> A, B (see above); tl/th hold the 128-entry tables. */
SINL void fp8_ab(__m512i codes, const __m512i tl[2], const __m512i th[2], __m512i *a, __m512i *b)
{
    const __m512i lo = _mm512_permutex2var_epi8(tl[0], codes, tl[1]);
    __m512i hi = _mm512_permutex2var_epi8(th[0], codes, th[1]);
    hi = _mm512_ternarylogic_epi32(hi, codes, _mm512_set1_epi8((char)0x80), 0xf8);   /* hi | (codes & 0x80) */
    *a = _mm512_unpacklo_epi8(lo, hi);
    *b = _mm512_unpackhi_epi8(lo, hi);
}

SINL __m512 dp2(__m512 acc, __m512i a, __m512i b, const uint16_t *x)
{
    acc = _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)_mm512_load_si512((const __m512i *)x));
    return _mm512_dpbf16_ps(acc, (__m512bh)b, (__m512bh)_mm512_load_si512((const __m512i *)(x + 32)));
}

/* rows[i] . X[t] for i < RB, t < NT (constants after inlining) into
 * out[i * NT + t]; xb: packed tokens, ldb words apart; pf: the rows to
 * prefetch meanwhile (the next block's). */
SINL void small_fp8(const small_mat *sm, int r0, int nr, int RB, int NT, const uint16_t *xb, int ldb, float *out)
{
    const int cols = sm->cols;
    __m512i tl[2], th[2];
    lut_load(e4m3_lut, tl, th);
    const uint8_t *w[4], *p[4];
    const float *s[4];
    __m512 tot[4][SMALL_NT];
    tile_begin(sm, r0, nr, RB, NT, w, p, tot);
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
        s[i] = sm->scale + (size_t)((i < nr ? r0 + i : r0) / DS_QBLOCK) * sm->nsb;
    /* Few rows x tokens: the two 64-column halves of a block sum apart as
     * well, or the dot latency would bound a single stream.  From 8
     * rows x tokens the A and B words share one sum: the tile has chains
     * enough, and the adds that would join them cost issue slots (in L2,
     * one thread: 2, 4 and 8 tokens 5-35 % faster). */
    const int split = RB * NT <= 2, jb = RB * NT >= 8 ? 0 : 1;
    for (int c0 = 0; c0 < cols; c0 += DS_QBLOCK) {
        /* A and B words in separate sums (jb): two dependency chains per row */
        __m512 acc[4][4][SMALL_NT];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
#pragma GCC unroll 4
            for (int i = 0; i < RB; i++)
#pragma GCC unroll 8
                for (int t = 0; t < NT; t++)
                    acc[j][i][t] = _mm512_setzero_ps();
        const int end = cols - c0 < DS_QBLOCK ? cols : c0 + DS_QBLOCK;
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const int c = c0 + 64 * h, j = split ? 2 * h : 0;
            if (c >= end)
                break;
            /* the mask is computed only for a row's last, partial step */
            const __mmask64 k = end - c >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << (end - c)) - 1;
#pragma GCC unroll 4
            for (int i = 0; i < RB; i++) {
                __builtin_prefetch(p[i] + c, 0, 3);
                __m512i a, b;
                const __m512i q = end - c >= 64 ? _mm512_loadu_si512((const void *)(w[i] + c))
                                                : _mm512_maskz_loadu_epi8(k, w[i] + c);
                fp8_ab(q, tl, th, &a, &b);
#pragma GCC unroll 8
                for (int t = 0; t < NT; t++) {
                    const uint16_t *x = xb + (size_t)t * ldb + c;
                    acc[j][i][t] = _mm512_dpbf16_ps(acc[j][i][t], (__m512bh)a,
                                                    (__m512bh)_mm512_load_si512((const __m512i *)x));
                    acc[j + jb][i][t] = _mm512_dpbf16_ps(acc[j + jb][i][t], (__m512bh)b,
                                                        (__m512bh)_mm512_load_si512((const __m512i *)(x + 32)));
                }
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            const __m512 sc = _mm512_set1_ps(s[i][c0 / DS_QBLOCK]);
#pragma GCC unroll 8
            for (int t = 0; t < NT; t++) {
                __m512 sum = jb ? _mm512_add_ps(acc[0][i][t], acc[1][i][t]) : acc[0][i][t];
                if (split)
                    sum = _mm512_add_ps(sum, _mm512_add_ps(acc[2][i][t], acc[3][i][t]));
                tot[i][t] = _mm512_fmadd_ps(sum, sc, tot[i][t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++)
            out[i * NT + t] = _mm512_reduce_add_ps(tot[i][t]);
}

/* 64 Q8_0 quants (two blocks) -> A, B as fp8_ab: |q| looked up (the
 * int8 magnitudes 0..127 are exact in bf16), the sign or'ed in.  -128
 * reads its magnitude's low 7 bits, 0: its high byte is set apart (the
 * low byte of bf16(128) is 0 like that of 0).  Q8_0 files from the usual
 * quantisers hold no -128 (d = max|x| / 127), so that is a branch never
 * taken there. */
SINL void q8_ab(__m512i q, const __m512i tl[2], const __m512i th[2], __m512i *a, __m512i *b)
{
    const __m512i m = _mm512_abs_epi8(q);
    const __m512i lo = _mm512_permutex2var_epi8(tl[0], m, tl[1]);
    __m512i hi = _mm512_permutex2var_epi8(th[0], m, th[1]);
    hi = _mm512_ternarylogic_epi32(hi, q, _mm512_set1_epi8((char)0x80), 0xf8);   /* hi | (q & 0x80) */
    const __mmask64 k128 = _mm512_cmpeq_epi8_mask(q, _mm512_set1_epi8((char)0x80));
    if (__builtin_expect(k128 != 0, 0))
        hi = _mm512_mask_mov_epi8(hi, k128, _mm512_set1_epi8((char)0xc3));     /* bf16(-128) = 0xc300 */
    *a = _mm512_unpacklo_epi8(lo, hi);
    *b = _mm512_unpackhi_epi8(lo, hi);
}

/* One step of small_q8 for the RB rows at byte bo of each, column c: two
 * blocks, or with !two the row's last block alone (the high half zero). */
SINL void q8_step(const uint8_t *const w[4], const uint8_t *const p[4], size_t bo, int c, int two, int RB, int NT,
                  const __m512i tl[2], const __m512i th[2], const uint16_t *xb, int ldb, __m512 tot[4][SMALL_NT])
{
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) {
        const uint8_t *b = w[i] + bo;
        __builtin_prefetch(p[i] + bo, 0, 3);
        __builtin_prefetch(p[i] + bo + 64, 0, 3);
        __m512i q = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(const void *)(b + 2)));
        __m128i d1 = _mm_setzero_si128();
        if (two) {
            q = _mm512_inserti64x4(q, _mm256_loadu_si256((const __m256i *)(const void *)(b + DS_Q8_0_BYTES + 2)), 1);
            d1 = _mm_broadcastw_epi16(_mm_loadu_si16(b + DS_Q8_0_BYTES));
        }
        const __m256i dh = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_broadcastw_epi16(_mm_loadu_si16(b))), d1, 1);
        const __m512 d = _mm512_cvtph_ps(dh);
        __m512i a, bb;
        q8_ab(q, tl, th, &a, &bb);
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++)
            tot[i][t] = _mm512_fmadd_ps(dp2(_mm512_setzero_ps(), a, bb, xb + (size_t)t * ldb + c), d, tot[i][t]);
    }
}

/* Q8_0 rows: two 34-byte blocks (f16 d, 32 quants) a step, their quants
 * in the low and high halves of one vector, so the dots' lanes 0-7 hold
 * the first block and 8-15 the second (see the A, B order), each scaled
 * by its d in f32. */
SINL void small_q8(const small_mat *sm, int r0, int nr, int RB, int NT, const uint16_t *xb, int ldb, float *out)
{
    const int cols = sm->cols;
    __m512i tl[2], th[2];
    lut_load(i8_lut, tl, th);
    const uint8_t *w[4], *p[4];
    __m512 tot[4][SMALL_NT];
    tile_begin(sm, r0, nr, RB, NT, w, p, tot);
    int c = 0;
    size_t bo = 0;
    for (; c + 2 * DS_Q8_0_BLOCK <= cols; c += 2 * DS_Q8_0_BLOCK, bo += 2 * DS_Q8_0_BYTES)
        q8_step(w, p, bo, c, 1, RB, NT, tl, th, xb, ldb, tot);
    if (c < cols)
        q8_step(w, p, bo, c, 0, RB, NT, tl, th, xb, ldb, tot);
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++)
            out[i * NT + t] = _mm512_reduce_add_ps(tot[i][t]);
}

SINL void small_bf16w(const small_mat *sm, int r0, int nr, int RB, int NT, const uint16_t *xb, int ldb, float *out)
{
    const int cols = sm->cols;
    const uint8_t *wb[4], *p[4];
    __m512 tot[4][SMALL_NT];
    tile_begin(sm, r0, nr, RB, NT, wb, p, tot);
    const uint16_t *w[4];
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
        w[i] = (const uint16_t *)(const void *)wb[i];
    /* odd 32-column steps sum into a second set: two chains per row */
    __m512 tot2[4][SMALL_NT];
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++)
            tot2[i][t] = _mm512_setzero_ps();
    for (int c = 0; c < cols; c += 32) {
        const __mmask32 k = cols - c >= 32 ? ~(__mmask32)0 : ((__mmask32)1 << (cols - c)) - 1;
        const int odd = (c >> 5) & 1;
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            __builtin_prefetch(p[i] + 2 * (size_t)c, 0, 3);
            const __m512bh a = (__m512bh)_mm512_maskz_loadu_epi16(k, w[i] + c);
#pragma GCC unroll 8
            for (int t = 0; t < NT; t++) {
                const __m512bh x = (__m512bh)_mm512_load_si512((const __m512i *)(xb + (size_t)t * ldb + c));
                if (odd)
                    tot2[i][t] = _mm512_dpbf16_ps(tot2[i][t], a, x);
                else
                    tot[i][t] = _mm512_dpbf16_ps(tot[i][t], a, x);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++)
            out[i * NT + t] = _mm512_reduce_add_ps(_mm512_add_ps(tot[i][t], tot2[i][t]));
}

/* ---- Q4_K against int8 activations (quant.h's ds_q4_k_act_round) ------
 * Each 256-column block of a token is int8 levels times 2^e, so a sub-
 * block's dot is integer: vpmaddubsw multiplies the nibbles (unsigned)
 * with the levels (|q| <= 127: a pair's sum fits 16 bits) and vpdpwssd
 * adds those pairs times the sub-block's 6-bit scale into 32-bit lanes
 * (at most 2^21 a block).  The block's sum then takes d * 2^e in f32 and
 * the min terms dmin * m_j * sum(x over sub-block j) as before.  The same
 * exact products as ds_gemm_bf16_ref on the rounded activations, summed
 * in another order (exactly, inside a block).  Four times fewer
 * instructions per weight than converting the nibbles to bf16: decode of
 * Q4_K was bound by that conversion. */

/* The activations of one call, packed once: bf16 words (BF16, FP8, Q8_0),
 * or for Q4_K the int8 levels, per 128 columns those of {0-31, 64-95}
 * then of {32-63, 96-127} (the low and the high nibbles of two 32-byte
 * quant groups), each block's 2^e, and per sub-block j the sum of its
 * rounded values in lane 2j + 1 of 16 (lane 2j 0: see q4k_mults4). */
typedef struct {
    const uint16_t *xb;
    const int8_t *xq;
    const float *xd, *xs;
    int ldb, ldq, ldd, lds;     /* per token: words, bytes, floats, floats */
} small_x;

static small_x small_x_at(const small_x *x, int t)
{
    small_x r = *x;
    r.xb = x->xb ? x->xb + (size_t)t * x->ldb : NULL;
    r.xq = x->xq ? x->xq + (size_t)t * x->ldq : NULL;
    r.xd = x->xd ? x->xd + (size_t)t * x->ldd : NULL;
    r.xs = x->xs ? x->xs + (size_t)t * x->lds : NULL;
    return r;
}

/* The rounding alone runs on any AVX-512 CPU (ds_q4_k_act_round_rows):
 * AVX-512F only. */
#define TF __attribute__((target("avx512f")))

/* The absolute maximum of 256 floats as bits (NaN above Inf above the
 * finite), the block in v. */
static inline __attribute__((always_inline)) TF uint32_t q4k_act_load(const float *x, __m512 v[16])
{
    __m512i mx = _mm512_setzero_si512();
    for (int k = 0; k < 16; k++) {
        v[k] = _mm512_loadu_ps(x + 16 * k);
        mx = _mm512_max_epu32(mx, _mm512_and_si512(_mm512_castps_si512(v[k]), _mm512_set1_epi32(0x7fffffff)));
    }
    return (uint32_t)_mm512_reduce_max_epu32(mx);
}

static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

TF void ds_q4_k_act_round_avx512(const float *x, int cols, float *out)
{
    for (int c0 = 0; c0 < cols; c0 += DS_Q4_K_BLOCK) {
        __m512 v[16];
        const uint32_t amax = q4k_act_load(x + c0, v);
        if (amax >= 0x7f800000u) {   /* Inf or NaN: as it is */
            for (int k = 0; k < 16; k++)
                _mm512_storeu_ps(out + c0 + 16 * k, v[k]);
            continue;
        }
        const int e = ds_q4_k_act_exp(bits_f32(amax));
        const __m512 inv = _mm512_set1_ps(ds_pow2f(-e)), sc = _mm512_set1_ps(ds_pow2f(e));
        for (int k = 0; k < 16; k++)
            _mm512_storeu_ps(out + c0 + 16 * k,
                             _mm512_mul_ps(_mm512_roundscale_ps(_mm512_mul_ps(v[k], inv),
                                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                                           sc));
    }
}

/* One token's Q4_K activations into xq, xd, xs (small_x); 0 if a block
 * holds Inf or NaN (the caller takes the rounded copy, which keeps them). */
SNOINL int pack_x_q4k(const float *x, int cols, int8_t *xq, float *xd, float *xs)
{
    /* 16-column pieces in the order of the nibble vectors */
    static const int piece[16] = {0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15};
    for (int b = 0; b < cols / DS_Q4_K_BLOCK; b++) {
        __m512 v[16];
        const uint32_t amax = q4k_act_load(x + (size_t)b * DS_Q4_K_BLOCK, v);
        if (amax >= 0x7f800000u)
            return 0;
        const int e = ds_q4_k_act_exp(bits_f32(amax));
        const __m512 inv = _mm512_set1_ps(ds_pow2f(-e));
        const float s = ds_pow2f(e);
        __m512i q[16];
        for (int k = 0; k < 16; k++)
            q[k] = _mm512_cvtps_epi32(_mm512_mul_ps(v[k], inv));   /* nearest even, as rintf */
        for (int p = 0; p < 16; p++)
            _mm_store_si128((__m128i *)(void *)(xq + (size_t)b * DS_Q4_K_BLOCK + 16 * p),
                            _mm512_cvtepi32_epi8(q[piece[p]]));
        xd[b] = s;
        for (int j = 0; j < 8; j++) {
            xs[16 * b + 2 * j] = 0.0f;
            xs[16 * b + 2 * j + 1] = (float)_mm512_reduce_add_epi32(_mm512_add_epi32(q[2 * j], q[2 * j + 1])) * s;
        }
    }
    return 1;
}

/* The 6-bit scales and mins of block bo of rows w[0 .. RB), one row a
 * 128-bit lane: bytes sc0 mn0 sc1 mn1 .. sc7 mn7 (quant.h's packing taken
 * apart for four rows at once; row by row in scalar code it cost single-
 * stream decode as much as the quants). */
SINL __m512i q4k_fields4(const uint8_t *const w[4], size_t bo, int RB)
{
    /* per lane the dwords d|dmin, u0, u1, u2 of quant.h's 12 scale bytes */
    __m512i z = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(const void *)(w[0] + bo)));
    if (RB > 1)
        z = _mm512_inserti32x4(z, _mm_loadu_si128((const __m128i *)(const void *)(w[1] + bo)), 1);
    if (RB > 2)
        z = _mm512_inserti32x4(z, _mm_loadu_si128((const __m128i *)(const void *)(w[2] + bo)), 2);
    if (RB > 3)
        z = _mm512_inserti32x4(z, _mm_loadu_si128((const __m128i *)(const void *)(w[3] + bo)), 3);
    /* sc 0-3 = u0 & 63, mn 0-3 = u1 & 63, sc 4-7 = (u2 & 15) | (u0 >> 6) << 4,
     * mn 4-7 = (u2 >> 4 & 15) | (u1 >> 6) << 4 */
    const __m512i a = _mm512_shuffle_epi32(z, _MM_SHUFFLE(2, 1, 2, 1));   /* u0 u1 u0 u1 */
    const __m512i b = _mm512_srlv_epi32(_mm512_shuffle_epi32(z, _MM_SHUFFLE(3, 3, 3, 3)),
                                        _mm512_set4_epi32(4, 0, 4, 0));     /* u2, u2 >> 4 */
    /* (b & 0x0f) | (a >> 2 & ~0x0f) in the high dwords, a in the low ones */
    const __m512i hi = _mm512_ternarylogic_epi32(b, _mm512_srli_epi32(a, 2), _mm512_set1_epi32(0x0f0f0f0f), 0xe4);
    const __m512i sm = _mm512_and_si512(_mm512_mask_blend_epi32(0xcccc, a, hi), _mm512_set1_epi32(0x3f3f3f3f));
    /* sc0-3 mn0-3 sc4-7 mn4-7 -> sc0 mn0 sc1 mn1 ... */
    return _mm512_shuffle_epi8(sm, _mm512_broadcast_i32x4(_mm_setr_epi8(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15)));
}

/* Row i's min multipliers: lane 2j + 1 dmin m_j (lane 2j d sc_j, met by
 * a zero in xs). */
SINL __m512 q4k_mins(__m512i f, const uint8_t *w, int i)
{
    uint32_t dd;
    memcpy(&dd, w, 4);
    const __m512 d = _mm512_cvtph_ps(_mm256_set1_epi32((int)dd));      /* d, dmin, d, dmin, ... */
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(f, i & 3))), d);
}

/* Dwords lo in lanes 0-7 and hi in lanes 8-15. */
SINL __m512i halves_epi32(int lo, int hi)
{
    return _mm512_mask_blend_epi32(0xff00, _mm512_set1_epi32(lo), _mm512_set1_epi32(hi));
}

SINL void small_q4k(const small_mat *sm, int r0, int nr, int RB, int NT, const small_x *sx, float *out)
{
    const int nblk = sm->cols / DS_Q4_K_BLOCK;
    const __m512i low4 = _mm512_set1_epi8(15);
    /* words of q4k_fields4's row (sc_j at word 2j) giving each nibble
     * vector's scales: per half h, its words 0-15 (quant bytes 0-31) and
     * 16-31 (bytes 32-63) are sub-blocks 4h | 4h+2 (low nibbles) and
     * 4h+1 | 4h+3 (high) */
    const __m512i pick[2][2] = {{halves_epi32(0, 4 * 0x10001), halves_epi32(2 * 0x10001, 6 * 0x10001)},
                                {halves_epi32(8 * 0x10001, 12 * 0x10001), halves_epi32(10 * 0x10001, 14 * 0x10001)}};
    const uint8_t *w[4], *p[4];
    __m512 tot[4][SMALL_NT];
    tile_begin(sm, r0, nr, RB, NT, w, p, tot);
    for (int bi = 0; bi < nblk; bi++) {
        const size_t bo = (size_t)bi * DS_Q4_K_BYTES;
        const __m512i f = q4k_fields4(w, bo, RB);
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            __builtin_prefetch(p[i] + bo, 0, 3);
            __builtin_prefetch(p[i] + bo + 64, 0, 3);
            __builtin_prefetch(p[i] + bo + 128, 0, 3);
            const __m512i scw = _mm512_zextsi256_si512(_mm256_cvtepu8_epi16(_mm512_extracti32x4_epi32(f, i & 3)));
            __m512i acc[SMALL_NT];
#pragma GCC unroll 8
            for (int t = 0; t < NT; t++)
                acc[t] = _mm512_setzero_si512();
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                const __m512i q = _mm512_loadu_si512((const void *)(w[i] + bo + DS_Q4_K_OFF_QS + 64 * h));
                const __m512i lo = _mm512_and_si512(q, low4), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), low4);
                const __m512i sl = _mm512_permutexvar_epi16(pick[h][0], scw);
                const __m512i sh = _mm512_permutexvar_epi16(pick[h][1], scw);
#pragma GCC unroll 8
                for (int t = 0; t < NT; t++) {
                    const int8_t *x = sx->xq + (size_t)t * sx->ldq + (size_t)bi * DS_Q4_K_BLOCK + 128 * h;
                    acc[t] = _mm512_dpwssd_epi32(acc[t], _mm512_maddubs_epi16(lo, _mm512_load_si512((const void *)x)), sl);
                    acc[t] = _mm512_dpwssd_epi32(acc[t], _mm512_maddubs_epi16(hi, _mm512_load_si512((const void *)(x + 64))),
                                                 sh);
                }
            }
            uint16_t dh;
            memcpy(&dh, w[i] + bo, 2);
            const float d = _cvtsh_ss(dh);
            const __m512 mn = q4k_mins(f, w[i] + bo, i);
#pragma GCC unroll 8
            for (int t = 0; t < NT; t++) {
                const __m512 dx = _mm512_set1_ps(d * sx->xd[(size_t)t * sx->ldd + bi]);
                tot[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[t]), dx, tot[i][t]);
                tot[i][t] = _mm512_fnmadd_ps(mn, _mm512_loadu_ps(sx->xs + (size_t)t * sx->lds + 16 * bi), tot[i][t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++)
            out[i * NT + t] = _mm512_reduce_add_ps(tot[i][t]);
}

/* Bytes the tiles prefetch ahead of the rows they read: at a core's share
 * of the bandwidth, about a DRAM latency and a half.  Short rows (a 512-
 * column expert's down projection) would otherwise be fetched only a few
 * KiB ahead. */
enum { SMALL_PF_BYTES = 16384 };

/* Rows [r, r + nr) against NT tokens, RB rows a tile. */
SINL void small_rows(const small_mat *sm, ds_dtype dt, int r, int nr, int RB, int NT, const small_x *sx, float *Y,
                     int ldy, int add)
{
    for (int i = 0; i < nr; i += RB) {
        float out[4 * SMALL_NT];
        const int k = nr - i < RB ? nr - i : RB;
        switch (dt) {
        case DS_DT_F8_E4M3: small_fp8(sm, r + i, k, RB, NT, sx->xb, sx->ldb, out); break;
        case DS_DT_BF16: small_bf16w(sm, r + i, k, RB, NT, sx->xb, sx->ldb, out); break;
        case DS_DT_Q8_0: small_q8(sm, r + i, k, RB, NT, sx->xb, sx->ldb, out); break;
        default: small_q4k(sm, r + i, k, RB, NT, sx, out); break;
        }
        for (int t = 0; t < NT; t++)
            for (int j = 0; j < k; j++)
                Y[(size_t)t * ldy + i + j] = add ? Y[(size_t)t * ldy + i + j] + out[j * NT + t] : out[j * NT + t];
    }
}

/* Rows per tile for nt tokens: the accumulators (and FP8's block sums)
 * stay in registers.  One token: BF16 and FP8 rows go one at a time, a
 * sequential stream that one core reads fastest; Q4_K's four rows share
 * each activation load and the unpacking of their scales. */
#define SMALL_RB(dt, nt) ((nt) == 1 ? ((dt) == DS_DT_Q4_K ? 4 : 1) : (nt) <= 2 ? 4 : (nt) <= 4 ? 2 : 1)

#define SMALL_DT(DT, N) \
    case DT: small_rows(sm, DT, r, nr, SMALL_RB(DT, N), N, sx, Y, ldy, add); break;
#define SMALL_CASE(N) \
    case N: \
        switch (dt) { \
            SMALL_DT(DS_DT_F8_E4M3, N) SMALL_DT(DS_DT_BF16, N) SMALL_DT(DS_DT_Q8_0, N) \
            default: SMALL_DT(DS_DT_Q4_K, N) \
        } \
        break;

SNOINL void small_block(const small_mat *sm, ds_dtype dt, int r, int nr, int nt, const small_x *sx, float *Y, int ldy,
                        int add)
{
    switch (nt) {
        SMALL_CASE(1) SMALL_CASE(2) SMALL_CASE(3) SMALL_CASE(4)
        SMALL_CASE(5) SMALL_CASE(6) SMALL_CASE(7)
    default: SMALL_CASE(SMALL_NT)
    }
}

/* Packed activations a pass may hold: with the weights streaming by, a
 * pass of 8 tokens over 5632 columns (88 KiB of bf16) left L1 and ran at
 * 0.58 times the speed per weight of one over 2048 (one thread in L2). */
enum { SMALL_X_BYTES = 16384 };

/* Columns per pass for nt tokens: all of them, or chunks of whole 256-
 * column blocks whose activations fit SMALL_X_BYTES. */
static int small_chunk_cols(ds_dtype dt, int cols, int nt)
{
    const int per_col = (dt == DS_DT_Q4_K ? 1 : 2) * nt;
    if (cols * per_col <= 2 * SMALL_X_BYTES)
        return cols;
    const int blk = SMALL_X_BYTES / per_col / DS_Q4_K_BLOCK * DS_Q4_K_BLOCK;
    return blk > DS_Q4_K_BLOCK ? blk : DS_Q4_K_BLOCK;
}

/* The matrix and activations restricted to columns [c0, c0 + len), c0 a
 * multiple of 256 (whole blocks of every type, whole FP8 scale blocks,
 * whole XSTEP steps of the packed activations). */
static small_mat small_mat_cols(const small_mat *sm, ds_dtype dt, int c0, int len)
{
    small_mat r = *sm;
    const size_t off = ds_dtype_row_bytes(dt, c0);
    r.data += off;
    r.last += off;
    r.scale = sm->scale ? sm->scale + c0 / DS_QBLOCK : NULL;
    r.cols = len;
    return r;
}

static small_x small_x_cols(const small_x *x, int c0)
{
    small_x r = *x;
    r.xb = x->xb ? x->xb + c0 : NULL;
    r.xq = x->xq ? x->xq + c0 : NULL;
    r.xd = x->xd ? x->xd + c0 / DS_Q4_K_BLOCK : NULL;
    r.xs = x->xs ? x->xs + 16 * (c0 / DS_Q4_K_BLOCK) : NULL;
    return r;
}

/* Tiles [t0, t0 + k) of a call (rbk rows each, the last one cut at
 * nrows) against the n packed tokens; cont: the range goes on from the
 * tiles this thread did last. */
static void small_tiles(const small_mat *sm, ds_dtype dt, int r0, int nrows, int rbk, int n, const small_x *sx,
                        float *Y, int ldy, int t0, int k, int cont)
{
    const int a = t0 * rbk, end = (t0 + k) * rbk < nrows ? (t0 + k) * rbk : nrows;
    /* the tiles prefetch sm->pfo bytes ahead of the row they read: fetch
     * the start of a range now (unless it goes on from the last), or each
     * short matrix (an expert's) would begin with that much read on demand
     * (single-stream FP8 decode on mid +3 %, seven pairs) */
    if (!cont) {
        const uint8_t *first = sm->data + (size_t)(r0 + a) * sm->rb;
        const size_t span = (size_t)(end - a) * sm->rb, pre = sm->pfo < span ? sm->pfo : span;
        for (size_t b = 0; b < pre; b += 64)
            __builtin_prefetch(first + b, 0, 3);
    }
    for (int u = 0; u < n; u += SMALL_NT) {   /* a claim's rows stay in cache across the passes */
        const int nt = n - u < SMALL_NT ? n - u : SMALL_NT, cc = small_chunk_cols(dt, sm->cols, nt);
        const small_x xu = small_x_at(sx, u);
        if (cc == sm->cols) {
            small_block(sm, dt, r0 + a, end - a, nt, &xu, Y + (size_t)u * ldy + a, ldy, 0);
            continue;
        }
        for (int c0 = 0; c0 < sm->cols; c0 += cc) {   /* partial sums over the chunks, in column order */
            const small_mat mc = small_mat_cols(sm, dt, c0, sm->cols - c0 < cc ? sm->cols - c0 : cc);
            const small_x xc = small_x_cols(&xu, c0);
            small_block(&mc, dt, r0 + a, end - a, nt, &xc, Y + (size_t)u * ldy + a, ldy, c0 > 0);
        }
    }
}

/* Whether the streaming kernel takes m. */
static int small_takes(const ds_mat *m)
{
    const ds_dtype dt = m->dtype;
    if (dt != DS_DT_BF16 && dt != DS_DT_F8_E4M3 && dt != DS_DT_Q8_0 && dt != DS_DT_Q4_K)
        return 0;
    /* every CPU with AVX512_BF16 has VNNI too; VBMI is not in all */
    const ds_cpu_features *cf = ds_cpu_get_features();
    return cf->avx512_vbmi && cf->avx512_vnni && !(dt == DS_DT_Q4_K && m->cols % DS_Q4_K_BLOCK) &&
           !(dt == DS_DT_Q8_0 && m->cols % DS_Q8_0_BLOCK);
}

/* How a part's activations are packed: Q4_K's int8 levels, or bf16 in
 * the order its weights' conversion leaves them. */
enum xkind { XK_Q4K, XK_NATURAL, XK_PAIRS64 };

static enum xkind small_xkind(ds_dtype dt)
{
    return dt == DS_DT_Q4_K ? XK_Q4K : dt == DS_DT_BF16 ? XK_NATURAL : XK_PAIRS64;
}

static size_t small_x_bytes(enum xkind xk, int cols, int n)
{
    if (xk != XK_Q4K)
        return up64(sizeof(uint16_t) * (size_t)n * ((cols + XSTEP - 1) / XSTEP * XSTEP));
    const int nblk = cols / DS_Q4_K_BLOCK;
    return up64((size_t)n * cols) + up64(sizeof(float) * (size_t)n * nblk) +
           up64(sizeof(float) * (size_t)n * 16 * nblk);
}

/* n rows of X packed at buf (small_x_bytes of it) into *sx; 0 when a
 * Q4_K activation block holds Inf or NaN. */
static int small_x_pack(enum xkind xk, const float *X, int ldx, int n, int cols, uint8_t *buf, small_x *sx)
{
    if (xk != XK_Q4K) {
        const int ldb = (cols + XSTEP - 1) / XSTEP * XSTEP;
        uint16_t *xb = (uint16_t *)(void *)buf;
        *sx = (small_x){xb, NULL, NULL, NULL, ldb, 0, 0, 0};
        for (int t = 0; t < n; t++)
            pack_x_small(X + (size_t)t * ldx, cols, xk == XK_NATURAL ? X_NATURAL : X_PAIRS64, ldb,
                         xb + (size_t)t * ldb);
        return 1;
    }
    const int nblk = cols / DS_Q4_K_BLOCK;
    const size_t xq_b = up64((size_t)n * cols), xd_b = up64(sizeof(float) * (size_t)n * nblk);
    int8_t *xq = (int8_t *)buf;
    float *xd = (float *)(void *)(buf + xq_b), *xs = (float *)(void *)(buf + xq_b + xd_b);
    *sx = (small_x){NULL, xq, xd, xs, 0, cols, nblk, 16 * nblk};
    for (int t = 0; t < n; t++)
        if (!pack_x_q4k(X + (size_t)t * ldx, cols, xq + (size_t)t * cols, xd + (size_t)t * nblk,
                        xs + (size_t)t * 16 * nblk))
            return 0;
    return 1;
}

/* A part ready for the tiles: its matrix, packed activations and tiles. */
typedef struct {
    small_mat sm;
    small_x sx;
    ds_dtype dt;
    int r0, nrows, rbk, ntile, ldy;
    float *Y;
} small_part;

static small_mat small_mat_of(const ds_mat *m, int rbk)
{
    const size_t rb = ds_dtype_row_bytes(m->dtype, m->cols), ahead = (SMALL_PF_BYTES + rb - 1) / rb;
    return (small_mat){
        .data = (const uint8_t *)m->data,
        .last = (const uint8_t *)m->data + (size_t)(m->rows - 1) * rb,
        .rb = rb,
        .pfo = (ahead + rbk - 1) / rbk * rbk * rb,
        .scale = m->scale,
        .cols = m->cols,
        .nsb = (m->cols + DS_QBLOCK - 1) / DS_QBLOCK,
    };
}

/* Each thread takes a contiguous range of whole tiles
 * (worksplit.h: one that finishes early takes tiles from the back of
 * another's), CTILE tiles a claim. */
enum { CTILE = 32 };

/* Tiles [g, g + k) of the parts' tiles in sequence; *next: where this
 * thread's previous range ended (a range going on from it needs no fetch
 * of its start). */
static void small_parts_range(const small_part *pp, int np, int n, int g, int k, int *next)
{
    for (int i = 0, base = 0; i < np && k > 0; base += pp[i++].ntile) {
        const int lo = g > base ? g : base, hi = g + k < base + pp[i].ntile ? g + k : base + pp[i].ntile;
        if (hi <= lo)
            continue;
        small_tiles(&pp[i].sm, pp[i].dt, pp[i].r0, pp[i].nrows, pp[i].rbk, n, &pp[i].sx, pp[i].Y, pp[i].ldy, lo - base,
                    hi - lo, lo == *next && lo > base);
        *next = hi;
    }
}

int ds_gemm_bf16_small_parts_avx512(const ds_gemm_part *p, int np, int n)
{
    if (np <= 0)
        return 1;
    for (int i = 0; i < np; i++)
        if (!small_takes(p[i].m))
            return 0;
    pthread_once(&lut_once, lut_make);
    /* activations packed once per distinct (X, ldx, cols, packing) */
    int *src = malloc(sizeof(int) * (size_t)np);
    size_t *off = malloc(sizeof(size_t) * (size_t)np);
    small_part *pp = malloc(sizeof(small_part) * (size_t)np);
    if (!src || !off || !pp) {
        free(src), free(off), free(pp);
        return 0;
    }
    size_t bytes = 0;
    long work = 0;
    int total = 0;
    for (int i = 0; i < np; i++) {
        const enum xkind xk = small_xkind(p[i].m->dtype);
        src[i] = i;
        for (int j = 0; j < i; j++)
            if (src[j] == j && p[j].X == p[i].X && p[j].ldx == p[i].ldx && p[j].m->cols == p[i].m->cols &&
                small_xkind(p[j].m->dtype) == xk) {
                src[i] = j;
                break;
            }
        if (src[i] == i) {
            off[i] = bytes;
            bytes += small_x_bytes(xk, p[i].m->cols, n);
        }
        const ds_dtype dt = p[i].m->dtype;
        const int rbk = SMALL_RB(dt, n < SMALL_NT ? n : SMALL_NT);
        pp[i] = (small_part){small_mat_of(p[i].m, rbk), {0}, dt, p[i].r0, p[i].nrows, rbk,
                             (p[i].nrows + rbk - 1) / rbk, p[i].ldy, p[i].Y};
        total += pp[i].ntile;
        work += (long)p[i].nrows * p[i].m->cols;
    }
    uint8_t *buf = scratch_get(bytes);
    int ok = buf != NULL;
    for (int i = 0; i < np && ok; i++)
        if (src[i] == i)
            ok = small_x_pack(small_xkind(pp[i].dt), p[i].X, p[i].ldx, n, p[i].m->cols, buf + off[i], &pp[i].sx);
        else
            pp[i].sx = pp[src[i]].sx;
    const int nth = ds_worth_threads(work) && !omp_in_parallel() ? omp_get_max_threads() : 1;
    ds_split *split = ok && nth > 1 ? ds_split_begin(nth, total) : NULL;
    if (ok && !split) {
        /* no region at all: entering one costs 1.5 us even under if (0),
         * 3 us inside the experts' region (measured here), where every
         * expert's three products come through this path */
        int next = -1;
        for (int g = 0; g < total; g += CTILE)
            small_parts_range(pp, np, n, g, total - g < CTILE ? total - g : CTILE, &next);
    } else if (ok) {
#pragma omp parallel num_threads(nth)
        {
            const int id = omp_get_thread_num();
            int next = -1;
            for (int g, k; (k = ds_split_next(split, id, CTILE, &g)) > 0;)
                small_parts_range(pp, np, n, g, k, &next);
        }
    }
    free(src), free(off), free(pp);
    return ok;
}

int ds_gemm_bf16_small_avx512(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy)
{
    const ds_gemm_part part = {m, r0, nrows, X, ldx, Y, ldy};
    return ds_gemm_bf16_small_parts_avx512(&part, 1, n);
}

/* ---- the indexer's approximate scores ------------------------------------
 * ds_index_scores_fp8_approx's contract on vdpbf16ps: queries and keys are
 * FP8 values, exact in bf16, so each head's dot is the exact products
 * summed in f32 (at most two roundings per instruction, within the bound's
 * (dim + 2) u sum |q k|; no operand or partial sum is subnormal, as every
 * product is a multiple of 2^-18).  The keys come in tiles of sixteen
 * (index_tiles.h): one 64-byte load holds four dimensions of all sixteen,
 * looked up as in the decode kernel (NaN codes read as 0, as the exact
 * scorer reads them) and permuted into two vectors of bf16 pairs, one key
 * per lane; each is multiplied against every head's query pair broadcast:
 * sixteen dependency chains (one per head), the head sums, ReLU and
 * weights taken lane-wise, no transposes.  More than 16 heads: the tile's converted
 * pairs are kept in L1 for the other head blocks. */
enum { IDX_MAXHB = 4, IDX_PF_TILES = 2 };

/* Bytes of the looked-up low (0-63) and high (64-127) halves that make the
 * bf16 pairs of dimensions 0-1 (A) and 2-3 (B) of each key's four. */
static uint8_t idx_perm[2][64] __attribute__((aligned(64)));
static pthread_once_t idx_perm_once = PTHREAD_ONCE_INIT;

static void idx_perm_make(void)
{
    for (int i = 0; i < 16; i++)
        for (int p = 0; p < 2; p++) {
            idx_perm[p][4 * i] = (uint8_t)(4 * i + 2 * p);
            idx_perm[p][4 * i + 1] = (uint8_t)(64 + 4 * i + 2 * p);
            idx_perm[p][4 * i + 2] = (uint8_t)(4 * i + 2 * p + 1);
            idx_perm[p][4 * i + 3] = (uint8_t)(64 + 4 * i + 2 * p + 1);
        }
}

/* The query pairs, [head block][pair][16 heads]: pair P is dimensions 2P
 * and 2P + 1, as the tiles give them. */
static __thread uint32_t idx_qp[IDX_MAXHB][DS_INDEX_MAXDIM / 2][16] __attribute__((aligned(64)));

/* 16 head sums (acc) into the weighted ReLU sum *s and the sum of |w d|
 * *sabs, one key per lane. */
SINL void idx_weigh(const __m512 *acc, const float *w16, __m512 *s, __m512 *sabs)
{
#pragma GCC unroll 16
    for (int h = 0; h < 16; h++) {
        const __m512 p = _mm512_mul_ps(acc[h], _mm512_set1_ps(w16[h]));
        *s = _mm512_add_ps(*s, _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(acc[h], _mm512_setzero_ps(), _CMP_GT_OQ), p));
        *sabs = _mm512_add_ps(*sabs, _mm512_abs_ps(p));
    }
}

SINL void idx_dp2(__m512 *acc, __m512i a, __m512i b, const uint32_t (*qp)[16], int P)
{
#pragma GCC unroll 16
    for (int h = 0; h < 16; h++) {
        acc[h] = _mm512_dpbf16_ps(acc[h], (__m512bh)a, (__m512bh)_mm512_set1_epi32((int)qp[P][h]));
        acc[h] = _mm512_dpbf16_ps(acc[h], (__m512bh)b, (__m512bh)_mm512_set1_epi32((int)qp[P + 1][h]));
    }
}

SNOINL void idx_scores(float c, int nh, int dim, const float *wpad, const uint8_t *tiles, int j0, const float *ks,
                       int n, float *score, float *bound)
{
    const int nhb = DS_INDEX_HSTRIDE(nh) / 16, ngrp = (dim + 3) / 4;
    const size_t tb = ds_index_tile_bytes(dim);
    const __m512i tl[2] = {_mm512_load_si512((const __m512i *)e4m3_lut_idx[0]),
                           _mm512_load_si512((const __m512i *)(e4m3_lut_idx[0] + 64))};
    const __m512i th[2] = {_mm512_load_si512((const __m512i *)e4m3_lut_idx[1]),
                           _mm512_load_si512((const __m512i *)(e4m3_lut_idx[1] + 64))};
    const __m512i pa = _mm512_load_si512((const __m512i *)idx_perm[0]),
                  pb = _mm512_load_si512((const __m512i *)idx_perm[1]);
    const __m512i mag = _mm512_set1_epi32(0x7fff7fff);
    const __m512bh ones = (__m512bh)_mm512_set1_epi32(0x3f803f80);
    const float u = 0x1p-24f;
    const __m512 bl = _mm512_set1_ps(2.0f * (float)(dim + 2) * u * 1.0001f * c),
                 bs = _mm512_set1_ps((float)(2 * nh + 8) * u);
    __m512i kp[DS_INDEX_MAXDIM / 2];   /* a tile's pairs for the other head blocks: 8 KiB at most */
    const uint8_t *end = tiles + (size_t)((j0 + n - 1) / DS_INDEX_TILE) * tb;
    for (int i0 = 0; i0 < n; i0 += DS_INDEX_TILE) {
        const uint8_t *tile = tiles + (size_t)((j0 + i0) / DS_INDEX_TILE) * tb;
        const uint8_t *pf = tile + IDX_PF_TILES * tb <= end ? tile + IDX_PF_TILES * tb : NULL;
        __m512 l1a = _mm512_setzero_ps(), l1b = _mm512_setzero_ps(), acc[16];
#pragma GCC unroll 16
        for (int h = 0; h < 16; h++)
            acc[h] = _mm512_setzero_ps();
        /* the first head block as the pairs are converted */
        for (int g = 0; g < ngrp; g++) {
            if (pf)   /* a tile a couple of tiles on, from memory meanwhile */
                __builtin_prefetch(pf + 64 * (size_t)g, 0, 3);
            const __m512i codes = _mm512_loadu_si512((const void *)(tile + 64 * (size_t)g));
            const __m512i lo = _mm512_permutex2var_epi8(tl[0], codes, tl[1]);
            __m512i hi = _mm512_permutex2var_epi8(th[0], codes, th[1]);
            hi = _mm512_ternarylogic_epi32(hi, codes, _mm512_set1_epi8((char)0x80), 0xf8);   /* hi | (codes & 0x80) */
            const __m512i a = _mm512_permutex2var_epi8(lo, pa, hi), b = _mm512_permutex2var_epi8(lo, pb, hi);
            if (nhb > 1) {
                _mm512_store_si512(kp + 2 * g, a);
                _mm512_store_si512(kp + 2 * g + 1, b);
            }
            idx_dp2(acc, a, b, (const uint32_t(*)[16])idx_qp[0], 2 * g);
            l1a = _mm512_dpbf16_ps(l1a, (__m512bh)_mm512_and_si512(a, mag), ones);
            l1b = _mm512_dpbf16_ps(l1b, (__m512bh)_mm512_and_si512(b, mag), ones);
        }
        __m512 s = _mm512_setzero_ps(), sabs = _mm512_setzero_ps();
        idx_weigh(acc, wpad, &s, &sabs);
        for (int hb = 1; hb < nhb; hb++) {
#pragma GCC unroll 16
            for (int h = 0; h < 16; h++)
                acc[h] = _mm512_setzero_ps();
            for (int g = 0; g < ngrp; g++)
                idx_dp2(acc, _mm512_load_si512(kp + 2 * g), _mm512_load_si512(kp + 2 * g + 1),
                        (const uint32_t(*)[16])idx_qp[hb], 2 * g);
            idx_weigh(acc, wpad + 16 * hb, &s, &sabs);
        }
        /* score and ds_index_bound, lane-wise */
        const int kn = n - i0 < DS_INDEX_TILE ? n - i0 : DS_INDEX_TILE;
        const __mmask16 km = kn == DS_INDEX_TILE ? (__mmask16)0xffff : (__mmask16)((1u << kn) - 1);
        const __m512 kv = _mm512_maskz_loadu_ps(km, ks + i0), sc = _mm512_mul_ps(s, kv);
        const __m512 t = _mm512_add_ps(_mm512_mul_ps(bl, _mm512_add_ps(l1a, l1b)), _mm512_mul_ps(bs, sabs));
        const __m512 bd = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(t, _mm512_set1_ps(1.01f)), kv),
                                                      _mm512_mul_ps(_mm512_set1_ps(2.0f * u), _mm512_abs_ps(sc))),
                                        _mm512_set1_ps(1e-37f));
        _mm512_mask_storeu_ps(score + i0, km, sc);
        _mm512_mask_storeu_ps(bound + i0, km, bd);
    }
}

/* The query of the last call, its packed pairs (idx_qp), its weights
 * padded with zeros to whole head blocks and its bound constant: a decode
 * step scores its keys in several calls (claims of a work split) with the
 * same query, and packing it costs as much as scoring a few hundred keys. */
static __thread struct {
    int nh, dim, ok;
    float c;
    float q[IDX_MAXHB * 16 * DS_INDEX_MAXDIM], w[IDX_MAXHB * 16], wpad[IDX_MAXHB * 16];
} idx_last;

static int idx_pack_query(const float *qt, int nh, int dim, const float *w)
{
    const int hs = DS_INDEX_HSTRIDE(nh), npair = (dim + 63) / 64 * 32;
    const size_t qb = sizeof(float) * (size_t)hs * dim, wb = sizeof(float) * (size_t)nh;
    if (idx_last.nh == nh && idx_last.dim == dim && !memcmp(idx_last.q, qt, qb) && !memcmp(idx_last.w, w, wb))
        return idx_last.ok;
    idx_last.nh = 0;   /* unless completed below */
    int ok = 1;
    for (int P = 0; P < npair && ok; P++) {
        const int d = 2 * P;
        for (int h = 0; h < hs; h++) {
            uint32_t lo = 0, hi = 0;
            if (d < dim)
                memcpy(&lo, qt + (size_t)d * hs + h, 4);
            if (d + 1 < dim)
                memcpy(&hi, qt + (size_t)(d + 1) * hs + h, 4);
            if ((lo | hi) & 0xffffu) {   /* not exact in bf16 (not FP8): the f32 kernel's job */
                ok = 0;
                break;
            }
            idx_qp[h / 16][P][h % 16] = (lo >> 16) | (hi & 0xffff0000u);
        }
    }
    idx_last.c = ok ? ds_index_bound_c(qt, nh, dim, w) : 0.0f;
    idx_last.ok = ok;
    memcpy(idx_last.q, qt, qb);
    memcpy(idx_last.w, w, wb);
    for (int h = 0; h < hs; h++)
        idx_last.wpad[h] = h < nh ? w[h] : 0.0f;
    idx_last.dim = dim;
    idx_last.nh = nh;
    return ok;
}

int ds_index_scores_approx_bf16(const float *qt, int nh, int dim, const float *w, const uint8_t *tiles, int j0,
                                const float *ks, int n, float *score, float *bound)
{
    const int hs = DS_INDEX_HSTRIDE(nh);
    if (!ds_cpu_get_features()->avx512_vbmi || !ds_gemm_bf16_native() || hs / 16 > IDX_MAXHB || dim < 1 ||
        dim > DS_INDEX_MAXDIM || j0 % DS_INDEX_TILE)
        return 0;
    pthread_once(&lut_once, lut_make);
    pthread_once(&idx_perm_once, idx_perm_make);
    if (!idx_pack_query(qt, nh, dim, w))
        return 0;
    if (n > 0)
        idx_scores(idx_last.c, nh, dim, idx_last.wpad, tiles, j0, ks, n, score, bound);
    return 1;
}
#endif /* x86 */
